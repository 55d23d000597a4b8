"""Starting and stopping the real daemons the tests run against: free loopback ports, readiness polling, logs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class ComponentFailed(AssertionError):
    """A component did not start or get ready. An AssertionError, so the test fails (never skips)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require(binary: str) -> str:
    path = shutil.which(binary) or (binary if os.path.exists(binary) else None)
    if path is None:
        raise ComponentFailed(f"{binary} is not installed: run scripts/testbed-install (make test does)")
    return path


def wait_until(
    what: str, ready: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1, proc: Process | None = None
) -> Any:
    """The older name (and defaults) of ``tests.testbed.wait.eventually_sync``, which the driver tests still import."""
    from tests.testbed.wait import eventually_sync  # imported here: wait imports this module

    return eventually_sync(what, ready, within=timeout, every=interval, proc=proc)


class Process:
    """A foreground daemon started as a subprocess with its output in a log file; stopped by PID."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after ``timeout``."""
        if not self.alive():
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=5)


def live(pid: int) -> bool:
    """Running (a zombie nobody reaped does not count: it runs nothing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def live_with_env(fragment: str) -> list[int]:
    """Processes (not this one) whose environment mentions ``fragment``: a driver's children carry their private
    folder in it (ANSIBLE_LOCAL_TEMP, TF_DATA_DIR), down to what they start themselves."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if fragment.encode() in environ and live(int(entry.name)):
                found.append(int(entry.name))
    return found
