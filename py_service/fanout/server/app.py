"""Building, running and stopping the gRPC server."""

from __future__ import annotations

import faulthandler
import gc
import logging
import signal
import threading
import warnings
from concurrent import futures
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from fanout.server.advisor import Advisor
from fanout.server.auth import TokenStore, interceptors
from fanout.server.fitting import InlineFitter, ProcessFitter
from fanout.server.housekeeping import LeasePurger, Periodic, WalCheckpointer
from fanout.server.metrics import Metrics
from fanout.server.servicer import AdvisorServicer
from fanout.server.tls import ServerTls, bind
from fanout.settings import Settings
from fanout.storage import Registry, default_database_url
from fanout.v1 import advisor_pb2, advisor_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = advisor_pb2.DESCRIPTOR.services_by_name["AdvisorService"].full_name
BACKGROUND_THREADS = 3
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS or host.startswith("127.")


@dataclass
class RunningServer:
    """A started server with the parts tests and shutdown need."""

    server: grpc.Server
    port: int
    advisor: Advisor
    health: health.HealthServicer
    metrics: Metrics
    metrics_port: int | None
    tls: ServerTls | None = None
    tokens: TokenStore | None = None
    housekeeping: tuple[Periodic, ...] = ()

    def reload(self) -> bool:
        """SIGHUP: re-read the TLS files and the token file; a bad file keeps the old one."""
        reloaded = True
        for part in (self.tls, self.tokens):
            try:
                if part is not None:
                    part.reload()
            except ValueError as exc:
                log.error("reload refused, still serving the previous files: %s", exc)
                reloaded = False
        return reloaded

    def stop(self, grace: float) -> None:
        """Graceful stop: readiness goes NOT_SERVING, RPCs in flight drain, then stop."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        for work in self.housekeeping:
            work.stop()
        self.advisor.close()
        self.advisor.registry.dispose()


def make_server(settings: Settings, *, registry: Registry | None = None) -> RunningServer:
    """Build and start a server; `settings.listen` may use port 0 (tests)."""
    # One BLAS thread: a Recommend-shaped handler measured p99 11 ms with OpenBLAS'
    # default threads against 1.6 ms with one, and handlers already run in parallel.
    threadpool_limits(1)
    # `warnings.catch_warnings` in the GP fit is not thread-safe; handler and refit
    # threads fit at once, so the server silences these process-wide instead.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    if not settings.tls and not settings.insecure and not is_loopback(settings.listen):
        raise ValueError(
            f"refusing to serve plaintext gRPC on {settings.listen}: "
            "configure TLS or pass --insecure"
        )
    # Read before the registry is touched: a bad file stops the start with its setting named.
    tls = ServerTls.from_settings(settings)
    tokens = TokenStore.from_settings(settings)
    url = settings.database_url or default_database_url()
    # Every handler thread may hold a connection, and so may the refit queue, the
    # cluster load's background read and the lease purger: with fewer pooled, a burst
    # of 16 callers opened a new PostgreSQL connection for one request in ten. (SQLite's
    # WAL checkpointer is one more, but an extra SQLite connection costs next to nothing.)
    registry = registry or Registry(
        url,
        pool_size=settings.max_workers + BACKGROUND_THREADS,
        background_checkpoints=True,
    )
    auto = (
        settings.auto_migrate if settings.auto_migrate is not None else registry.dialect == "sqlite"
    )
    registry.ensure_schema(upgrade=auto)
    metrics = Metrics()
    fitter = ProcessFitter(settings.refit_processes) if settings.refit_processes else InlineFitter()
    advisor = Advisor(registry, fitter=fitter)
    if advisor.refits is not None:
        advisor.refits.fit_seconds = metrics.fit_duration.observe
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="rpc"),
        options=options,
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        interceptors=interceptors(tokens),
    )
    advisor_pb2_grpc.add_AdvisorServiceServicer_to_server(
        AdvisorServicer(advisor, metrics, max_predict_rows=settings.max_predict_rows), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = bind(server, settings, tls)
    metrics_port = None
    if settings.metrics_port is not None:
        metrics_port = metrics.serve(settings.metrics_port)
    # The ~150,000 objects of the imported libraries live as long as the process, and
    # a full collection that walks them stalls every request for ~85 ms: freeze them.
    gc.collect()
    gc.freeze()
    server.start()
    housekeeping: list[Periodic] = []
    if settings.lease_retention_hours > 0:
        retention = timedelta(hours=settings.lease_retention_hours)
        housekeeping.append(LeasePurger(registry, retention=retention))
    if registry.dialect == "sqlite":
        housekeeping.append(WalCheckpointer(registry))
    for work in housekeeping:
        work.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        extra={
            "listen": settings.listen,
            "port": port,
            "database": registry.safe_url,
            "metrics_port": metrics_port,
        },
    )
    return RunningServer(
        server,
        port,
        advisor,
        health_servicer,
        metrics,
        metrics_port,
        tls,
        tokens,
        tuple(housekeeping),
    )


def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    # A server that hangs can be asked where: every thread's stack goes to stderr.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "signal %s: draining for up to %.0f s",
            signal.Signals(signum).name,
            settings.grace_seconds,
        )
        stopping.set()

    # Caught before the start, which may migrate the registry: a SIGTERM meanwhile
    # stops the server gracefully once it is up instead of killing it halfway.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the start reads every file anyway
    running = make_server(settings)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: running.reload())
    running.advisor.fitter.warm()
    stopping.wait()
    running.stop(settings.grace_seconds)
    log.info("stopped")
