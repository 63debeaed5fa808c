"""What the harness did, counted across runs (``STATS``), and which of the violations it raised
a test expected.

A test that plants a bug on purpose runs the harness inside ``planted_bug()``: the violations
raised there are the harness doing its job (counted as ``expected_violations``, and the run as
a planted bug caught when it ends in an ``InvariantViolation``); every other violation is
unexpected (``violations``). A passing run's line then reads ``..., 0 unexpected violations;
12 of 12 planted bugs caught``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from diskledger.testing.invariants import InvariantViolation

__all__ = ["STATS", "HarnessStats", "planted_bug", "violation"]


@dataclass
class HarnessStats:
    """What the harness did: across runs (``STATS``), or in one example (the machine's own)."""

    examples: int = 0
    steps: int = 0
    operations: int = 0
    """Steps that ran an operation the model expected to succeed (crashed ones included)."""
    refusals: int = 0
    """Steps that made a request the model expected to be refused."""
    writes: int = 0
    """Guest data written into a disk through the storage, not the engine (by the
    ``write_guest_data`` steps, and by the guest carrying on after a snapshot)."""
    crashes: int = 0
    subprocess_kills: int = 0
    recoveries: int = 0
    violations: int = 0
    """Violations raised outside ``planted_bug()``: none is expected (each raise counts,
    Hypothesis's replays of a failing example too)."""
    expected_violations: int = 0
    """Violations raised inside ``planted_bug()`` (each raise: Hypothesis runs a failing
    example again before it reports it, so a caught bug raises at least twice)."""
    planted: int = 0
    """Runs inside ``planted_bug()``: a harness shaking a backend with a bug planted on purpose."""
    caught: int = 0
    """Those of them that ended in an ``InvariantViolation``."""

    def line(self) -> str:
        counts = (
            f"{self.examples} examples, {self.steps} steps ({self.operations} operations, "
            f"{self.refusals} refused requests, {self.writes} guest writes), {self.crashes} "
            f"crashes injected ({self.subprocess_kills} by SIGKILL of a CLI process), "
            f"{self.recoveries} recoveries, {self.violations} unexpected violations"
        )
        if self.planted:
            counts += f"; {self.caught} of {self.planted} planted bugs caught"
        return counts


STATS = HarnessStats()


class _Planted:
    open = 0
    """How many ``planted_bug()`` blocks are open."""


def violation(invariant: str, details: str) -> InvariantViolation:
    """The error for a violated invariant, counted as expected inside ``planted_bug()`` and as
    unexpected elsewhere."""
    if _Planted.open:
        STATS.expected_violations += 1
    else:
        STATS.violations += 1
    return InvariantViolation(invariant, details)


@contextmanager
def planted_bug() -> Iterator[None]:
    """Around a harness run on a backend (or store) with a bug planted on purpose: the
    violations it raises are expected, and the run counts as a planted bug caught when it ends
    in an ``InvariantViolation`` (which goes on up, to the test that asserts it)."""
    STATS.planted += 1
    _Planted.open += 1
    try:
        yield
    except InvariantViolation:
        STATS.caught += 1
        raise
    finally:
        _Planted.open -= 1
