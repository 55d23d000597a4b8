"""Running a tool as a child process, as the pack drivers (``ansible``, ``terraform``) do: shared so both keep the same
promises.

* A private temporary folder per run (0700, files 0600), removed synchronously so it goes even while the step is
  being cancelled.
* A minimal environment: nothing of the daemon's passes but ``PATH``, ``HOME``, ``USER``, ``LOGNAME`` and ``TZ``
  (no other lane's secret, no operator's tool settings); the caller adds what the tool needs.
* Secret values masked in every line read back, in the spellings a tool may print them (raw, JSON-escaped).
* The child leads a new session; past the time limit, or when the caller is cancelled (the runner's step timeout),
  its process group and every descendant, including those that setsid() into sessions of their own, are SIGKILLed
  and waited for: nothing outlives the step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

MASK = "***"
STREAM_LIMIT = 4 * 1024 * 1024  # longest line asyncio will buffer; a longer one is dropped, not fatal
_KILL_WAIT = 5.0  # seconds to wait for a killed process tree to be gone
_ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "TZ")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CannotStart(Exception):
    """The program could not be started (missing, not executable); the message says why, in the OS's words."""


def secret_spellings(secrets: Iterable[str]) -> tuple[str, ...]:
    """Each secret as a tool may print it: raw, and escaped inside JSON. Longest first, so a secret that contains
    another is masked whole."""
    forms = {
        form for secret in secrets if secret
        for form in (secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1])
    }  # fmt: skip
    return tuple(sorted(forms, key=len, reverse=True))


def mask(text: str, spellings: tuple[str, ...]) -> str:
    """``text`` with every spelling (from ``secret_spellings``) replaced by ``***``. Mask before cutting to a length:
    a secret cut in half no longer matches itself."""
    for secret in spellings:
        text = text.replace(secret, MASK)
    return text


