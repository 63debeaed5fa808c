"""The ledger contract. Every implementation passes one conformance suite (tests/store/).

An ``EventStore`` holds streams of events. It is append-only: events are never updated or removed
(the database refuses it too), each stream's versions run 1, 2, 3... without gaps, and every event
carries a hash chained to the one before it in the ledger's global order.

Alongside the log it keeps read models — the current view of every disk and template and an index
of operations whose intent has no outcome yet — updated in the same transaction as each append by
folding the new events with ``diskledger.states.evolve``. An append whose events the lifecycle does
not allow raises ``IllegalTransition`` and records nothing.

Members (``member:<id>`` streams) have a lease besides their events: ``member.joined`` starts it,
``renew`` extends it, and only the database's clock judges it. ``member.fencing`` with
``reason: lease-expired`` is refused (``Conflict``) unless that lease has expired, checked in the
append's own transaction, so a renewal and a fence can never both win.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from diskledger.events import NewEvent, RecordedEvent
from diskledger.states import DiskView, MemberView, PendingOperation, TemplateView

__all__ = ["EventStore", "MemberRecord", "PendingEntry"]


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """One row of the pending index: an operation with an intent and no outcome."""

    stream: str
    operation: PendingOperation
    started_position: int
    started_at: str

    @property
    def owner(self) -> str | None:
        """The member that may record its outcome (None on a ledger without members)."""
        return self.operation.owner_member


@dataclass(frozen=True, slots=True)
class MemberRecord:
    """A member as the ``members`` read model holds it, with its lease judged by the database.

    ``expires_in``: seconds until its lease runs out by the database's clock (negative once it
    has); ``renewals`` counts successful renewals, so that a taker can see them stop on its own
    clock too, whatever the database's clock does.
    """

    view: MemberView
    epoch: int | None
    expires_in: float | None
    renewals: int

    @property
    def member(self) -> str:
        return self.view.member

    @property
    def lapsed(self) -> bool:
        return self.expires_in is not None and self.expires_in < 0


@runtime_checkable
class EventStore(Protocol):
    url: str
    """Where the ledger lives, with any password hidden: for messages, never for secrets."""

    def append(
        self, stream: str, expected_version: int, events: Sequence[NewEvent]
    ) -> tuple[RecordedEvent, ...]:
        """Append ``events`` to ``stream`` atomically, if the stream is at ``expected_version``.

        Raises ``ConcurrencyError`` when it is not, including when another writer appends the same
        version concurrently (the ``UNIQUE(stream_id, version)`` constraint is the gate, and its
        violation is never swallowed); ``IllegalTransition`` when the lifecycle forbids an event.
        Nothing is recorded when it raises. Returns the events as recorded.
        """
        ...

    def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]:
        """The events of one stream with a version above ``after_version``, in order."""
        ...

    def read_operation(self, op_id: str) -> list[RecordedEvent]:
        """The events of one operation (its intent, outcome and any facts it recorded), in order."""
        ...

    def read_all(self, after_position: int = 0, *, batch: int = 1000) -> Iterator[RecordedEvent]:
        """Every event with a position above ``after_position``, in ledger order."""
        ...

    def head(self) -> int:
        """The position of the last event (0 for an empty ledger)."""
        ...

    def stream_version(self, stream: str) -> int:
        """The version of the last event in ``stream`` (0 when it has none)."""
        ...

    def disk(self, stream: str) -> DiskView | None:
        """The stored view of a disk stream, or None when it has no events."""
        ...

    def disks(self) -> list[DiskView]:
        """Views of every disk stream, live or deleted, ordered by name."""
        ...

    def template(self, stream: str) -> TemplateView | None: ...

    def templates(self) -> list[TemplateView]: ...

    def template_users(self, template: str) -> list[str]:
        """Disks (``instance/name``) whose view names ``template``: the reference count."""
        ...

    def pending(self) -> list[PendingEntry]:
        """Operations with an intent and no outcome, oldest first, read from the index."""
        ...

    def renew(self, member_stream: str) -> bool:
        """Extend a live member's lease by its ``lease_ttl`` from the database's ``now``.

        False (and nothing changed) when the lease had already run out or the member is no
        longer ``live`` (a taker began fencing it): the caller must fence itself. Renewals are
        not events; they change only the ``members`` read model.
        """
        ...

    def members(self) -> list[MemberRecord]:
        """Every member ever joined, by epoch."""
        ...

    def member(self, member_stream: str) -> MemberRecord | None: ...

    def close(self) -> None: ...
