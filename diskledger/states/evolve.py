"""The pure fold: ``evolve(view, event) -> view``. Replay calls it and nothing else.

It never touches storage and never fires a trigger; given the same events it always gives the same
view. An event the table does not allow from the view's state raises ``IllegalTransition``, which
is how the engine validates an event before appending it and how ``verify`` finds a log that does
not follow the lifecycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from functools import lru_cache
from operator import attrgetter
from typing import Any, Protocol, TypeVar, overload

from diskledger.errors import IllegalTransition
from diskledger.events import COMPLETED, FAILED, STARTED, TAKEN_OVER, Metadata, split_type
from diskledger.states.disk import DISK_TABLE, DiskView, PendingOperation, disk_changes
from diskledger.states.member import MEMBER_TABLE, MemberView, member_changes
from diskledger.states.table import Table
from diskledger.states.template import TEMPLATE_TABLE, TemplateView, template_changes

__all__ = ["EventLike", "evolve", "fold", "params_of"]


class EventLike(Protocol):
    """Both ``NewEvent`` and ``RecordedEvent`` fold: only these three fields matter."""

    @property
    def type(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...
    @property
    def metadata(self) -> Metadata: ...


View = TypeVar("View", DiskView, TemplateView, MemberView)
AnyView = DiskView | TemplateView | MemberView

_TABLES: dict[type, Table[Any]] = {
    DiskView: DISK_TABLE,
    TemplateView: TEMPLATE_TABLE,
    MemberView: MEMBER_TABLE,
}


_split = lru_cache(maxsize=256)(split_type)
"""Event types are few and replay sees each millions of times."""


def params_of(view: AnyView, event: EventLike) -> Mapping[str, Any]:
    """The operation parameters an event is judged by: its own for an intent or a fact, the
    pending intent's for an outcome."""
    _, _, phase = _split(event.type)
    if phase in (COMPLETED, FAILED) and view.pending is not None:
        return view.pending.params
    params: Mapping[str, Any] = event.data.get("params", event.data)
    return params


@overload
def evolve(view: DiskView, event: EventLike) -> DiskView: ...
@overload
def evolve(view: TemplateView, event: EventLike) -> TemplateView: ...
@overload
def evolve(view: MemberView, event: EventLike) -> MemberView: ...
def evolve(view: AnyView, event: EventLike) -> AnyView:
    table = _TABLES[type(view)]
    kind, op, phase = _split(event.type)
    if kind != table.kind:
        raise _illegal(view, event, f"not a {table.kind} event")

    pending = view.pending
    if phase is None or phase == STARTED:
        if pending is not None:
            raise _illegal(view, event, f"operation {pending.op} ({pending.op_id}) pending")
        params: Mapping[str, Any] = event.data.get("params", event.data)
    elif pending is None or pending.op != op or pending.op_id != event.metadata.op_id:
        raise _illegal(view, event, "no such operation pending")
    else:
        params = pending.params

    transition = table.select(view.state, event.type, view, params)
    if transition is None:
        known = table.candidates(view.state, event.type)
        raise _illegal(view, event, "a guard refused it" if known else "no such transition")

    if phase == STARTED:
        pending = PendingOperation(
            op=op,
            op_id=event.metadata.op_id or "",
            params=params,
            artifacts=tuple(event.data.get("artifacts", ())),
            started_version=view.version + 1,
            owner=event.data.get("owner"),
        )
    elif phase == TAKEN_OVER:
        assert pending is not None
        owner = {"member": event.data["by"], "epoch": event.data["by_epoch"]}
        pending = PendingOperation(
            pending.op,
            pending.op_id,
            pending.params,
            pending.artifacts,
            pending.started_version,
            owner,
        )
    elif phase in (COMPLETED, FAILED):
        pending = None  # needs-operator and lease-renewed leave the operation pending
    changes: dict[str, Any] = {
        "state": transition.dest,
        "version": view.version + 1,
        "pending": pending,
    }
    if isinstance(view, DiskView):
        changes.update(disk_changes(view, op, phase, event.data, params))
    elif isinstance(view, MemberView):
        changes.update(member_changes(view, op, event.data))
    else:
        changes.update(template_changes(view, op, phase, event.data, params))
    return _rebuild(view, changes)


def _illegal(view: AnyView, event: EventLike, reason: str) -> IllegalTransition:
    if isinstance(view, DiskView):
        stream = view.disk
    elif isinstance(view, MemberView):
        stream = view.member
    else:
        stream = view.template
    return IllegalTransition(stream, view.state, event.type, reason)


# Replay folds every event of the ledger through here: one attrgetter call and one constructor
# per event is several times cheaper than dataclasses.replace.
_GETTERS = {cls: attrgetter(*(f.name for f in fields(cls))) for cls in _TABLES}
_INDEXES = {cls: {f.name: i for i, f in enumerate(fields(cls))} for cls in _TABLES}


def _rebuild(view: AnyView, changes: Mapping[str, Any]) -> AnyView:
    cls = type(view)
    values = list(_GETTERS[cls](view))
    index = _INDEXES[cls]
    for name, value in changes.items():
        values[index[name]] = value
    return cls(*values)


def fold(view: View, events: Iterable[EventLike]) -> View:
    for event in events:
        view = evolve(view, event)
    return view
