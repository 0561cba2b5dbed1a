"""Where GP hyper-parameters are re-optimised: in the server's process or in workers.

A refit is about 40-60 ms of CPU-bound Python and numpy. In the server's process it
holds the GIL against every request handler for that long; in a worker process it
costs the handlers nothing but the pickling of one JSON-safe state each way. Workers
are started with `spawn` (forking a process that runs gRPC's threads is unsafe), on
first use or by `warm()`, and exit by themselves when the server is gone, even after a
SIGKILL that gave it no chance to stop them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from fanout.engine import TaskModel

log = logging.getLogger(__name__)

ORPHAN_CHECK_SECONDS = 1.0


class Fitter(Protocol):
    def refit(self, model: TaskModel) -> TaskModel:
        """A refitted copy of `model` (or `model` itself, refitted)."""
        ...

    def warm(self) -> None:
        """Gets ready for the first refit."""
        ...

    def close(self) -> None: ...


class InlineFitter:
    """Refits in the calling thread (tests, the simulator, `--refit-processes 0`)."""

    def refit(self, model: TaskModel) -> TaskModel:
        model.refit()
        return model

    def warm(self) -> None:
        pass

    def close(self) -> None:
        pass


class ProcessFitter:
    """Refits in a pool of `processes` worker processes."""

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self._processes = processes
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def warm(self) -> None:
        """Starts the workers and imports the engine in them, off the first report."""
        self._executor().submit(_ready)

    def refit(self, model: TaskModel) -> TaskModel:
        config, state = model.config.to_dict(), model.state_dict()
        try:
            refitted = self._executor().submit(refitted_state, config, state).result()
        except BrokenProcessPool:
            # A worker died (killed, out of memory): start new ones and try once more.
            log.warning("a refit worker died; starting new refit workers")
            self._discard_pool()
            refitted = self._executor().submit(refitted_state, config, state).result()
        model = TaskModel.from_dicts(config, refitted)
        # Here, off the request path: the first request after the refit would build it.
        model.prepare()
        return model

    def worker_pids(self) -> list[int]:
        """For tests and benchmarks: the workers' process ids."""
        with self._lock:
            pool = self._pool
        processes = getattr(pool, "_processes", None) or {}
        return sorted(processes)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._discard_pool()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the refit workers are shut down")
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self._processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def _discard_pool(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def refitted_state(config: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
    """In a worker: the state of the model `(config, state)` after `refit()`."""
    model = TaskModel.from_dicts(config, state)
    model.refit()
    return model.state_dict()


def _ready() -> None:
    pass


def _start_worker(server_pid: int) -> None:
    # The server stops its workers itself; a Ctrl-C in a terminal reaches the whole
    # process group and would only print tracebacks here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One BLAS thread, as in the server: the cores are the handlers' too.
    threadpool_limits(1)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    threading.Thread(target=_exit_when_orphaned, args=(server_pid,), daemon=True).start()


def _exit_when_orphaned(server_pid: int) -> None:
    # A worker whose server was SIGKILLed waits on its task queue forever, holding
    # memory: once adopted by another parent, it leaves.
    while os.getppid() == server_pid:
        time.sleep(ORPHAN_CHECK_SECONDS)
    os._exit(0)
