"""The one way diskledger runs an external command: an argument list, never a shell."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import tenacity

from diskledger.context import current
from diskledger.errors import (
    BackendError,
    CommandFailed,
    CommandNotFound,
    CommandTimedOut,
    Fenced,
    StorageIOError,
)

__all__ = ["forbid", "run"]

log = logging.getLogger(__name__)

# Where each tool comes from on Debian, so a missing one is one `apt-get install` away.
_PACKAGES = {
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "cp": "coreutils",
    "prlimit": "util-linux",
}

UNTRUSTED_LIMITS = ("--cpu=30", f"--as={1 << 30}")
"""What a tool looking at an untrusted image may use, as Nova limits ``qemu-img info``: 30 s of
CPU time and 1 GiB of address space, so a crafted image cannot spin or exhaust the host."""

# Failures the file system reported through the tool: typed so callers can tell a full disk
# from a bad command.
_IO_ERRORS = (
    ("No space left on device", errno.ENOSPC),
    ("Input/output error", errno.EIO),
)


LOCK_WAIT = 10.0
"""Seconds to retry a command that found its image write-locked by another process: a writer
killed a moment ago (its qemu-img not yet gone) lets go within that; a running guest does not,
and then the lock conflict is the error."""
_LOCKED = 'Failed to get "write" lock'


class _Locked(CommandFailed):
    """qemu refused: another process holds the image's write lock."""


class _Watchdog:
    """One thread that kills the commands that overrun their timeout. Starting a thread per
    command (``threading.Timer``) costs 0.1-0.3 ms of every call; this one starts once per
    process (again in a forked child, where the parent's thread does not run)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: dict[subprocess.Popen[str], tuple[float, threading.Event]] = {}
        self._pid = 0

    def watch(self, process: subprocess.Popen[str], timeout: float) -> threading.Event:
        """Kill ``process`` unless it is forgotten within ``timeout`` seconds; the event is set
        when it was killed for that."""
        expired = threading.Event()
        with self._changed:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._due = {}
                threading.Thread(target=self._run, name="diskledger-watchdog", daemon=True).start()
            self._due[process] = (time.monotonic() + timeout, expired)
            self._changed.notify()
        return expired

    def forget(self, process: subprocess.Popen[str]) -> None:
        with self._changed:
            self._due.pop(process, None)

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for process, (deadline, expired) in list(self._due.items()):
                    if deadline <= now:
                        del self._due[process]
                        expired.set()
                        with contextlib.suppress(OSError):
                            process.kill()
                soonest = min((deadline for deadline, _ in self._due.values()), default=None)
                self._changed.wait(None if soonest is None else soonest - now)


_WATCHDOG = _Watchdog()

_children: dict[subprocess.Popen[str], str | None] = {}
"""Every tool running, with the member it runs for (``diskledger.context``)."""
_children_lock = threading.Lock()
_forbidden: dict[str | None, str] = {}
"""Members that fenced themselves (None: the whole process), and why."""


def forbid(reason: str, member: str | None = None) -> None:
    """Kill every tool running for ``member`` (every tool, when None) and refuse to start
    another: a member that lost its lease fences itself, and a ``qemu-img convert`` left running
    would go on writing."""
    with _children_lock:
        _forbidden[member] = reason
        running = [p for p, m in _children.items() if member is None or m == member]
    for process in running:
        with contextlib.suppress(OSError):  # it has just exited
            process.kill()


def _refusal(member: str | None) -> str | None:
    return _forbidden.get(None) or (_forbidden.get(member) if member is not None else None)


@contextlib.contextmanager
def _tracked(process: subprocess.Popen[str], member: str | None, tool: str) -> Iterator[None]:
    """Keep ``process`` where ``forbid`` finds it while it runs; raise ``Fenced`` after it when
    it was forbidden meanwhile (its result cannot be trusted to have been wanted)."""
    with _children_lock:
        _children[process] = member
        if _refusal(member) is not None:
            process.kill()  # forbidden while it started: it must not run on
    try:
        yield
    finally:
        with _children_lock:
            _children.pop(process, None)
            fenced = _refusal(member)
    if fenced is not None:
        raise Fenced(f"{tool} killed: {fenced}")


def run(
    argv: Sequence[str],
    *,
    timeout: float = 300.0,
    untrusted: bool = False,
    lock_wait: float = LOCK_WAIT,
    on_output: Callable[[str], None] | None = None,
) -> str:
    """Run ``argv`` and return its stdout; raise a ``BackendError`` subclass on any failure.

    ``untrusted``: the command reads an image not yet trusted; run it under ``UNTRUSTED_LIMITS``.
    A command refused because another process holds the image's write lock is run again for up
    to ``lock_wait`` seconds. ``on_output``: called with each piece of stdout as it comes (a
    tool's progress), besides the whole being returned.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_Locked),
        stop=tenacity.stop_after_delay(lock_wait),
        wait=tenacity.wait_exponential(multiplier=0.02, max=1.0),
        before_sleep=lambda state: log.info("%s: image locked, trying again", argv[0]),
        reraise=True,
    )
    return retrying(_run_once, argv, timeout=timeout, untrusted=untrusted, on_output=on_output)


