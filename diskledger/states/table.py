"""Transition tables as data.

A lifecycle is written as a tuple of ``Row``s, one per legal operation from one state, each with a
comment in the source saying why it is there. ``expand`` turns the rows into the transitions the
ledger actually records: an operation that touches storage becomes four event types
(``started``: source -> busy-or-source, ``completed``: -> dest, ``failed``: back to source,
``needs-operator``: stays busy, the operation still pending), plus the two claims that change who
may finish it (``taken-over`` and ``compensating``: stay busy); a fact
that touches no storage is one event type. Everything else (``evolve``, the ``transitions``
machine, the Mermaid diagram in docs/states.md) is derived from the expanded table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from diskledger.events import (
    COMPENSATING,
    COMPLETED,
    FAILED,
    LEASE_RENEWED,
    NEEDS_OPERATOR,
    STARTED,
    TAKEN_OVER,
)

__all__ = ["Guard", "Row", "Table", "Transition"]

S = TypeVar("S", bound=StrEnum)
V = TypeVar("V")

Guard = Callable[[Any, Mapping[str, Any]], bool]
"""A pure predicate on (current view, operation parameters)."""


@dataclass(frozen=True, slots=True)
class Row(Generic[S]):
    """One legal operation: ``op`` moves a stream from ``source`` to ``dest``.

    ``fact`` rows touch no storage and are recorded as a single event. ``busy`` is the state a
    stream shows while the operation is in flight (templates show ``fetching``); by default it stays
    in ``source``. ``when`` names guards that must all hold (they choose between rows that share a
    source and an operation, or refuse, e.g. a rollback to a snapshot that does not exist).
    """

    op: str
    source: S
    dest: S
    busy: S | None = None
    when: tuple[str, ...] = ()
    fact: bool = False
    leased: bool = False
    """Ledgers from before members renewed a per-operation lease (``<op>.lease-renewed``); the
    event type stays in the table so that they replay. New writers are covered by their member
    lease instead."""


@dataclass(frozen=True, slots=True)
class Transition(Generic[S]):
    """One recorded event type from one state: what the ledger may append."""

    event_type: str
    source: S
    dest: S
    when: tuple[str, ...]


class Table(Generic[S]):
    """The expanded transitions of one stream kind, indexed for O(1) lookup during replay."""

    def __init__(
        self,
        kind: str,
        states: type[S],
        initial: S,
        rows: Sequence[Row[S]],
        guards: Mapping[str, Guard],
    ) -> None:
        self.kind = kind
        self.states = states
        self.initial = initial
        self.rows = tuple(rows)
        self.guards = dict(guards)
        self.transitions = tuple(t for row in self.rows for t in self._expand(row))
        unknown = {g for t in self.transitions for g in t.when} - self.guards.keys()
        if unknown:
            raise ValueError(f"{kind} table names unknown guards: {sorted(unknown)}")
        index: dict[tuple[S, str], list[Transition[S]]] = {}
        for t in self.transitions:
            candidates = index.setdefault((t.source, t.event_type), [])
            if t not in candidates:
                candidates.append(t)
        self._index = {key: tuple(value) for key, value in index.items()}
        # Guards resolved to functions once: replay selects a transition for every event.
        self._guarded = {
            key: tuple((t, tuple(self.guards[g] for g in t.when)) for t in value)
            for key, value in index.items()
        }
        self.event_types = frozenset(t.event_type for t in self.transitions)

    def _expand(self, row: Row[S]) -> list[Transition[S]]:
        name = f"{self.kind}.{row.op}"
        if row.fact:
            return [Transition(name, row.source, row.dest, row.when)]
        busy = row.busy or row.source
        expanded = [
            Transition(f"{name}.{STARTED}", row.source, busy, row.when),
            Transition(f"{name}.{COMPLETED}", busy, row.dest, row.when),
            Transition(f"{name}.{FAILED}", busy, row.source, ()),
            Transition(f"{name}.{NEEDS_OPERATOR}", busy, busy, ()),
            Transition(f"{name}.{TAKEN_OVER}", busy, busy, ()),
            Transition(f"{name}.{COMPENSATING}", busy, busy, ()),
        ]
        if row.leased:
            expanded.append(Transition(f"{name}.{LEASE_RENEWED}", busy, busy, ()))
        return expanded

    def choices(
        self, state: S, event_type: str
    ) -> tuple[tuple[Transition[S], tuple[Guard, ...]], ...]:
        """The transitions for ``event_type`` from ``state``, in order, each with its guards
        (what ``select`` tries): replay decodes no payload for an event none of them guards."""
        return self._guarded.get((state, event_type), ())

    def candidates(self, state: S, event_type: str) -> tuple[Transition[S], ...]:
        return self._index.get((state, event_type), ())

    def select(
        self, state: S, event_type: str, view: Any, params: Mapping[str, Any]
    ) -> Transition[S] | None:
        """The first transition for ``event_type`` from ``state`` whose guards all hold."""
        for t, guards in self._guarded.get((state, event_type), ()):
            for guard in guards:
                if not guard(view, params):
                    break
            else:
                return t
        return None
