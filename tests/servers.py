"""Running `fanout serve` as a real child process, and calling servers from many threads,
for restart and multi-server tests."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_Job = TypeVar("_Job")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One `fanout serve` child on a loopback port."""

    def __init__(
        self, database_url: str, *, log_dir: Path, name: str = "server", extra: tuple[str, ...] = ()
    ) -> None:
        self.port = free_port()
        self.database_url = database_url
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self._log = self.log_path.open("wb")
        env = dict(os.environ, FANOUT_LOG_LEVEL="WARNING")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fanout.cli",
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--database-url",
                database_url,
                "--auto-migrate",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.target = f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                with grpc.insecure_channel(self.target) as channel:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1.0
                    )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crashed node."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and the exit code; a server still running after `timeout` is asked
        for its threads' stacks, killed, and reported with the end of its log."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(
                f"server did not stop within {timeout} s after SIGTERM; its log ends:\n"
                + self.log_path.read_text(errors="replace")[-6000:]
            ) from None
        finally:
            self._log.close()


def drain(jobs: list[_Job], threads: int, handle: Callable[[_Job, random.Random], None]) -> None:
    """Handles every job from `threads` threads at once, each with a `Random` seeded by
    its index; a thread stops at its first failure, and the first three failures are
    raised once all threads have stopped."""
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(index: int) -> None:
        local = random.Random(index)
        while True:
            with lock:
                if not jobs:
                    return
                job = jobs.pop()
            try:
                handle(job, local)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors[:3]
