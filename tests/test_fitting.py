"""GP refits in worker processes: the same fit as in the server's process, and workers
that never outlive their server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fanout.engine import Observation, TaskConfig, TaskModel
from fanout.server.fitting import InlineFitter, ProcessFitter
from fanout.settings import parse_settings


def lagging_model(seed: int = 3) -> TaskModel:
    """A model whose GP hyper-parameters lag behind its window."""
    rng = np.random.default_rng(seed)
    model = TaskModel(TaskConfig(window=30, max_parallelism=32))
    for i in range(30):
        s = 1 if i == 0 else int(rng.integers(1, 32))
        seconds = 200 * (0.05 + 0.95 / s) * (1 + 0.05 * rng.standard_normal())
        model.observe(Observation(parallelism=s, duration_seconds=seconds), refit=False)
    assert model.needs_refit
    return model


def decisions(model: TaskModel) -> list[tuple[int, float, float]]:
    out = []
    for load in (0.0, 8.0, 40.0):
        decision = model.decide(cluster_load=load)
        out.append((decision.parallelism, decision.mean_seconds, decision.sd_seconds))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for every purpose but its parent's bookkeeping.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def test_a_worker_fits_what_the_server_would() -> None:
    fitter = ProcessFitter(1)
    try:
        remote = fitter.refit(lagging_model())
    finally:
        fitter.close()
    local = InlineFitter().refit(lagging_model())
    assert not remote.needs_refit
    assert remote._gp is not None and not remote._gp_dirty  # built before it is served
    assert remote.state_dict() == local.state_dict()
    assert decisions(remote) == decisions(local)


def test_a_dead_worker_is_replaced() -> None:
    fitter = ProcessFitter(1)
    try:
        fitter.refit(lagging_model(1))
        [worker] = fitter.worker_pids()
        os.kill(worker, signal.SIGKILL)
        refitted = fitter.refit(lagging_model(2))
        assert not refitted.needs_refit
        assert fitter.worker_pids() and worker not in fitter.worker_pids()
    finally:
        fitter.close()
    with pytest.raises(RuntimeError, match="shut down"):
        fitter.refit(lagging_model(1))


def test_workers_leave_when_their_server_is_killed() -> None:
    script = (
        "from fanout.server.fitting import ProcessFitter\n"
        "from tests.test_fitting import lagging_model\n"
        "fitter = ProcessFitter(1)\n"
        "fitter.refit(lagging_model())\n"
        "print(*fitter.worker_pids(), flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        workers = [int(pid) for pid in server.stdout.readline().split()]
        assert len(workers) == 1 and all(alive(pid) for pid in workers)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


def test_refit_processes_setting() -> None:
    assert parse_settings([], {}).refit_processes == 1
    assert parse_settings(["--refit-processes", "0"], {}).refit_processes == 0
    assert parse_settings([], {"FANOUT_REFIT_PROCESSES": "3"}).refit_processes == 3
    with pytest.raises(ValueError, match="refit_processes"):
        parse_settings(["--refit-processes", "-1"], {})
