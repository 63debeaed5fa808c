"""Fault points: named places in the operation path that a test can arm to crash or fail there.

Arm them with the environment variable ``DISKLEDGER_FAULT``, read once when diskledger is imported::

    DISKLEDGER_FAULT=mid-effect                SIGKILL this process at the first mid-effect point
    DISKLEDGER_FAULT=create@after-effect:eio   raise EIO after a create's effect, before the outcome
    DISKLEDGER_FAULT=after-intent:kill,export@mid-effect:enospc

Points, in the order an operation reaches them:

``after-intent``   the intent is durable, storage not yet touched
``mid-effect``     part of the effect is done (data in the temporary name, or the first of two
                   in-place steps); for a one-step effect, just before that step
``after-effect``   the effect is complete, the outcome not yet recorded
``after-outcome``  the outcome is durable

Actions: ``kill`` (the default: SIGKILL to itself, as the OOM killer or a power cut would),
``eio`` and ``enospc`` (raise ``StorageIOError`` as the file system would). Unarmed, a point costs
one truth test of an empty dict.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Final

from diskledger.errors import StorageIOError

__all__ = ["ACTIONS", "POINTS", "FaultSpecError", "parse", "reach"]

POINTS: Final = ("after-intent", "mid-effect", "after-effect", "after-outcome")
ACTIONS: Final = ("kill", "eio", "enospc")


class FaultSpecError(ValueError):
    """``DISKLEDGER_FAULT`` does not parse: a test that arms a fault must not run unarmed."""


def parse(spec: str) -> dict[tuple[str | None, str], str]:
    """``[op@]point[:action]`` items separated by commas -> {(op or None, point): action}."""
    armed: dict[tuple[str | None, str], str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        target, _, action = item.partition(":")
        op, _, point = target.rpartition("@")
        action = action or "kill"
        if point not in POINTS or action not in ACTIONS:
            raise FaultSpecError(
                f"DISKLEDGER_FAULT item {item!r}: points are {', '.join(POINTS)}; "
                f"actions are {', '.join(ACTIONS)}"
            )
        armed[(op or None, point)] = action
    return armed


_ARMED: Final = parse(os.environ.get("DISKLEDGER_FAULT", ""))


def reach(point: str, op: str) -> None:
    """Mark that ``op`` reached ``point``; do what the armed fault says, if any."""
    if not _ARMED:
        return
    action = _ARMED.get((op, point)) or _ARMED.get((None, point))
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = errno.EIO if action == "eio" else errno.ENOSPC
    raise StorageIOError(f"fault injected at {op}@{point}: {os.strerror(code)}", errno=code)