def _follow(process: subprocess.Popen[str], on_output: Callable[[str], None]) -> tuple[str, str]:
    """``process.communicate()``, handing each piece of stdout to ``on_output`` as it comes."""
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.fileno(), process.stderr.fileno()
    chunks: dict[int, list[bytes]] = {out: [], err: []}
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(out, selectors.EVENT_READ)
            selector.register(err, selectors.EVENT_READ)
            while selector.get_map():
                for key, _ in selector.select():
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fd)
                        continue
                    chunks[key.fd].append(data)
                    if key.fd == out:
                        on_output(data.decode("utf-8", "replace"))
    except BaseException:
        process.kill()  # on_output raised: the tool must not go on writing
        raise
    process.wait()
    return (
        b"".join(chunks[out]).decode("utf-8", "replace"),
        b"".join(chunks[err]).decode("utf-8", "replace"),
    )


def _run_once(
    argv: Sequence[str],
    *,
    timeout: float,
    untrusted: bool,
    on_output: Callable[[str], None] | None = None,
) -> str:
    tool = os.path.basename(argv[0])
    command = ("prlimit", *UNTRUSTED_LIMITS, "--", *argv) if untrusted else tuple(argv)
    log.debug("running %s", command)
    working = current()
    member = working.member if working is not None else None
    with _children_lock:
        if (refused := _refusal(member)) is not None:
            raise Fenced(f"not running {tool}: {refused}")
    try:
        process = subprocess.Popen(
            command,
            shell=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # Parsed messages (and the ENOSPC/EIO mapping below) assume untranslated output.
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError as exc:
        # The program exec'd is the first word: prlimit when the command is untrusted.
        missing = os.path.basename(command[0])
        package = _PACKAGES.get(missing)
        hint = f" (install the Debian package {package})" if package else ""
        raise CommandNotFound(f"{missing} is not installed{hint}", command=command) from exc
    except OSError as exc:
        raise StorageIOError(f"cannot run {tool}: {exc.strerror}", errno=exc.errno) from exc
    # A watchdog rather than communicate(timeout=...): with a timeout, the final wait polls
    # with sleeps and adds about half a millisecond to every call.
    with process, _tracked(process, member, tool):
        expired = _WATCHDOG.watch(process, timeout)
        try:
            if on_output is None:
                stdout, stderr = process.communicate()
            else:
                stdout, stderr = _follow(process, on_output)
        finally:
            _WATCHDOG.forget(process)
    if expired.is_set():
        raise CommandTimedOut(
            f"{tool} ran longer than {timeout:g} s and was killed", command=command, stderr=stderr
        )
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if done.returncode == 0:
        return done.stdout
    stderr = done.stderr
    lines = stderr.strip().splitlines()
    message = f"{tool} failed: {lines[-1] if lines else f'exit status {done.returncode}'}"
    error: BackendError
    for needle, code in _IO_ERRORS:
        if needle in stderr:
            error = StorageIOError(message, errno=code)
            error.command, error.returncode, error.stderr = command, done.returncode, stderr
            break
    else:
        kind = _Locked if _LOCKED in stderr else CommandFailed
        error = kind(message, command=command, returncode=done.returncode, stderr=stderr)
    raise error
