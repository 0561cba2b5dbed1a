"""Server settings: one frozen object built from flags and `FANOUT_*` variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

ENV_PREFIX = "FANOUT_"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything `fanout serve` can be told; passed explicitly, never global."""

    listen: str = "127.0.0.1:50051"
    database_url: str | None = None  # None: the SQLite file in the user's data folder
    metrics_port: int | None = None
    log_format: str = "text"
    log_level: str = "INFO"
    max_workers: int = 16
    max_concurrent_rpcs: int = 256
    max_message_bytes: int = 4 * 1024 * 1024
    max_predict_rows: int = 100_000
    refit_processes: int = 1  # 0: refit GPs in a thread of the server's process
    lease_retention_hours: float = 168.0  # 0: keep finished leases forever
    grace_seconds: float = 10.0
    auto_migrate: bool | None = None  # None: yes on SQLite, no on PostgreSQL
    insecure: bool = False
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    token_file: Path | None = None
    server_id: str | None = None

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port out of range: {self.metrics_port}")
        if self.max_workers < 1 or self.max_concurrent_rpcs < 1:
            raise ValueError("max_workers and max_concurrent_rpcs must be >= 1")
        if self.refit_processes < 0:
            raise ValueError(f"refit_processes must be >= 0, got {self.refit_processes}")
        if not 0 <= self.lease_retention_hours < float("inf"):
            raise ValueError(
                f"lease_retention_hours must be >= 0 and finite, got {self.lease_retention_hours}"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None


def _convert(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    text = str(kind)
    if "bool" in text:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected a boolean, got {raw!r}")
    if "int" in text:
        return int(raw)
    if "float" in text:
        return float(raw)
    if "Path" in text:
        return Path(raw)
    return raw


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `fanout serve`; each defaults to its `FANOUT_*` variable."""
    parser.add_argument("--listen", help="HOST:PORT to serve gRPC on (default 127.0.0.1:50051)")
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL of the registry (default: a SQLite file in the user's data folder)",
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--log-format", choices=("text", "json"))
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument(
        "--max-workers",
        type=int,
        help="handler threads (default 16); the registry keeps as many connections, plus 3",
    )
    parser.add_argument("--max-concurrent-rpcs", type=int, help="RPCs in flight before refusing")
    parser.add_argument(
        "--refit-processes",
        type=int,
        help="worker processes refitting GPs off the request path (default 1; 0: a thread)",
    )
    parser.add_argument("--grace-seconds", type=float, help="drain time on SIGTERM (default 10)")
    parser.add_argument(
        "--lease-retention-hours",
        type=float,
        help="delete leases closed or expired this long ago (default 168; 0: never); "
        "a report naming a deleted lease gets NOT_FOUND",
    )
    parser.add_argument(
        "--auto-migrate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="upgrade the registry schema at start (default: on for SQLite only)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow plaintext gRPC on non-loopback addresses",
    )
    parser.add_argument("--tls-cert-file", type=Path)
    parser.add_argument("--tls-key-file", type=Path)
    parser.add_argument("--tls-client-ca-file", type=Path, help="require client certificates")
    parser.add_argument("--token-file", type=Path, help="bearer tokens (see docs/security.md)")
    parser.add_argument("--server-id", help="name of this server in logs and leases")


def settings_from(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags win over `FANOUT_*` variables, which win over defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw not in (None, ""):
            values[f.name] = _convert(f.name, raw)
        flag = getattr(args, f.name, None) if args is not None else None
        if flag is not None:
            values[f.name] = flag
    return Settings(**values)  # type: ignore[arg-type]


def parse_settings(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Convenience for tests: settings from a `fanout serve` argument list."""
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    return settings_from(parser.parse_args(list(argv)), environ)
