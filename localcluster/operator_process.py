"""`jobgate run` as a real process against a cluster: for tests, the demo and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CRD_FILE = REPO / "charts" / "jobgate" / "files" / "crds" / "concurrencypolicies.jobgate.dev.yaml"
CLUSTER_CRD_FILE = CRD_FILE.with_name("clusterconcurrencypolicies.jobgate.dev.yaml")
PORT_TAKEN = "address already in use"
PORT_CHECK_SECONDS = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OperatorProcess:
    """`jobgate run` in a subprocess, logging to a file whose tail is shown when something fails."""

    def __init__(self, kubeconfig: Path, namespaces: Sequence[str], log_dir: Path, *extra: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespaces = list(namespaces)
        self.extra = list(extra)
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log_path = log_dir / f"jobgate-{self.health_port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0, attempts: int = 3) -> OperatorProcess:
        """Start and wait until healthy; if another process took one of its ports meanwhile, retry on new ones."""
        for attempt in range(1, attempts + 1):
            self._launch()
            if self._wait_until_healthy(timeout):
                return self
            if attempt == attempts:
                raise RuntimeError(f"jobgate found its ports taken {attempts} times:\n{self.log_tail()}")
            self.metrics_port, self.health_port = free_port(), free_port()
        return self

    def _launch(self) -> None:
        args = [sys.executable, "-m", "jobgate", "run", "--kubeconfig", str(self.kubeconfig)]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        args += ["--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)]
        args += ["--log-level", "DEBUG", *self.extra]
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        log.close()

    def _wait_until_healthy(self, timeout: float) -> bool:
        """True once healthy; False if it exited because a port was taken; raises on any other failure."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.healthy():
                # A free port can be taken between choosing it and binding it, and whoever took it
                # may answer /healthz too: make sure it is this process that still runs.
                time.sleep(PORT_CHECK_SECONDS)
                if self.process.poll() is None:
                    return True
            if self.process.poll() is not None:
                if PORT_TAKEN in self.log_tail(20):
                    return False
                raise RuntimeError(f"jobgate exited with {self.process.returncode} at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobgate was not healthy within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("jobgate was never started")
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pause(self) -> None:
        """Freeze every thread at once (SIGSTOP), as a long GC pause, a throttled CPU or a suspended VM would."""
        self.process_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused process go on (SIGCONT) from exactly where it stopped, with all it knew then."""
        self.process_signal(signal.SIGCONT)

    def process_signal(self, sig: int) -> None:
        if not self.running():
            raise RuntimeError(f"jobgate is not running; cannot send it signal {sig}:\n{self.log_tail()}")
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # A paused process would hold the signal until the timeout: let it handle it now.
        self.process.send_signal(signal.SIGCONT)
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Die at once, as a crashed or OOM-killed pod would: no cleanup, no Lease release."""
        self.stop(signal.SIGKILL)

    def restart(self, timeout: float = 30.0) -> OperatorProcess:
        """Start again with the same arguments and log file, as a pod's container restarts after a crash."""
        if self.running():
            raise RuntimeError("jobgate is still running: stop or kill it before restarting it")
        return self.start(timeout)

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"
