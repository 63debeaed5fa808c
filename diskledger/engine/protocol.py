"""The operation protocol, in one place: intent, effect, outcome.

Every operation plans (``Plan``: its stream and view, the backend, the intent's params, the
artifacts it may create, the effect) and hands the plan to ``perform``, which

1. validates the intent (and any prelude facts) against the lifecycle table, refuses when a final
   artifact it names exists unowned, and appends ``<op>.started`` with the stream's version;
2. runs the effect;
3. appends ``<op>.completed`` with what the effect observed, or, when it raised, claims the
   operation (``<op>.compensating``) and settles it through the same compensation crash
   recovery runs (``settle``).

On a shared ledger the intent names its ``owner`` (this member and its epoch). Every later
append is a compare-and-swap on the stream's version, so once another member has taken the
operation over (``<op>.taken-over``), the outcome and the compensating claim both fail: the
process that lost ownership raises ``OwnershipLost`` and records or removes nothing more.

Before planning, an operation with an idempotency key asks ``repeated`` for an earlier outcome of
the same request. The lookups every operation starts with (``disk_view``, ``live_disk``) are here
too, so that each operation's module holds only what is its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from diskledger import faults
from diskledger.backends import Artifact, Backend, Capability, Fences
from diskledger.context import OperationContext, working_for
from diskledger.engine.attachments import refuse_while_attached
from diskledger.engine.inputs import check_disk, check_name, check_snapshot
from diskledger.engine.liveness import abandon
from diskledger.engine.operations.base import Operation
from diskledger.engine.runtime import Runtime
from diskledger.engine.settle import settle
from diskledger.errors import (
    ConcurrencyError,
    Conflict,
    DiskLedgerError,
    DiskNotFound,
    IllegalTransition,
    OperationPending,
    OwnershipLost,
    SnapshotNotFound,
)
from diskledger.events import (
    COMPENSATING,
    COMPLETED,
    FAILED,
    STARTED,
    TAKEN_OVER,
    NewEvent,
    RecordedEvent,
    operation_event,
    split_type,
)
from diskledger.states import (
    DISK_TABLE,
    TEMPLATE_TABLE,
    DiskState,
    DiskView,
    TemplateView,
    evolve,
    fold,
    params_of,
)
from diskledger.states.machine import Validator
from diskledger.states.streams import DISK, disk_stream, empty_view

__all__ = [
    "Plan",
    "disk_after",
    "disk_view",
    "existing_snapshot",
    "live_disk",
    "new_op_id",
    "on_live_disk",
    "ownership_lost",
    "perform",
    "refuse_pending",
    "repeated",
    "template_after",
]

View = TypeVar("View", DiskView, TemplateView)

_VALIDATORS: Mapping[str, Validator[Any]] = {
    DISK: Validator(DISK_TABLE),
    "template": Validator(TEMPLATE_TABLE),
}


@dataclass(frozen=True, slots=True)
class Plan(Generic[View]):
    """One operation, planned: everything its intent records and the effect to run."""

    stream: str
    view: View
    backend: Backend
    op_id: str
    params: Mapping[str, Any]
    effect: Callable[[], dict[str, Any]]
    """Touches storage; returns what the ``completed`` event records."""
    artifacts: Sequence[Artifact] = ()
    prelude: Sequence[NewEvent] = ()
    """Facts appended with the intent, in the same transaction (``disk.template-bound``)."""
    durable_effect: bool = False
    """The effect is one recovery rolls forward once it finds it, and on a backend with
    ``Capability.DURABLE_EFFECTS`` it is on stable storage when it returns: the outcome then
    commits without waiting for the ledger's sync (``EventStore.append(sync=False)``). Not for
    an effect that runs through a guest (qemu's flushes follow the guest's cache mode), nor for
    one recovery would run again (a rollback run again would undo what the guest wrote since)."""


def perform(
    rt: Runtime,
    operation: Operation,
    plan: Plan[View],
    request: Mapping[str, Any] | None = None,
) -> tuple[View, dict[str, Any]]:
    """Intent, effect, outcome. Returns the view after the outcome and the observed data."""
    kind, op, view, stream = operation.kind, operation.name, plan.view, plan.stream
    meta = rt.metadata(plan.op_id)
    backend = plan.backend
    # Who the writer is to shared storage, for recovery to fence it should it die.
    writer = {"writer": backend.writer()} if isinstance(backend, Fences) else {}
    owner = rt.owner()
    intent = operation_event(
        kind,
        op,
        STARTED,
        {
            "params": {**plan.params, "backend": backend.name, **writer},
            "artifacts": [a.to_json() for a in plan.artifacts],
            "request": dict(request or {}),
            **({"owner": owner} if owner is not None else {}),
        },
        meta,
    )
    _validate(kind, stream, view, [*plan.prelude, intent])
    _refuse_unowned(backend, stream, plan.artifacts)
    view = fold(view, rt.store.append(stream, view.version, [*plan.prelude, intent]))
    context = OperationContext(
        plan.op_id,
        op,
        None if owner is None else str(owner["member"]),
        None if owner is None else int(str(owner["epoch"])),
        "effect",
    )
    try:
        with working_for(context):
            faults.reach("after-intent", op)
            observed = plan.effect()
            faults.reach("after-effect", op)
    except faults.Crash:
        abandon(plan.op_id)  # died on the spot: no compensation, recovery decides
        raise
    except BaseException as exc:
        # On a shared ledger the owner claims its operation before removing anything (another
        # member may have taken it over); alone on its ledger, nobody else could have.
        claim = (
            operation_event(kind, op, COMPENSATING, {"error": str(exc)}, meta)
            if owner is not None
            else None
        )
        try:
            # The same probe, decision table and compensation a crash recovery runs, once the
            # claim shows the operation is still ours.
            with working_for(context.with_step("compensate")):
                settle(rt, operation, stream, view, meta, error=exc, claim=claim)
        except DiskLedgerError as ledger_exc:
            # The intent stays pending. Should this process live on (an agent), its own next
            # recovery pass resolves it: nobody else may while it holds its lease.
            if not isinstance(ledger_exc, OwnershipLost):
                abandon(plan.op_id)
            exc.add_note(f"recording the outcome also failed: {ledger_exc}")
        raise
    outcome = operation_event(kind, op, COMPLETED, observed, meta)
    # Only the intent must be durable before the effect. An outcome whose effect is already on
    # stable storage need not wait for its own sync: the next synced append covers it, and a
    # power cut before that leaves the intent, which recovery rolls forward.
    sync = not (plan.durable_effect and Capability.DURABLE_EFFECTS in backend.capabilities)
    try:
        view = fold(view, rt.store.append(stream, view.version, [outcome], sync=sync))
    except ConcurrencyError as exc:
        raise ownership_lost(rt, stream, view, plan.op_id) from exc
    except DiskLedgerError:
        # The effect is done and the ledger did not take its outcome (unreachable, a lock
        # timeout): recovery (this process's next pass, or anyone's once it is gone) settles it.
        abandon(plan.op_id)
        raise
    faults.reach("after-outcome", op)
    return view, observed


def ownership_lost(
    rt: Runtime, stream: str, view: DiskView | TemplateView, op_id: str
) -> OwnershipLost | ConcurrencyError:
    """What an append that found the stream moved under a pending operation means: another
    member took the operation over (``OwnershipLost``), or a plain concurrency error."""
    moved = rt.store.read_stream(stream, after_version=view.version)
    taker = next((e for e in moved if e.type.endswith(f".{TAKEN_OVER}")), None)
    if taker is None or taker.metadata.op_id != op_id:
        return ConcurrencyError(stream, view.version, moved[-1].version if moved else None)
    detail = f"taken over by {taker.data.get('by')} (epoch {taker.data.get('by_epoch')})"
    return OwnershipLost(stream, op_id, detail)


def on_live_disk(
    rt: Runtime,
    operation: Operation,
    request: Mapping[str, Any],
    op_id: str | None,
    plan: Callable[[DiskView, str], Plan[DiskView] | DiskView],
    *,
    refuse_attached: bool = True,
) -> DiskView:
    """The common run of an operation on an existing disk (``request["disk"]``): the answer of
    an earlier identical request with ``op_id``, or the live disk's view planned (``plan`` gets
    it and the op id; returning a view instead of a plan means there is nothing to do) and
    performed."""
    if (done := repeated(rt, op_id, request)) is not None:
        return disk_after(rt, done)
    view = live_disk(rt, request["disk"], operation if refuse_attached else None)
    planned = plan(view, op_id or new_op_id())
    if isinstance(planned, DiskView):
        return planned
    return perform(rt, operation, planned, request)[0]


def repeated(rt: Runtime, op_id: str | None, request: Mapping[str, Any]) -> RecordedEvent | None:
    """The outcome of an earlier operation with idempotency key ``op_id``, when it made the
    same request and completed; None when ``op_id`` is new. Anything else is refused."""
    if op_id is None:
        return None
    check_name(op_id, "op id")
    events = rt.store.read_operation(op_id)
    intent = next((e for e in events if split_type(e.type)[2] == STARTED), None)
    if intent is None:
        return None
    if intent.data.get("request") != dict(request):
        raise Conflict(
            f"op id {op_id} was used for {_describe(intent.data.get('request', {}))}, "
            f"not {_describe(request)}"
        )
    _, op, _ = split_type(intent.type)
    # The outcome, not the operation's last event: facts it records after its outcome (a
    # failed create releases its template) carry its op id too.
    outcome = next((e for e in reversed(events) if _outcome_of(e, op)), None)
    if outcome is None:
        raise OperationPending(intent.stream, op, op_id)
    if split_type(outcome.type)[2] == COMPLETED:
        return outcome
    raise Conflict(f"operation {op_id} failed: {outcome.data.get('error')}; retry with a new op id")


def _outcome_of(event: RecordedEvent, op: str) -> bool:
    _, event_op, phase = split_type(event.type)
    return event_op == op and phase in (COMPLETED, FAILED)


def disk_after(rt: Runtime, event: RecordedEvent) -> DiskView:
    """The disk as it was right after ``event`` (a repeated request's answer)."""
    events = rt.store.read_stream(event.stream)
    return fold(DiskView(disk=event.stream.partition(":")[2]), events[: event.version])


def template_after(rt: Runtime, event: RecordedEvent) -> TemplateView:
    events = rt.store.read_stream(event.stream)
    view = empty_view(event.stream)
    assert isinstance(view, TemplateView)
    return fold(view, events[: event.version])


def disk_view(rt: Runtime, disk: str, *, must_exist: bool) -> DiskView:
    view = rt.store.disk(disk_stream(disk))
    if view is None:
        if must_exist:
            raise DiskNotFound(disk)
        return DiskView(disk=disk)
    return view


def live_disk(rt: Runtime, disk: str, operation: Operation | None = None) -> DiskView:
    """The view of an existing disk with nothing in flight, that ``operation`` may change."""
    check_disk(disk)
    view = disk_view(rt, disk, must_exist=True)
    refuse_pending(disk_stream(disk), view)
    if view.state in (DiskState.ABSENT, DiskState.TEMPLATE_CACHED):
        raise DiskNotFound(disk)
    if operation is not None:
        refuse_while_attached(view, operation, rt.backend_of(view))
    return view


def refuse_pending(stream: str, view: DiskView | TemplateView) -> None:
    if view.pending is not None:
        raise OperationPending(stream, view.pending.op, view.pending.op_id)


def existing_snapshot(disk: str, view: DiskView, snapshot: str) -> None:
    check_snapshot(snapshot)
    if view.snapshot(snapshot) is None:
        raise SnapshotNotFound(disk, snapshot)


def new_op_id() -> str:
    return uuid.uuid4().hex


def _refuse_unowned(backend: Backend, stream: str, artifacts: Sequence[Artifact]) -> None:
    """Refuse to start when a final artifact the intent names already exists.

    The ledger does not own it (no disk or template here names it), and compensation would
    remove it: it is drift for ``verify`` and the operator, never something to adopt or
    overwrite silently.
    """
    finals = [a for a in artifacts if not a.temporary]
    for seen in backend.probe(finals) if finals else ():
        if seen.exists:
            where = seen.artifact.location + (
                f" @{seen.artifact.name}" if seen.artifact.name else ""
            )
            raise Conflict(f"{stream}: {where} exists but the ledger does not own it")


def _validate(
    kind: str, stream: str, view: DiskView | TemplateView, events: Sequence[NewEvent]
) -> None:
    validator = _VALIDATORS[kind]
    for event in events:
        if validator.target(view, event.type, params_of(view, event)) is None:
            raise IllegalTransition(stream, view.state, event.type)
        view = evolve(view, event)


def _describe(request: Mapping[str, Any]) -> str:
    words = [request.get("op"), *(v for k, v in request.items() if k != "op")]
    return " ".join(str(w) for w in words if w is not None) or "another request"
