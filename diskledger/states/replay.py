"""Replay: the views of every stream of a ledger, folded as ``evolve`` folds them, faster.

``evolve`` is the fold of record: one event, one new frozen view. Building a frozen view of a
disk costs more than everything else ``evolve`` does for a typical event, and a replay needs only
the views after the last event. ``Replay`` folds into one mutable draft per stream and builds the
frozen views once, at the end. It takes payloads as the JSON text the ledger stores and decodes
one only when the fold reads it: a fact's, a ``completed`` event's when its operation changes
fields of the view (``COMPLETED_CHANGES``), an intent's when a guard judges it or its operation's
outcome reads its parameters; the rest (an export's intent and outcome, a failure) stay text,
and an intent still pending at the end is decoded then. The operation id comes from the caller
(the ledger's ``op_id`` column), so metadata is never decoded.

The lifecycle is not restated here: the same tables choose the transition with the same guards,
``disk_changes``/``template_changes``/``member_changes`` say what an event changes, and an event
the lifecycle refuses raises the same ``IllegalTransition`` and leaves its stream as it was.
``tests/states/test_replay.py`` checks that both folds agree.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Mapping
from dataclasses import fields
from inspect import isfunction
from operator import attrgetter
from typing import Any, Final

from diskledger.errors import IllegalTransition
from diskledger.events import (
    COMPLETED,
    FAILED,
    STARTED,
    TAKEN_OVER,
    intent_params,
    loads,
    split_type,
)
from diskledger.states.disk import (
    COMPLETED_CHANGES,
    DISK_TABLE,
    DiskView,
    PendingOperation,
    disk_changes,
)
from diskledger.states.member import MEMBER_TABLE, MemberView, member_changes
from diskledger.states.streams import empty_view
from diskledger.states.table import Guard, Table
from diskledger.states.template import TEMPLATE_TABLE, TemplateView, template_changes

__all__ = ["Replay", "ReplayRow"]

AnyView = DiskView | TemplateView | MemberView

ReplayRow = tuple[int, str, str, str, str | None]
"""What replay needs of an event: (position, stream, type, payload JSON text, op_id)."""

Payload = Mapping[str, Any] | str
"""A payload decoded, or its JSON text until something reads it."""

_INTENT: Final = object()
"""A pending operation's owner is the one its intent names."""


def _payload(data: Payload) -> Mapping[str, Any]:
    return loads(data) if isinstance(data, str) else data


def _params_of(data: Payload) -> Mapping[str, Any]:
    """What ``evolve`` judges an intent or a fact by: ``data.get("params", data)``."""
    if isinstance(data, str):
        params: Mapping[str, Any] = intent_params(data)
        return params
    params = data.get("params", data)
    return params


