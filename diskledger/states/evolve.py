"""The pure fold: ``evolve(view, event) -> view``. Replay calls it and nothing else.

It never touches storage and never fires a trigger; given the same events it always gives the same
view. An event the table does not allow from the view's state raises ``IllegalTransition``, which
is how the engine validates an event before appending it and how ``verify`` finds a log that does
not follow the lifecycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeVar, overload

from diskledger.errors import IllegalTransition
from diskledger.events import COMPLETED, FAILED, STARTED, Metadata, split_type
from diskledger.states.disk import DISK_TABLE, DiskView, PendingOperation, apply_disk_data
from diskledger.states.table import Table
from diskledger.states.template import TEMPLATE_TABLE, TemplateView, apply_template_data

__all__ = ["EventLike", "evolve", "fold", "params_of"]


class EventLike(Protocol):
    """Both ``NewEvent`` and ``RecordedEvent`` fold: only these three fields matter."""

    @property
    def type(self) -> str: ...
    @property
    def data(self) -> Mapping[str, Any]: ...
    @property
    def metadata(self) -> Metadata: ...


View = TypeVar("View", DiskView, TemplateView)


def params_of(view: DiskView | TemplateView, event: EventLike) -> Mapping[str, Any]:
    """The operation parameters an event is judged by: its own for an intent or a fact, the
    pending intent's for an outcome."""
    _, _, phase = split_type(event.type)
    if phase in (COMPLETED, FAILED) and view.pending is not None:
        return view.pending.params
    params: Mapping[str, Any] = event.data.get("params", event.data)
    return params


@overload
def evolve(view: DiskView, event: EventLike) -> DiskView: ...
@overload
def evolve(view: TemplateView, event: EventLike) -> TemplateView: ...
def evolve(view: DiskView | TemplateView, event: EventLike) -> DiskView | TemplateView:
    kind, op, phase = split_type(event.type)
    stream = view.disk if isinstance(view, DiskView) else view.template
    table: Table[Any] = DISK_TABLE if isinstance(view, DiskView) else TEMPLATE_TABLE
    if kind != table.kind:
        raise IllegalTransition(stream, view.state, event.type, f"not a {table.kind} event")

    pending = view.pending
    op_id = event.metadata.op_id
    if phase is None or phase == STARTED:
        if pending is not None:
            raise IllegalTransition(
                stream, view.state, event.type, f"operation {pending.op} ({pending.op_id}) pending"
            )
    elif pending is None or pending.op != op or pending.op_id != op_id:
        raise IllegalTransition(stream, view.state, event.type, "no such operation pending")

    params = params_of(view, event)
    transition = table.select(view.state, event.type, view, params)
    if transition is None:
        reason = "" if table.candidates(view.state, event.type) else "no such transition"
        raise IllegalTransition(stream, view.state, event.type, reason or "a guard refused it")

    if phase == STARTED:
        pending = PendingOperation(
            op=op,
            op_id=op_id or "",
            params=params,
            artifacts=tuple(event.data.get("artifacts", ())),
            started_version=view.version + 1,
        )
    elif phase is not None:
        pending = None
    version = view.version + 1
    if isinstance(view, DiskView):
        moved = replace(view, state=transition.dest, version=version, pending=pending)
        return apply_disk_data(moved, op, phase, event.data, params)
    fetched = replace(view, state=transition.dest, version=version, pending=pending)
    return apply_template_data(fetched, op, phase, event.data, params)


def fold(view: View, events: Iterable[EventLike]) -> View:
    for event in events:
        view = evolve(view, event)
    return view
