"""Which operation this thread is working for, and as which member: for witnesses and logs.

``perform`` and ``settle`` set it around every effect and compensation, so that code below the
engine (a backend proxy that writes a witness line per mutating call, a log filter) can say on
whose behalf a storage call ran without every backend method taking the op id.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["OperationContext", "current", "working_for"]


@dataclass(frozen=True, slots=True)
class OperationContext:
    op_id: str
    op: str
    member: str | None
    """The member that owns the operation (None on a ledger without members)."""
    epoch: int | None
    """That member's epoch: the ledger position of its ``member.joined``."""
    step: str
    """``effect`` (the operation itself), ``compensate`` or ``takeover`` (settling it)."""

    def with_step(self, step: str) -> OperationContext:
        return OperationContext(self.op_id, self.op, self.member, self.epoch, step)


_CURRENT: ContextVar[OperationContext | None] = ContextVar("diskledger_operation", default=None)


def current() -> OperationContext | None:
    return _CURRENT.get()


@contextmanager
def working_for(context: OperationContext) -> Iterator[OperationContext]:
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)
