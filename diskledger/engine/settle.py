"""The one compensation path: probe, decide by the operation's rules, act, record the outcome.

Crash recovery calls ``settle`` for a dead writer's operation; the protocol calls it at once when
an operation's effect raised. Removing artifacts always goes through the backend's ``remove``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diskledger.backends import Artifact, Backend
from diskledger.engine import encryption
from diskledger.engine.decisions import Decision, Evidence, Rule, decide
from diskledger.engine.operations.base import Operation
from diskledger.engine.runtime import Runtime
from diskledger.errors import ConcurrencyError, DiskLedgerError, OwnershipLost
from diskledger.events import COMPLETED, FAILED, NEEDS_OPERATOR, Metadata, NewEvent, operation_event
from diskledger.states import DiskState, DiskView, TemplateView, evolve
from diskledger.states.streams import stream_kind

__all__ = ["Outcome", "settle"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one pending operation."""

    stream: str
    op: str
    op_id: str
    decision: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        kind = stream_kind(self.stream)
        return {
            kind: self.stream.partition(":")[2],
            "stream": self.stream,
            "op": self.op,
            "op_id": self.op_id,
            "decision": self.decision,
            "reason": self.reason,
        }


def settle(
    rt: Runtime,
    operation: Operation,
    stream: str,
    view: DiskView | TemplateView,
    meta: Metadata,
    *,
    error: BaseException | None,
    dry_run: bool = False,
    already_reported: bool = False,
    fenced: Sequence[str] = (),
    claim: NewEvent | None = None,
) -> Outcome:
    """Probe, decide by ``operation.rules`` and record the outcome of ``view``'s pending operation.

    Recovery calls it for a dead writer's operation (``error`` None), after fencing that writer
    (``fenced``: what it cut off, recorded with the decision); the protocol calls it at once when
    an operation's effect raised (``error``): one compensation path for both.

    ``claim`` (``<op>.taken-over`` for a takeover, ``<op>.compensating`` for the owner itself) is
    appended before anything is removed or recorded: a compare-and-swap on the stream's version,
    so that of two processes settling one operation only one acts. Losing it raises
    ``OwnershipLost`` having changed nothing.
    """
    op = view.pending
    assert op is not None and op.op == operation.name
    kind = stream_kind(stream)
    backend = rt.backend_named(op.params.get("backend") or op.params.get("format"))
    named = tuple(Artifact.from_json(a) for a in op.artifacts)
    parts = operation.parts(backend, op.params)
    evidence = Evidence(
        named=backend.probe(named) if named else (),
        parts=backend.probe(parts) if parts else (),
        params=op.params,
        domain=operation.domain(rt, op.params),
    )
    rule = decide(operation.rules, op.op, evidence)
    outcome = Outcome(stream, op.op, op.op_id, rule.decision.value, rule.reason)
    if dry_run or (rule.decision is Decision.OPERATOR and already_reported):
        return outcome  # nothing to do, or already reported to the operator

    recovery: dict[str, Any] = {
        "decision": rule.decision.value,
        "rule": rule.when,
        "evidence": evidence.to_json(),
    }
    if fenced:
        recovery["fenced"] = list(fenced)
    cause = f"{error}" if error is not None else "a crash"
    if claim is not None:
        try:
            rt.store.append(stream, view.version, [claim])
        except ConcurrencyError as exc:
            raise OwnershipLost(stream, op.op_id, "another member claimed it first") from exc
        view = evolve(view, claim)
    events: list[NewEvent]
    made = view.encryption if isinstance(view, DiskView) and operation.opens_disk else None
    try:
        with encryption.keyed(rt, made, backend) as acting:
            events = _act(
                rt, operation, rule, kind, view, acting, named, evidence, recovery, meta, error
            )
    except (DiskLedgerError, _NeedsOperator) as exc:
        # The evidence contradicts itself, or acting on it failed: a person decides.
        if already_reported:
            return Outcome(stream, op.op, op.op_id, Decision.OPERATOR.value, str(exc))
        reason = rule.reason if isinstance(exc, _NeedsOperator) else f"{rule.reason}, but: {exc}"
        data = {"reason": reason, "error": cause, "recovery": recovery}
        events = [operation_event(kind, op.op, NEEDS_OPERATOR, data, meta)]
        outcome = Outcome(stream, op.op, op.op_id, Decision.OPERATOR.value, reason)
    rt.store.append(stream, view.version, events)
    return outcome


def _act(
    rt: Runtime,
    operation: Operation,
    rule: Rule,
    kind: str,
    view: DiskView | TemplateView,
    backend: Backend,
    named: tuple[Artifact, ...],
    evidence: Evidence,
    recovery: dict[str, Any],
    meta: Metadata,
    error: BaseException | None,
) -> list[NewEvent]:
    """Act on ``rule``: remove, finish or record; the events that record it."""
    op = view.pending
    assert op is not None
    events: list[NewEvent]
    if rule.decision is Decision.OPERATOR:
        raise _NeedsOperator(rule.reason)
    if rule.decision is Decision.BACK:
        backend.remove(named)
        undone = operation.undone(rt, op.params)  # a key, a libvirt secret: after the data
        data = {
            **undone,
            "error": str(error) if error is not None else f"recovered after a crash: {rule.reason}",
            "error_type": type(error).__name__ if error is not None else "Crash",
            "removed": [a.to_json() for a in named],
            "recovery": recovery,
        }
        events = [operation_event(kind, op.op, FAILED, data, meta)]
        if isinstance(view, DiskView) and view.state is DiskState.TEMPLATE_CACHED:
            events.append(NewEvent("disk.template-released", {"template": view.template}, meta))
    else:
        if rule.decision is Decision.FINISH:
            operation.finish(rt, backend, op.params, op.op_id)
        backend.remove([a for a in named if a.temporary])
        data = operation.recovered(rt, backend, op.params, view, evidence)
        events = [operation_event(kind, op.op, COMPLETED, {**data, "recovery": recovery}, meta)]
    return events


class _NeedsOperator(Exception):
    """The table says a person must decide."""
