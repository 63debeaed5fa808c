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

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, overload, runtime_checkable

from diskledger.events import NewEvent, RecordedEvent
from diskledger.states import DiskView, MemberView, PendingOperation, TemplateView
from diskledger.states.replay import ReplayRow
from diskledger.store.feed import Heartbeat, Subscription
from diskledger.store.wal import DiscardedTail

__all__ = ["EventStore", "MemberRecord", "PendingEntry", "ReplayRow", "VerifyRow"]

VerifyRow = tuple[int, str, str, str, str | None, int, int, str, str, str, str]
"""An event's stored columns, as ``verify`` checks them: the ``ReplayRow`` (position, stream,
type, payload JSON text, op_id), then version, schema, metadata JSON text, recorded_at,
prev_hash, hash: everything the hash covers, as text, never decoded and encoded again."""


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
    """The ledger: append-only streams of events under optimistic concurrency, one global
    order of positions, and a hash chain over all of it (``open_store`` makes one)."""

    url: str
    """Where the ledger lives, with any password hidden: for messages, never for secrets."""
    discarded_tail: DiscardedTail | None
    """What the database dropped when this store opened it: the frames of a transaction a crash
    cut short (SQLite's write-ahead log; ``diskledger.store.wal``), or None. Never events an
    append had returned. Recovery reports it."""

    def append(
        self,
        stream: str,
        expected_version: int,
        events: Sequence[NewEvent],
        *,
        sync: bool = True,
    ) -> tuple[RecordedEvent, ...]:
        """Append ``events`` to ``stream`` atomically, if the stream is at ``expected_version``.

        Raises ``ConcurrencyError`` when it is not, including when another writer appends the same
        version concurrently (the ``UNIQUE(stream_id, version)`` constraint is the gate, and its
        violation is never swallowed); ``IllegalTransition`` when the lifecycle forbids an event.
        Nothing is recorded when it raises. Returns the events as recorded.

        When it returns the events are on stable storage, unless ``sync`` is false: then they are
        committed and visible to every reader, and survive the process, but a power cut may take
        them until the next append that syncs, which makes them durable with everything before
        it. Whatever a power cut takes is a suffix of the ledger: never an event without those
        before it. (The engine passes ``sync=False`` only for an outcome whose effect recovery
        would find and roll forward; ``Plan.durable_effect``.)
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

    def read_for_replay(
        self, after_position: int = 0, *, batch: int = 10_000
    ) -> Iterator[ReplayRow]:
        """What replay needs of every event with a position above ``after_position``, in ledger
        order: ``(position, stream, type, payload JSON text, op_id)``, the payload as stored
        and the operation id from its own column, so nothing is decoded that the fold does not
        read (``diskledger.states.replay.Replay.run`` folds them)."""
        ...

    def read_for_verify(
        self, after_position: int = 0, *, batch: int = 10_000
    ) -> Iterator[VerifyRow]:
        """Every event with a position above ``after_position``, in ledger order, as its stored
        columns (``VerifyRow``): the hash chain checked over exactly the text it was computed
        over, and the fold fed as by ``read_for_replay``."""
        ...

    @overload
    def subscribe(
        self,
        after_position: int = 0,
        *,
        heartbeat: None = None,
        stop: threading.Event | None = None,
        batch: int = 1000,
    ) -> Subscription[RecordedEvent]: ...

    @overload
    def subscribe(
        self,
        after_position: int = 0,
        *,
        heartbeat: float,
        stop: threading.Event | None = None,
        batch: int = 1000,
    ) -> Subscription[RecordedEvent | Heartbeat]: ...

    def subscribe(
        self,
        after_position: int = 0,
        *,
        heartbeat: float | None = None,
        stop: threading.Event | None = None,
        batch: int = 1000,
    ) -> Subscription[RecordedEvent] | Subscription[RecordedEvent | Heartbeat]:
        """The change feed: every event after ``after_position``, in ledger order, then each new
        one as it is committed, for as long as the subscription runs.

        - It catches up with ``read_all`` and then goes live; waiting is only a wake-up, and every
          read is by position, so events come exactly in ledger order, none skipped.
        - Every event is checked: its position is the last one's plus one, its ``prev_hash`` the
          hash of the event before it (for the first, of the event at ``after_position``, or
          ``GENESIS`` from 0) and its hash matches its content. Anything else raises ``FeedGap``
          (a ``StoreError``) and the feed ends; a consumer never gets past a gap or a break.
          Resuming after a position the ledger does not have is a ``FeedGap`` too.
        - At-least-once: the feed keeps no position for the consumer. A consumer stores the
          position of the last event it acted on with its own effects, and resumes with
          ``subscribe(after_position=that)``: no event before it comes again, none after it is
          missed.
        - ``heartbeat=<seconds>``: after that many seconds without an event, a ``Heartbeat(head)``
          carrying the last position handed out, again each time the interval passes idle, so a
          consumer that skips most events can still checkpoint. Without it, only events come.
        - It ends (the iterator stops) when ``stop`` is set or the ``Subscription`` is closed,
          from any thread; ``close()`` (or leaving its ``with`` block) releases its connection.
        - A lost database connection is re-opened and the feed re-reads from its last position;
          when the database stays out of reach (``diskledger.store.feed.GIVE_UP`` seconds) the
          last ``StoreError`` is raised. ``InvalidInput`` for a negative position, a
          non-positive heartbeat or batch.
        - PostgreSQL: a connection of the subscription's own LISTENs on ``diskledger`` (appends
          notify it on commit); it needs a real session (no transaction pooling). SQLite: a
          connection of its own polls ``PRAGMA data_version`` (a ledger file, not ``:memory:``).
        """
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