def write_private(path: Path, text: str) -> None:
    """Create ``path`` (it must not exist) readable by the owner only, holding ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def make_private_dir(prefix: str, root: Path | None) -> Path:
    """A new folder only this user can enter (mkdtemp makes it 0700) under ``root`` (default: the system's temp)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


@contextlib.contextmanager
def private_dir(prefix: str, root: Path | None) -> Iterator[Path]:
    """``make_private_dir``, removed on the way out. Synchronous on purpose: it must also run to the end when the step
    is being cancelled."""
    path = make_private_dir(prefix, root)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def base_env() -> dict[str, str]:
    env = {key: os.environ[key] for key in _ENV_KEEP if key in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def find_program(wanted: str) -> str | None:
    """``wanted`` if it is a path, else where ``PATH`` finds it; None unless it is an executable file."""
    found = wanted if os.sep in wanted else shutil.which(wanted, path=os.environ.get("PATH", DEFAULT_PATH))
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        return None
    return found


async def run_streaming(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    feed: Callable[[str], None],
    time_limit: float,
    stdout_to: Path | None = None,
    log_file: Path | None = None,
) -> int:
    """Run ``argv`` as the leader of a new session and return its exit status; every line of its output, decoded, goes
    to ``feed`` as it arrives (stdout and stderr merged, or only stderr when ``stdout_to`` names a private file that
    receives stdout: a tool's JSON answer that must not mix with its warnings).

    With ``log_file`` (a new private file) the output goes there instead of a pipe, and is followed from it: a child
    whose work must not stop half-way when the daemon dies (Terraform mid-apply) keeps running, where a pipe without
    its reader would fail or kill it at its next line.

    Raises CannotStart, and TimeoutError past ``time_limit`` seconds. When it does not end by itself (timed out,
    cancelled, a read failed), the whole process tree is killed before this returns or raises.
    """
    with contextlib.ExitStack() as files:

        def private(path: Path) -> IO[bytes]:
            return files.enter_context(os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb"))

        output: int | IO[bytes] = asyncio.subprocess.PIPE if log_file is None else private(log_file)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output if stdout_to is None else private(stdout_to),
                stderr=asyncio.subprocess.STDOUT if stdout_to is None else output,
                cwd=cwd,
                env=env,
                start_new_session=True,  # its own session: nothing of the run shares the daemon's group
                limit=STREAM_LIMIT,
            )
        except OSError as exc:
            raise CannotStart(f"cannot start {argv[0]}: {exc.strerror}") from None
    try:
        async with asyncio.timeout(time_limit):
            if log_file is not None:
                await _follow(log_file, proc, feed)
            else:
                stream = proc.stdout if stdout_to is None else proc.stderr
                assert stream is not None
                await _read_lines(stream, feed)
            return await proc.wait()
    finally:
        if proc.returncode is None:  # timed out, cancelled, or the read failed: leave nothing behind
            await kill_tree(proc)


async def _read_lines(stream: asyncio.StreamReader, feed: Callable[[str], None]) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # longer than STREAM_LIMIT: asyncio dropped it
            feed("(an over-long output line was dropped)")
            continue
        if not line:
            return
        feed(line.decode("utf-8", errors="replace"))


async def _follow(path: Path, proc: asyncio.subprocess.Process, feed: Callable[[str], None]) -> None:
    """Feed each line the child appends to ``path`` until it has exited and every line is read."""
    exited = asyncio.ensure_future(proc.wait())
    try:
        with path.open("rb") as handle:
            pending = b""
            while True:
                chunk = handle.read(65536)
                if chunk:
                    *lines, pending = (pending + chunk).split(b"\n")
                    if len(pending) > STREAM_LIMIT:
                        pending = b""
                        feed("(an over-long output line was dropped)")
                    for line in lines:
                        feed(line.decode("utf-8", errors="replace"))
                elif exited.done():
                    if pending:
                        feed(pending.decode("utf-8", errors="replace"))
                    return
                else:  # nothing new: wait for more output or the exit, whichever first
                    await asyncio.wait({exited}, timeout=0.02)
    finally:
        exited.cancel()


# --------------------------------------------------------------------------------------------- process trees


def _process_table() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, process group) of every process, from /proc."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
                table[int(entry.name)] = (int(fields[1]), int(fields[2]))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return table


def _descendants(root: int) -> dict[int, int]:
    """pid → process group of every descendant of ``root``."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _group) in table.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, int] = {}
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found[pid] = table[pid][1]
            todo.extend(children.get(pid, ()))
    return found


def _signal(pid: int, sig: signal.Signals, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


async def kill_tree(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` and everything it started, then reap it.

    Killing its process group is not enough: ansible-core's workers call setsid(), so each worker and the
    modules it runs are a session of their own. So, while the leader is still unreaped (its pid and the tree
    below it cannot have been reused): stop the leader's group, then walk the tree from /proc, stopping every
    descendant (a stopped process cannot fork) until no new one appears, and SIGKILL every group and process
    found. Synchronous up to the final wait, so a second cancellation cannot interrupt it half-way.
    """
    _signal(proc.pid, signal.SIGSTOP, group=True)
    tree: dict[int, int] = {}
    for _ in range(100):  # each round stops what the last round's processes had forked meanwhile
        found = _descendants(proc.pid)
        new = found.keys() - tree.keys()
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        tree.update(found)
    ours = os.getpgrp()
    for group in {proc.pid, *tree.values()} - {ours}:
        _signal(group, signal.SIGKILL, group=True)
    for pid in tree:
        _signal(pid, signal.SIGKILL)
    # SIGKILL is only queued: wait until the tree is really gone, so that when the call returns nothing of the
    # run still holds a file or a lock. A second cancellation may cut this short; everything dies regardless.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_KILL_WAIT):
            await proc.wait()
            while any(alive(pid) for pid in tree):  # noqa: ASYNC110 - not our children: no event to await
                await asyncio.sleep(0.01)


def working_dirs() -> set[Path]:
    """The current directory of every process this user may inspect."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.add(Path(os.readlink(f"/proc/{entry.name}/cwd")))
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not died: a zombie (dead, waiting to be reaped by whoever inherited it)
    does not count."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
