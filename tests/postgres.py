"""Throw-away PostgreSQL servers for the tests (a pytest plugin, see conftest.py).

One server per test session, started from the Debian binaries
(`/usr/lib/postgresql/<version>/bin`, or `$FANOUT_TEST_PG_BIN`) in a temporary folder,
listening on a free loopback port with its socket in that folder. As root, initdb
refuses to run, so the server runs as the `postgres` system user.

Fixtures:
- `postgres_server`: the session's server (host, port, user, `stop(mode)`/`start()`).
- `postgres_url`: a fresh, empty database on it for one test.
- `private_postgres_server`: a server of the test's own, for tests that stop it.
- `registry_url`: parametrized over a SQLite file and `postgres_url`.

Without PostgreSQL binaries the PostgreSQL tests are skipped, except under `CI=true`,
where they fail: CI must not pass by running nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psycopg2
import pytest

BIN_DIR_VARIABLE = "FANOUT_TEST_PG_BIN"
SYSTEM_USER = "postgres"
DATABASE_USER = "postgres"
HOST = "127.0.0.1"
START_ATTEMPTS = 4
POSTGRES_FIXTURES = frozenset({"postgres_server", "postgres_url", "private_postgres_server"})


def find_postgres_bin() -> Path | None:
    """The newest folder holding initdb, pg_ctl and postgres; None when there is none."""
    override = os.environ.get(BIN_DIR_VARIABLE)
    if override:
        candidates = [Path(override)]
    else:
        debian = Path("/usr/lib/postgresql").glob("*/bin")
        candidates = sorted(debian, key=_folder_version, reverse=True)
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _folder_version(bin_dir: Path) -> int:
    match = re.fullmatch(r"\d+", bin_dir.parent.name)
    return int(match.group()) if match else -1


def _scratch_root() -> str | None:
    """A memory-backed folder when there is one: CREATE DATABASE copies files, ten times
    faster there than on a shared disk. None: the usual temporary folder."""
    shared_memory = Path("/dev/shm")
    if shared_memory.is_dir() and os.access(shared_memory, os.W_OK | os.X_OK):
        return str(shared_memory)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class PostgresError(RuntimeError):
    """A PostgreSQL tool failed; the message carries its output and the server log."""


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; `destroy()` removes every trace."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.host = HOST
        self.user = DATABASE_USER
        self.port = 0
        self._run_as = SYSTEM_USER if os.geteuid() == 0 else None
        self.base_dir = Path(tempfile.mkdtemp(prefix="fanout-pg-", dir=_scratch_root()))
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "server.log"
        if self._run_as is not None:
            account = pwd.getpwnam(self._run_as)
            os.chown(self.base_dir, account.pw_uid, account.pw_gid)
        self.major_version = self._major_version()
        self._initdb()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def start(self) -> None:
        """Starts the server (again), on its earlier port when it had one."""
        for attempt in range(START_ATTEMPTS):
            if self.port == 0 or attempt > 0:
                self.port = _free_port()
            try:
                self._pg_ctl(
                    "start", "-w", "-t", "60", "-l", str(self.log_file), "-o", self._options()
                )
                return
            except PostgresError:
                # Another process may have taken the port between probe and bind.
                if attempt == START_ATTEMPTS - 1 or "already in use" not in self._log_tail():
                    raise

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m mode`: smart, fast (disconnects clients) or immediate (a crash)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode: expected smart, fast or immediate, got {mode!r}")
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def is_running(self) -> bool:
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def create_database(self) -> str:
        name = f"fanout_test_{uuid.uuid4().hex[:16]}"
        # FILE_COPY (PostgreSQL 15+) is several times faster than the default WAL_LOG
        # when fsync is off, and a fresh database per test makes that add up.
        strategy = " STRATEGY FILE_COPY" if self.major_version >= 15 else ""
        self._admin_sql(f'CREATE DATABASE "{name}"{strategy}')
        return name

    def drop_database(self, name: str) -> None:
        # FORCE: a test may leave pooled connections behind.
        self._admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        """Stops the server if it runs and deletes its folder; safe to call twice."""
        if self.data_dir.exists() and self.is_running():
            with contextlib.suppress(PostgresError):
                self.stop("immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def _options(self) -> str:
        # No fsync: only the operating system crashing could lose data, and that ends the
        # test run anyway. synchronous_commit stays on, so that `stop("immediate")`
        # loses no committed transaction, like a real server crash.
        return (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.base_dir} "
            "-c fsync=off -c full_page_writes=off "
            "-c shared_buffers=32MB -c max_connections=60"
        )

    def _major_version(self) -> int:
        # "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
        output = self._run("postgres", "--version").stdout
        match = re.search(r"\)\s*(\d+)", output)
        if match is None:
            raise PostgresError(f"cannot read the PostgreSQL version from {output!r}")
        return int(match.group(1))

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )

    def _pg_ctl(self, *arguments: str) -> None:
        self._run("pg_ctl", *arguments[:1], "-D", str(self.data_dir), *arguments[1:])

    def _run(
        self, tool: str, *arguments: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / tool), *arguments]
        if self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        completed = subprocess.run(
            command,
            cwd=self.base_dir,  # the postgres user may not enter the caller's folder
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and completed.returncode != 0:
            raise PostgresError(
                f"{tool} {' '.join(arguments)} exited with {completed.returncode}:\n"
                f"{completed.stdout}{completed.stderr}\n--- server log ---\n{self._log_tail()}"
            )
        return completed

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no log)"

    def _admin_sql(self, statement: str) -> None:
        connection = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", connect_timeout=10
        )
        try:
            connection.autocommit = True  # CREATE/DROP DATABASE refuse to run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()


def start_postgres_server() -> PostgresServer:
    """A new, running server; fails or skips the test when PostgreSQL is not installed."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        _unavailable(
            "PostgreSQL binaries not found (looked in /usr/lib/postgresql/*/bin, on PATH and "
            f"in ${BIN_DIR_VARIABLE}); install them with `make postgres`"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            _unavailable(f"running as root needs a {SYSTEM_USER!r} system user for initdb")
    server = PostgresServer(bin_dir)
    # Safety net for an interrupted session; destroy() is idempotent.
    atexit.register(server.destroy)
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Before `-m` filtering runs, so `-m "not postgres"` also drops tests that use
    # the fixtures directly without the marker.
    for item in items:
        if POSTGRES_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server; a test that stops it must start it again."""
    server = start_postgres_server()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def private_postgres_server() -> Iterator[PostgresServer]:
    """A server of this test's own, free to be stopped, restarted or crashed."""
    server = start_postgres_server()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database, dropped after the test."""
    if not postgres_server.is_running():
        postgres_server.start()  # a test stopped it and failed before restarting
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty registry database: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
