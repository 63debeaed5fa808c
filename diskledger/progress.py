"""Progress of long copies: the callback a caller gives, and the meters copy loops feed.

A fetch, an import, an export or a flatten can copy gigabytes. The caller that wants to watch
passes a ``Progress`` callback (``Engine.add_template(..., progress=cb)``); the engine makes it
the active one for the operation with ``reporting(cb, "fetch")``; the copy loops deep in the
backends (the download in ``diskledger.backends.sources``, ``qemu-img convert``, librbd's
flatten) ask for a ``meter(step, total)`` and feed it the bytes done.

Why a context variable rather than a parameter: every backend and template store (file, rbd, lvm
in a guest, an image service's source) would otherwise carry a ``progress`` argument through its
protocol methods for the few loops that can report. The active callback is ambient to the call,
like ``diskledger.context``: a thread or an asyncio task has its own, and a backend that never
asks for a meter is unchanged. Nothing here imports the engine, the backends or the CLI.

What the callback sees (``ProgressEvent``): the operation (``what``), the copy within it
(``step``: a fetch into RBD downloads, then converts), the bytes done and the bytes in all when
known. Per step, the first event has ``done == 0`` and the last has ``final`` set (``done`` is then
``total`` when the copy completed). In between, events come at most every ``INTERVAL`` seconds
whatever the loop does, so a tight loop pays a clock read per block and the callback runs a few
times a second. ``done`` only goes back when a download starts again from its first byte after a
failed attempt.

The callback runs in the thread that copies, except for an RBD flatten, whose progress librbd
reports from its own threads. An exception it raises fails the copy, and so the operation, which
is settled like any failed effect (``<op>.failed``, its artifacts removed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "INTERVAL",
    "Meter",
    "Progress",
    "ProgressEvent",
    "active",
    "meter",
    "reporting",
]

INTERVAL = 0.1
"""Seconds at least between two events of one step (besides its first and its last)."""


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """How far one copy of an operation is."""

    what: str
    """The operation: ``fetch``, ``import``, ``export``, ``flatten``."""
    step: str
    """The copy within it: ``download``, ``copy``, ``convert``, ``flatten``."""
    done: int
    """Bytes done (a flatten: bytes of the image's extent)."""
    total: int | None
    """Bytes in all, when known (a download without a Content-Length: None)."""
    final: bool = False
    """The step's last event."""


class Progress(Protocol):
    """A progress callback: any callable taking a ``ProgressEvent`` (a function, a bound method
    such as ``list.append``, an object with ``__call__``)."""

    def __call__(self, event: ProgressEvent, /) -> None:
        """Called with each event of each copy of the operation."""


@dataclass(frozen=True, slots=True)
class _Reporting:
    callback: Progress
    what: str
    interval: float


_ACTIVE: ContextVar[_Reporting | None] = ContextVar("diskledger_progress", default=None)


@contextmanager
def reporting(
    callback: Progress | None, what: str, *, interval: float = INTERVAL
) -> Iterator[None]:
    """Make ``callback`` the one the copies of operation ``what`` report to, within the block.

    ``callback`` None changes nothing (an outer ``reporting`` stays active)."""
    if callback is None:
        yield
        return
    token = _ACTIVE.set(_Reporting(callback, what, interval))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> bool:
    """Whether a callback listens: a copy that reports only at a cost (a different command line,
    a copy loop of its own) asks first."""
    return _ACTIVE.get() is not None


def meter(
    step: str, total: int | None = None, *, clock: Callable[[], float] | None = None
) -> Meter:
    """A meter for one copy of the active operation, having reported ``done == 0``; a silent one
    (its methods do nothing) when no callback listens. ``clock`` (default ``time.monotonic``)
    is the throttle's time."""
    current = _ACTIVE.get()
    if current is None:
        return _SILENT
    return Meter(current, step, total, clock or time.monotonic)


class Meter:
    """One copy's progress, throttled: ``update`` as bytes are done, ``finish`` once at the end."""

    __slots__ = ("_clock", "_due", "_final", "_reporting", "done", "step", "total")

    def __init__(
        self,
        reporting: _Reporting | None,
        step: str,
        total: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reporting = reporting
        self._clock = clock
        self._final = False
        self.step = step
        self.total = total
        """Bytes in all; may be set once known (a download's Content-Length)."""
        self.done = 0
        self._due = 0.0
        if reporting is not None:
            self._emit(False)

    def update(self, done: int) -> None:
        """``done`` bytes are done; reported when the last event is ``interval`` old."""
        if self._reporting is None:
            return
        self.done = done
        if self._clock() >= self._due:
            self._emit(False)

    def finish(self, done: int | None = None) -> None:
        """The copy ended (``done``: default what the last ``update`` said); reported always,
        once."""
        if self._reporting is None:
            return
        if done is not None:
            self.done = done
        if not self._final:
            self._final = True
            self._emit(True)

    def _emit(self, final: bool) -> None:
        reporting = self._reporting
        assert reporting is not None
        self._due = self._clock() + reporting.interval
        reporting.callback(ProgressEvent(reporting.what, self.step, self.done, self.total, final))


_SILENT = Meter(None, "", None)
