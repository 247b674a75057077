"""Child processes of the local control plane: start, watch, log, stop.

Each component runs in its own session (so its process group can be signalled
as a whole) and writes to its own log file, never to a pipe, so that a
detached cluster outlives the command that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 40
STOP_GRACE_SECONDS = 5.0

_PR_SET_PDEATHSIG = 1


def _kill_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGKILL the child when its parent dies.

    This is what cleans up after a test run that was itself SIGKILLed (no
    finally, no atexit). The hook is resolved before fork so the child only
    makes one syscall. Linux ties it to the thread that forked: start clusters
    from a thread that lives as long as the cluster should (the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return hook


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (it may be taken before we use it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Component:
    """One control-plane binary with its arguments and log file."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, detached: bool) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=None if detached else _kill_with_parent(),  # noqa: PLW1509 (see there)
            )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while running."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def port_was_taken(self) -> bool:
        return "address already in use" in self.log_tail(lines=200)


def process_is_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (zombies of reparented children may linger)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    except OSError:
        # No /proc (not Linux): fall back to asking the kernel whether it exists.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def stop_process_groups(pids: Sequence[int], grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each process group, wait up to ``grace_seconds`` for all to exit, then SIGKILL the rest.

    Each pid is the leader of its own session, so its group id equals its pid and
    the signal reaches anything it spawned too.
    """
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    remaining = list(pids)
    while remaining and time.monotonic() < deadline:
        _reap(remaining)
        remaining = [pid for pid in remaining if process_is_running(pid)]
        if remaining:
            time.sleep(0.05)
    for pid in remaining:
        _signal_group(pid, signal.SIGKILL)
    _reap(pids)


def kill_process_group(pid: int) -> None:
    """SIGKILL a process group at once, as a crash or an OOM kill would (the caller reaps the leader)."""
    _signal_group(pid, signal.SIGKILL)


def stop_in_order(pids: Sequence[int], grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """Stop process groups one after another, e.g. clients before the apiserver before etcd.

    Together they take much longer: the apiserver waits for etcd, which is gone,
    and etcd waits for the apiserver's connections to close.
    """
    for pid in pids:
        stop_process_groups([pid], grace_seconds)


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _reap(pids: Sequence[int]) -> None:
    """Collect exit statuses of our own children so they do not stay zombies."""
    for pid in pids:
        # ChildProcessError: not our child (a detached cluster stopped by another command).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
