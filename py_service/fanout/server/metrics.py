"""Prometheus metrics of the server, on their own registry so tests can run many servers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

# Latency buckets from 100 us (a warm Recommend) to 10 s (a stalled database).
RPC_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0, 10.0)


class Metrics:
    """The server's instruments; names are part of the operator contract."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_duration = Histogram(
            "fanout_rpc_duration_seconds",
            "Time to answer an RPC, by method and status code.",
            ["method", "code"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "fanout_decisions_total",
            "Recommendations made, by model phase.",
            ["phase"],
            registry=self.registry,
        )
        self.fit_duration = Histogram(
            "fanout_gp_fit_seconds",
            "Time to re-optimise one task's GP hyper-parameters.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=self.registry,
        )
        self.registry_errors = Counter(
            "fanout_registry_errors_total",
            "Registry operations that failed, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.reports = Counter(
            "fanout_reports_total",
            "Execution reports, by result (applied, duplicate).",
            ["result"],
            registry=self.registry,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Expose /metrics over HTTP; returns the bound port."""
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)