class _Pending:
    """A pending operation while replay runs: its intent's payload stays text until it is read,
    and then only its parameters unless the operation is still pending at the end."""

    __slots__ = ("_params", "data", "op", "op_id", "owner", "started_version")

    def __init__(
        self,
        op: str,
        op_id: str,
        data: Payload,
        started_version: int,
        owner: Any = _INTENT,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.op = op
        self.op_id = op_id
        self.data = data
        self.started_version = started_version
        self.owner = owner
        self._params = params

    def params(self) -> Mapping[str, Any]:
        params = self._params
        if params is None:
            params = self._params = _params_of(self.data)
        return params

    def build(self) -> PendingOperation:
        data = _payload(self.data)
        return PendingOperation(
            self.op,
            self.op_id,
            data.get("params", data),
            tuple(data.get("artifacts", ())),
            self.started_version,
            data.get("owner") if self.owner is _INTENT else self.owner,
        )

    @classmethod
    def of(cls, op: PendingOperation) -> _Pending:
        data = {"params": op.params, "artifacts": op.artifacts}
        return cls(op.op, op.op_id, data, op.started_version, op.owner, op.params)


class _Kind:
    """One view class: its table, its mutable draft class and how to go from one to the other."""

    def __init__(self, view: type[Any], table: Table[Any]) -> None:
        self.view = view
        self.table = table
        self.names = tuple(f.name for f in fields(view))
        self.values = attrgetter(*self.names)
        self.pending_at = self.names.index("pending")
        # The guards and the *_changes functions read a draft as they read a view: same
        # attribute names, same helper methods (DiskView.snapshot, snapshot_names).
        namespace: dict[str, Any] = {"__slots__": self.names}
        for name, value in vars(view).items():
            helper = isfunction(value) or isinstance(value, property)
            if helper and name not in self.names and not name.startswith("__"):
                namespace[name] = value
        self.draft: type[Any] = type(f"_{view.__name__}Draft", (), namespace)

    def draft_of(self, view: AnyView) -> Any:
        draft = object.__new__(self.draft)
        for name, value in zip(self.names, self.values(view), strict=True):
            setattr(draft, name, value)
        if view.pending is not None:
            draft.pending = _Pending.of(view.pending)
        return draft

    def view_of(self, draft: Any) -> AnyView:
        values = list(self.values(draft))
        pending = values[self.pending_at]
        if pending is not None:
            values[self.pending_at] = pending.build()
        view: AnyView = self.view(*values)
        return view


_KINDS = {
    view: _Kind(view, table)
    for view, table in (
        (DiskView, DISK_TABLE),
        (TemplateView, TEMPLATE_TABLE),
        (MemberView, MEMBER_TABLE),
    )
}
_OF_DRAFT = {kind.draft: kind for kind in _KINDS.values()}


class _Type:
    """What replay knows of an event type before it sees an event of it."""

    __slots__ = (
        "choices",
        "closes",
        "draft",
        "kind",
        "needs_data",
        "op",
        "opens",
        "phase",
        "simple",
        "table",
        "takes_over",
    )

    def __init__(self, event_type: str) -> None:
        self.kind, self.op, self.phase = split_type(event_type)
        phase = self.phase
        self.opens = phase is None or phase == STARTED
        """A fact or an intent: nothing may be pending, judged by its own params."""
        self.closes = phase in (COMPLETED, FAILED)
        self.takes_over = phase == TAKEN_OVER
        kind = next((k for k in _KINDS.values() if k.table.kind == self.kind), None)
        self.table: Table[Any] | None = None if kind is None else kind.table
        self.draft: type[Any] | None = None if kind is None else kind.draft
        # The transition from each state when it is the only one and no guard judges it.
        self.simple: dict[Any, Any] = {}
        # Every transition from each state, with its guards, for the others (Table.choices).
        self.choices: dict[Any, tuple[tuple[Any, tuple[Guard, ...]], ...]] = {}
        if self.table is not None:
            for state in self.table.states:
                choices = self.table.choices(state, event_type)
                if len(choices) == 1 and not choices[0][1]:
                    self.simple[state] = choices[0][0]
                self.choices[state] = choices
        if self.kind == DISK_TABLE.kind:
            # disk_changes reads the payload of facts and of these outcomes only.
            self.needs_data = phase is None or (phase == COMPLETED and self.op in COMPLETED_CHANGES)
        else:
            self.needs_data = True  # templates and members: few events, decoded as they come


class Replay:
    """Fold events into the view of every stream they touch.

    ``Replay(views)`` starts from views already known (``{stream: view}``, e.g. the read models
    at a position), ``apply`` folds one event, ``run`` many, ``views()`` builds the frozen views.
    ``views()`` equals, stream by stream, the ``evolve`` fold of the same events from the same
    views.
    """

    def __init__(self, views: Mapping[str, AnyView] | None = None) -> None:
        self._drafts: dict[str, Any] = {}
        self._types: dict[str, _Type] = {}
        for stream, view in (views or {}).items():
            self._drafts[stream] = _KINDS[type(view)].draft_of(view)

    def __len__(self) -> int:
        return len(self._drafts)

    def apply(self, stream: str, event_type: str, data: Payload, op_id: str | None) -> None:
        """Fold one event of ``stream`` (``data``: its payload, decoded or as JSON text).

        Raises ``IllegalTransition`` as ``evolve`` does, and the stream stays as it was."""
        self._fold(((0, stream, event_type, data, op_id),))

    def run(self, rows: Iterable[tuple[int, str, str, Payload, str | None]]) -> int:
        """Fold every row of ``rows`` (``EventStore.read_for_replay``); returns the position of
        the last one (0 when there was none). An event the lifecycle refuses raises
        ``IllegalTransition``: the events before it are folded, its stream stays as it was.

        The cycle collector is paused meanwhile: a replay makes no reference cycles, and the
        collections its allocations would trigger, each scanning every view built so far, cost
        a tenth of a million-event replay."""
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._fold(rows)
        finally:
            if paused:
                gc.enable()

    def _fold(  # noqa: PLR0915 (one loop: replay runs it for every event)
        self, rows: Iterable[tuple[int, str, str, Payload, str | None]]
    ) -> int:
        drafts, types = self._drafts, self._types
        draft_of, type_of = drafts.get, types.get
        position = 0
        for position, stream, event_type, payload, op_id in rows:  # noqa: B007
            data = payload
            draft: Any = draft_of(stream)
            new = draft is None
            if new:  # kept once its first event is folded, as a fold of views would keep it
                empty = empty_view(stream)
                draft = _KINDS[type(empty)].draft_of(empty)
            known = type_of(event_type)
            if known is None:
                known = types[event_type] = _Type(event_type)
            if known.draft is not type(draft):
                kind = _OF_DRAFT[type(draft)].table.kind
                raise _illegal(draft, event_type, f"not a {kind} event")

            op, phase, opens = known.op, known.phase, known.opens
            pending = draft.pending
            params: Mapping[str, Any] | None = None
            if opens:
                if pending is not None:
                    raise _illegal(
                        draft, event_type, f"operation {pending.op} ({pending.op_id}) pending"
                    )
            elif pending is None or pending.op != op or pending.op_id != op_id:
                raise _illegal(draft, event_type, "no such operation pending")

            transition = known.simple.get(draft.state)
            if transition is None:
                if not opens:
                    params = pending.params()
                elif isinstance(data, str):
                    params = intent_params(data)
                else:
                    params = data.get("params", data)
                choices = known.choices.get(draft.state, ())
                for candidate, guards in choices:
                    for guard in guards:
                        if not guard(draft, params):
                            break
                    else:
                        transition = candidate
                        break
                if transition is None:
                    reason = "a guard refused it" if choices else "no such transition"
                    raise _illegal(draft, event_type, reason)

            changes: Mapping[str, Any] = _NO_CHANGES
            if known.needs_data:
                if isinstance(data, str):
                    data = loads(data)
                if params is None:
                    params = data.get("params", data) if opens else pending.params()
                table = known.table
                if table is DISK_TABLE:
                    changes = disk_changes(draft, op, phase, data, params)
                elif table is MEMBER_TABLE:
                    changes = member_changes(draft, op, data)
                else:
                    changes = template_changes(draft, op, phase, data, params)

            if known.closes:
                pending = None  # needs-operator and lease-renewed leave the operation pending
            elif opens:
                if phase is not None:  # an intent
                    pending = _Pending(op, op_id or "", data, draft.version + 1, params=params)
            elif known.takes_over:
                data = _payload(data)
                owner = {"member": data["by"], "epoch": data["by_epoch"]}
                pending = _Pending(
                    pending.op, pending.op_id, pending.data, pending.started_version, owner, params
                )

            # Nothing has changed yet; from here on nothing raises.
            draft.state = transition.dest
            draft.version += 1
            draft.pending = pending
            if changes:
                for name, value in changes.items():
                    setattr(draft, name, value)
            if new:
                drafts[stream] = draft
        return position

    def view(self, stream: str) -> AnyView | None:
        """The view of one stream after the events folded so far (None: none of its events)."""
        draft = self._drafts.get(stream)
        return None if draft is None else _OF_DRAFT[type(draft)].view_of(draft)

    def views(self) -> dict[str, AnyView]:
        """The view of every stream after the events folded so far."""
        return {
            stream: _OF_DRAFT[type(draft)].view_of(draft) for stream, draft in self._drafts.items()
        }


_NO_CHANGES: Mapping[str, Any] = {}


def _illegal(draft: Any, event_type: str, reason: str) -> IllegalTransition:
    if isinstance(draft, _KINDS[DiskView].draft):
        stream = draft.disk
    elif isinstance(draft, _KINDS[MemberView].draft):
        stream = draft.member
    else:
        stream = draft.template
    return IllegalTransition(stream, draft.state, event_type, reason)
