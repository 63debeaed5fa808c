"""The witness log: what each worker process says it did to storage, and when.

Every worker appends fsynced JSON lines to its host's file (``DISKLEDGER_WITNESS``). A mutating
backend call is two lines with the same ``t_start``: one before the call (``t_end`` and ``result``
null) and one after it::

    {"op_id": "op-7", "op": "create", "member": "h1/5f0c…", "epoch": 12, "step": "effect",
     "call": "create", "t_start": 1234.5, "t_end": 1234.9, "result": "ok",
     "host": "h1", "pid": 7}

* ``step``: ``effect`` (the owner's call), ``compensate`` (the owner undoing), ``takeover`` (a
  taker's call while settling an operation it took over);
* ``result``: ``ok``, ``fenced`` (Ceph refused a blocklisted client: ``ESHUTDOWN``, or the engine
  refused because it lost its lease), ``error:<ExceptionClass>``; null on the line before;
* times: ``time.clock_gettime(time.CLOCK_MONOTONIC)`` of the writing process. Unfaked (the rig
  sets ``DONT_FAKE_MONOTONIC=1``) and one clock for all namespaces, so lines of all hosts order.

Two records mark the ledger side of a takeover, written by the taker (``step`` ``takeover``):

* ``call: "claim"``: ``t_start`` before the ``<kind>.<op>.taken-over`` append, ``t_end`` when it
  returned (committed). The checker takes ``t_end`` as the moment the claim committed;
* ``call: "outcome"``: the same around the append of the outcome (completed/failed) it settles
  with; its ``t_end`` ends the takeover for the latency check.

Extra keys are allowed and kept in ``WitnessCall.extra`` (the stand-in workers add ``wall``, their
``time.time()``). A process killed mid-call leaves only the first line (``t_end``/``result``
None: outcome unknown), and perhaps a torn last line, which the reader skips.

``WitnessWriter`` is the reference writer for the rig's self-tests; the engine side writes the
same format.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CLAIM",
    "OUTCOME",
    "Step",
    "WitnessCall",
    "WitnessWriter",
    "default_fenced",
    "read_witness",
]

Step = Literal["effect", "compensate", "takeover"]
CLAIM = "claim"
OUTCOME = "outcome"
_KNOWN = frozenset(
    {"op_id", "op", "member", "epoch", "step", "call", "t_start", "t_end", "result", "host", "pid"}
)


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class WitnessCall:
    """One call, its two lines merged (``t_end``/``result`` None: never finished)."""

    op_id: str
    op: str
    member: str
    epoch: int
    step: str
    call: str
    t_start: float
    t_end: float | None
    result: str | None
    host: str
    pid: int
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    @property
    def mutating(self) -> bool:
        """A backend call (not one of the ledger markers ``claim``/``outcome``)."""
        return self.call not in (CLAIM, OUTCOME)

    def describe(self) -> str:
        end = "…" if self.t_end is None else f"{self.t_end:.3f}"
        return (
            f"{self.host} pid {self.pid} {self.member} (epoch {self.epoch}) {self.step} "
            f"{self.call} of {self.op} {self.op_id} [{self.t_start:.3f}, {end}] -> {self.result}"
        )


def default_fenced(exc: BaseException) -> bool:
    """Whether ``exc`` says "you are fenced": ESHUTDOWN (a blocklisted Ceph client) anywhere in
    its chain, or an exception class named like Fenced/Blocklisted/LeaseLost."""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "errno", None) == errno.ESHUTDOWN:
            return True
        name = type(seen).__name__.lower()
        if any(word in name for word in ("fenced", "blocklist", "blacklist", "leaselost")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class WitnessWriter:
    """Appends witness lines for one worker (member, epoch) to ``path``; thread-safe.

    Each line is one ``write`` on an ``O_APPEND`` descriptor followed by ``fsync``, so lines of
    several processes of a host never interleave and survive the host's death.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        host: str,
        member: str,
        epoch: int,
        fenced: Callable[[BaseException], bool] = default_fenced,
        extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.host = host
        self.member = member
        self.epoch = epoch
        self._fenced = fenced
        self._extra = extra
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> WitnessWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(
        self,
        op_id: str,
        op: str,
        step: Step,
        call: str,
        t_start: float,
        t_end: float | None,
        result: str | None,
        **extra: Any,
    ) -> None:
        """Write one line."""
        line: dict[str, Any] = {
            "op_id": op_id,
            "op": op,
            "member": self.member,
            "epoch": self.epoch,
            "step": step,
            "call": call,
            "t_start": t_start,
            "t_end": t_end,
            "result": result,
            "host": self.host,
            "pid": os.getpid(),
        }
        if self._extra is not None:
            line.update(self._extra())
        line.update(extra)
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        with self._lock:
            os.write(self._fd, data)
            os.fsync(self._fd)

    @contextlib.contextmanager
    def call(self, op_id: str, op: str, step: Step, call: str) -> Iterator[None]:
        """Witness the call made in the block: a line before, a line after with its result
        (``ok``, ``fenced`` or ``error:<Class>``; the exception propagates)."""
        t_start = monotonic()
        self.record(op_id, op, step, call, t_start, None, None)
        try:
            yield
        except BaseException as exc:
            result = "fenced" if self._fenced(exc) else f"error:{type(exc).__name__}"
            self.record(op_id, op, step, call, t_start, monotonic(), result)
            raise
        self.record(op_id, op, step, call, t_start, monotonic(), "ok")

    @contextlib.contextmanager
    def claim(self, op_id: str, op: str) -> Iterator[None]:
        """Around the ``taken-over`` append: its ``t_end`` is when the claim committed."""
        with self.call(op_id, op, "takeover", CLAIM):
            yield

    @contextlib.contextmanager
    def outcome(self, op_id: str, op: str) -> Iterator[None]:
        """Around the taker's outcome append."""
        with self.call(op_id, op, "takeover", OUTCOME):
            yield


def _parse(line: str) -> dict[str, Any] | None:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError:
        return None  # a line torn by a kill
    if not isinstance(raw, dict) or not _KNOWN - {"t_end", "result"} <= raw.keys():
        return None
    return raw


def read_witness(paths: Iterable[Path | str]) -> list[WitnessCall]:
    """Every call in ``paths``, begin and end lines merged, ordered by ``t_start``.

    A call is keyed by (host, pid, op_id, step, call, t_start); its end line supplies
    ``t_end``/``result``. An end line without its begin line counts on its own.
    """
    calls: dict[tuple[Any, ...], WitnessCall] = {}
    for path in paths:
        with Path(path).open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                raw = _parse(line)
                if raw is None:
                    continue
                key = (
                    raw["host"],
                    raw["pid"],
                    raw["op_id"],
                    raw["step"],
                    raw["call"],
                    raw["t_start"],
                )
                previous = calls.get(key)
                if previous is not None and previous.t_end is not None and raw.get("t_end") is None:
                    continue  # a begin line after its end (cannot happen with one writer)
                calls[key] = WitnessCall(
                    op_id=str(raw["op_id"]),
                    op=str(raw["op"]),
                    member=str(raw["member"]),
                    epoch=int(raw["epoch"]),
                    step=str(raw["step"]),
                    call=str(raw["call"]),
                    t_start=float(raw["t_start"]),
                    t_end=None if raw.get("t_end") is None else float(raw["t_end"]),
                    result=raw.get("result"),
                    host=str(raw["host"]),
                    pid=int(raw["pid"]),
                    extra={k: v for k, v in raw.items() if k not in _KNOWN},
                )
    return sorted(calls.values(), key=lambda c: (c.t_start, c.host, c.pid))
