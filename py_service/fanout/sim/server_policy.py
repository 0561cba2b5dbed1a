"""fanout through the real server: the `fanout-server` policy of `fanout simulate`.

One `fanout serve` child (on a throw-away SQLite registry) serves every policy
instance of a simulation; each instance learns in its own namespace, so repetitions
stay independent. Decisions and reports travel over loopback gRPC through the SDK,
exactly as a workflow step's would.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

from fanout.sim.policies import Context, PolicyInfo
from fanout_client import Advisor, Recommendation

WORKFLOW = "sim"
# Simulated runs follow each other at once, while real ones are minutes apart: wait
# for the server's background GP refit like real time would, so decisions do not
# depend on how busy the machine is.
REFIT_WAIT_SECONDS = 60.0


class _Server:
    """The shared server child, started on first use and stopped at exit."""

    process: subprocess.Popen[bytes] | None = None
    target = ""

    @classmethod
    def target_address(cls) -> str:
        if cls.process is None or cls.process.poll() is not None:
            cls._start()
        return cls.target

    @classmethod
    def _start(cls) -> None:
        folder = Path(tempfile.mkdtemp(prefix="fanout-sim-"))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        cls.target = f"127.0.0.1:{port}"
        with (folder / "server.log").open("wb") as log:
            cls.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fanout.cli",
                    "serve",
                    "--listen",
                    cls.target,
                    "--database-url",
                    f"sqlite:///{folder / 'registry.sqlite3'}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, FANOUT_LOG_LEVEL="WARNING"),
            )
        atexit.register(cls.stop)
        deadline = time.monotonic() + 30
        with Advisor(cls.target, fallback=False, retries=0) as probe:
            while True:
                try:
                    next(iter(probe.list_tasks(page_size=1)), None)
                    return
                except Exception:
                    if time.monotonic() > deadline or cls.process.poll() is not None:
                        raise RuntimeError(f"fanout serve did not start; see {folder}") from None
                    time.sleep(0.1)

    @classmethod
    def stop(cls) -> None:
        if cls.process is not None and cls.process.poll() is None:
            cls.process.send_signal(signal.SIGTERM)
            cls.process.wait(timeout=30)
        cls.process = None


class ServerPolicy:
    """The `Policy` protocol over the SDK; one instance per model key and repetition."""

    def __init__(self, info: PolicyInfo) -> None:
        self.model_key = info.model_key
        self.advisor = Advisor(
            _Server.target_address(), namespace=f"sim-{uuid.uuid4().hex[:12]}", fallback=False
        )
        # Tasks sharing one model may report in any order: match a run to its
        # recommendation by width.
        self.pending: dict[int, list[Recommendation]] = defaultdict(list)

    def decide(self, context: Context) -> int:
        rec = self.advisor.recommend(
            f"{WORKFLOW}/{self.model_key}",
            model_key=self.model_key,
            input_size=context.input_size,
            cluster_load=context.cluster_load,
            min_parallelism=context.min_parallelism,
            max_parallelism=context.max_parallelism,
            urgency=context.urgency,
            resource_exponent=context.resource_exponent,
        )
        self.pending[rec.parallelism].append(rec)
        return rec.parallelism

    def observe(self, s: int, context: Context, duration: float, startup: float | None) -> None:
        rec = self.pending[s].pop(0)
        result = self.advisor.report(
            rec, duration_seconds=duration, startup_seconds=startup, input_size=context.input_size
        )
        deadline = time.monotonic() + REFIT_WAIT_SECONDS
        pending = result.model.refit_pending
        while pending and time.monotonic() < deadline:
            time.sleep(0.005)
            pending = self.advisor.get_task(rec.task).model.refit_pending
