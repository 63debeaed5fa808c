"""The invariants the harness checks, by name, and the error that names a violated one
(``docs/testing.md`` explains each)."""

from __future__ import annotations

__all__ = [
    "AGREE",
    "ATTACHED",
    "CHAIN",
    "COPIES",
    "DATA",
    "EXACT_SIZE",
    "FORMAT",
    "GAPLESS",
    "INVARIANTS",
    "LEGAL",
    "NEVER_SHRINKS",
    "RECOVERED",
    "REFUSED",
    "REPEATED",
    "STORAGE",
    "USERS",
    "InvariantViolation",
]

CHAIN = "the hash chain holds and replay gives the read models"
GAPLESS = "stream versions have no gaps"
LEGAL = "every recorded transition is legal"
STORAGE = "storage holds exactly what the ledger names"
NEVER_SHRINKS = "sizes never shrink"
FORMAT = "a disk's format never changes"
USERS = "template users are the disks made from them"
AGREE = "the model and the engine agree"
REFUSED = "a refused request changes nothing"
REPEATED = "a repeated idempotency key changes nothing"
RECOVERED = "after recover nothing is pending"
EXACT_SIZE = "a disk is the size it was asked to be"
DATA = "a disk holds the bytes the model says"
COPIES = "an export holds the bytes of the disk it copied"
ATTACHED = "the domain has exactly the disks attached to it"

INVARIANTS = (
    CHAIN,
    GAPLESS,
    LEGAL,
    STORAGE,
    NEVER_SHRINKS,
    FORMAT,
    USERS,
    AGREE,
    REFUSED,
    REPEATED,
    RECOVERED,
    EXACT_SIZE,
    DATA,
    COPIES,
    ATTACHED,
)


class InvariantViolation(AssertionError):
    """An invariant of ``INVARIANTS`` does not hold; ``invariant`` names it."""

    def __init__(self, invariant: str, details: str) -> None:
        super().__init__(f"invariant violated: {invariant}: {details}")
        self.invariant = invariant
        self.details = details
