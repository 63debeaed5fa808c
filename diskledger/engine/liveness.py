"""Is the process that recorded an intent still running? Recovery must not undo live work."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

__all__ = ["abandon", "abandoned", "boot_id", "current_process", "is_alive"]


@cache
def _boot_id() -> str:
    # Several "hosts" on one kernel (network namespaces in the multi-host tests) each have their
    # own boot identity; a real host has the kernel's.
    override = os.environ.get("DISKLEDGER_BOOT_ID")
    if override:
        return override
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has finished its work
        return None
    return fields[19]


def boot_id() -> str:
    """This host's boot identity: a process recorded under another one is dead."""
    return _boot_id()


_IDENTITIES: dict[int, str] = {}


def current_process() -> str:
    """``<boot id>:<pid>:<start time>`` of this process, recorded in every event's metadata."""
    pid = os.getpid()  # not cached alone: a forked child is another process
    identity = _IDENTITIES.get(pid)
    if identity is None:
        identity = _IDENTITIES[pid] = f"{_boot_id()}:{pid}:{_start_time(pid)}"
    return identity


def is_alive(process: str | None, host: str, this_host: str) -> bool:
    """Whether the recorded process still runs on this host. A process on another host, or one
    recorded without an identity, is judged by its own host's recovery: treated as alive."""
    if host != this_host or not process:
        return True
    boot, _, rest = process.partition(":")
    pid, _, started = rest.partition(":")
    if boot != _boot_id() or not pid.isdigit():
        return False
    return _start_time(int(pid)) == started


_ABANDONED: set[str] = set()


def abandon(op_id: str) -> None:
    """Declare that operation ``op_id`` died in this process (its thread crashed without an
    outcome): recovery treats it as a dead writer's although the process lives on."""
    _ABANDONED.add(op_id)


def abandoned(op_id: str) -> bool:
    return op_id in _ABANDONED
