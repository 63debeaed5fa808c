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

Two more points are reached only by encrypted disks (``KEY_POINTS``, see docs/encryption.md):

``after-key-created``     create/import: the key is durable, its intent not yet recorded
``before-key-destroyed``  delete, or a create/import undone: the data is gone, the key not yet

Actions: ``kill`` (the default: SIGKILL to itself, as the OOM killer or a power cut would),
``eio`` and ``enospc`` (raise ``StorageIOError`` as the file system would), and ``crash`` (raise
``Crash``: the operation's thread dies on the spot, no compensation runs and the intent stays
pending, as if its process had been killed; for tests that crash operations in-process, see
``diskledger.testing``). Unarmed, a point costs one truth test of an empty dict.

``armed(spec)`` arms points for the duration of a ``with`` block, in this process only.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from diskledger.errors import StorageIOError

__all__ = ["ACTIONS", "KEY_POINTS", "POINTS", "Crash", "FaultSpecError", "armed", "parse", "reach"]

POINTS: Final = ("after-intent", "mid-effect", "after-effect", "after-outcome")
KEY_POINTS: Final = ("after-key-created", "before-key-destroyed")
ACTIONS: Final = ("kill", "eio", "enospc", "crash")


class Crash(BaseException):
    """An operation died at a fault point (action ``crash``): nothing after it runs, no
    compensation either. A ``BaseException``, so that no ``except Exception`` swallows it."""


class FaultSpecError(ValueError):
    """``DISKLEDGER_FAULT`` does not parse: a test that arms a fault must not run unarmed."""


def parse(spec: str) -> dict[tuple[str | None, str], str]:
    """``[op@]point[:action]`` items separated by commas -> {(op or None, point): action}."""
    armed: dict[tuple[str | None, str], str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        target, _, action = item.partition(":")
        op, _, point = target.rpartition("@")
        action = action or "kill"
        if point not in (*POINTS, *KEY_POINTS) or action not in ACTIONS:
            raise FaultSpecError(
                f"DISKLEDGER_FAULT item {item!r}: points are {', '.join((*POINTS, *KEY_POINTS))}; "
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
    if action == "crash":
        raise Crash(f"crash injected at {op}@{point}")
    code = errno.EIO if action == "eio" else errno.ENOSPC
    raise StorageIOError(f"fault injected at {op}@{point}: {os.strerror(code)}", errno=code)


@contextmanager
def armed(spec: str) -> Iterator[None]:
    """Arm ``spec`` (the syntax of ``DISKLEDGER_FAULT``) in this process for a ``with`` block."""
    faults = parse(spec)
    saved = dict(_ARMED)
    _ARMED.clear()
    _ARMED.update(faults)
    try:
        yield
    finally:
        _ARMED.clear()
        _ARMED.update(saved)
