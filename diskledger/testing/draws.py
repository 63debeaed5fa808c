"""What the harness draws from, and how: the disk, snapshot, template and import names, the
limits that keep an example's steps telling (marks per disk, live disks, repeated keys), how
often and how an operation crashes, and the strategies that favour what succeeds (``mostly``)
or weigh choices (``weighted``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from hypothesis import strategies as st

from diskledger import faults
from diskledger.testing.model import SECTOR

__all__ = [
    "CRASH",
    "CRASHES",
    "DIRECT",
    "DISKS",
    "HOW",
    "IMPORTS",
    "IMPORT_SIZE",
    "LIVE_DISKS",
    "MAX_MARKS",
    "POINTS",
    "REPEATS",
    "SNAPSHOTS",
    "TARGETS",
    "TEMPLATES",
    "MiB",
    "mostly",
    "weighted",
]

MiB = 1 << 20
DISKS = ("vm-1/root", "vm-1/data", "vm-2/root", "vm-2/data", "vm-3/root", "vm-3/swap")
TARGETS = {disk: f"sd{chr(ord('a') + i)}" for i, disk in enumerate(DISKS)}
"""The SCSI target each disk is attached at, when the harness has a domain."""
SNAPSHOTS = ("s1", "s2", "s3")
DIRECT = "direct"
"""The short-lived snapshot a direct snapshot copies from (never one of ``SNAPSHOTS``)."""
TEMPLATES = {"base": "raw", "alt": "qcow2"}
IMPORTS = {"import.raw": "raw", "import.qcow2": "qcow2"}
IMPORT_SIZE = 2 * MiB + 3 * SECTOR
MAX_MARKS = 4
"""Distinct offsets marked per disk at most (then writes overwrite): keeps the reads cheap."""
LIVE_DISKS = 3
"""Creates are drawn while fewer disks than this live, deletes while this many do."""
REPEATS = 4
"""Kinds of operation whose idempotency key an example repeats, at most."""
POINTS = faults.POINTS
CRASHES = 4
"""One operation in this many is drawn to crash (Hypothesis favours the first choice, not to
crash: in practice about one in six does)."""
HOW = ("in-process", "in-process", "in-process", "kill a CLI process")
"""How an operation crashes: its thread dies on the spot (``faults.Crash``), or a real
``diskledger`` CLI process running it is SIGKILLed there (named backends only: a factory's
backend crashes in-process); a CLI process costs a Python start, hence one in four."""

T = TypeVar("T")


@st.composite
def mostly(draw: st.DrawFn, good: Sequence[T], others: Sequence[T], odds: int = 8) -> T:
    """One of ``good`` ``odds - 1`` times in ``odds`` (when there is one), else any of
    ``others``; shrinks towards ``good[0]``, which Hypothesis also draws more often than the
    rest: callers put the most telling choice first."""
    if good and draw(st.integers(0, odds - 1)) < odds - 1:
        return draw(st.sampled_from(good))
    return draw(st.sampled_from(others))


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of ``choices`` with the given weights; shrinks towards the first."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


CRASH = weighted(
    (CRASHES - 1, st.none()),
    (1, st.tuples(st.sampled_from(("mid-effect", *POINTS)), st.sampled_from(HOW))),
)
"""Whether and where an operation crashes: mid-effect twice as often as at the other fault
points (half an effect done is where most bugs hide)."""
