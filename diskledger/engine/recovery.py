"""Crash recovery: finish or undo every operation whose intent has no outcome.

For each entry of the pending index whose writer is dead, recovery probes the artifacts the intent
named (and, for operations that change a disk in place, the disk itself), picks the first row of
``RULES`` for the operation whose condition holds, and acts:

- ``roll-forward``: the effect is provably complete; leftover temporary names are removed and
  ``<op>.completed`` is recorded from what the probe saw;
- ``finish``: an in-place effect that can be neither proven complete nor undone (a rollback, a
  half-done delete) is idempotent, so it is run again to the end and ``completed`` recorded;
- ``roll-back``: the effect is not complete; exactly the named artifacts are removed (idempotently)
  and ``<op>.failed`` recorded;
- ``needs-operator``: the evidence contradicts itself; ``<op>.needs-operator`` is recorded and the
  operation stays pending until a person decides.

Every outcome carries ``recovery: {decision, rule, evidence}``. Removing artifacts goes through the
backend's ``remove``, the same compensation the engine runs for in-process failures.

Before it probes, recovery **fences** a dead writer on shared storage (``Fences``; RBD): a client
killed with an image open keeps its watch and exclusive lock for the OSD's watch timeout, during
which the image can be neither removed nor changed. Its clients are blocklisted first (recorded as
``recovery.fenced``), as ``rbd lock break`` would; the in-process compensation never fences (its
writer is alive: itself).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from diskledger.backends import Artifact, Backend, Fences, Flattens, Observation
from diskledger.engine import outcomes
from diskledger.engine.attachments import source_from_json, uses
from diskledger.engine.leases import expired
from diskledger.engine.liveness import abandoned, is_alive
from diskledger.errors import ConcurrencyError, DiskLedgerError, HypervisorError
from diskledger.events import (
    COMPLETED,
    FAILED,
    NEEDS_OPERATOR,
    Metadata,
    NewEvent,
    operation_event,
)
from diskledger.states import Attachment, DiskState, DiskView, TemplateView
from diskledger.states.streams import DISK, TEMPLATE, stream_kind
from diskledger.store import PendingEntry

if TYPE_CHECKING:
    from diskledger.engine.engine import Engine

__all__ = [
    "RULES",
    "Decision",
    "DomainEvidence",
    "Evidence",
    "RecoveryReport",
    "Rule",
    "recover",
    "settle",
]

log = logging.getLogger(__name__)


class Decision(StrEnum):
    FORWARD = "roll-forward"
    FINISH = "finish"
    BACK = "roll-back"
    OPERATOR = "needs-operator"


@dataclass(frozen=True, slots=True)
class DomainEvidence:
    """What libvirt showed of the domain an attach or detach names."""

    domain: str
    exists: bool
    active: bool
    uses_disk: bool
    """The same domain (by UUID) has the disk at the intent's target device."""

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "exists": self.exists,
            "active": self.active,
            "uses_disk": self.uses_disk,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the probe saw: the intent's named artifacts, the parts of the disk it changes, and
    for an attach or detach, the domain."""

    named: tuple[Observation, ...]
    parts: tuple[Observation, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    domain: DomainEvidence | None = None

    @property
    def finals(self) -> tuple[Observation, ...]:
        return tuple(o for o in self.named if not o.artifact.temporary)

    @property
    def disk(self) -> Observation | None:
        return self.parts[0] if self.parts else None

    def to_json(self) -> list[dict[str, Any]]:
        seen = [o.to_json() for o in (*self.named, *self.parts)]
        return [*seen, self.domain.to_json()] if self.domain is not None else seen


Condition = Callable[[Evidence], bool]


@dataclass(frozen=True, slots=True)
class Rule:
    op: str
    when: str
    decision: Decision
    reason: str


def _finals_exist(e: Evidence) -> bool:
    return bool(e.finals) and all(o.exists for o in e.finals)


def _finals_missing(e: Evidence) -> bool:
    return not any(o.exists for o in e.finals)


def _created_as_asked(e: Evidence) -> bool:
    return _finals_exist(e) and all(
        o.size == e.params.get("size") and o.format == e.params.get("format") for o in e.finals
    )


def _temporary_survives(e: Evidence) -> bool:
    return any(o.exists for o in e.named if o.artifact.temporary)


def _disk_at_new_size(e: Evidence) -> bool:
    return e.disk is not None and e.disk.exists and e.disk.size == e.params.get("size")


def _disk_at_old_size(e: Evidence) -> bool:
    return e.disk is not None and e.disk.exists and e.disk.size == e.params.get("previous_size")


def _disk_exists(e: Evidence) -> bool:
    return e.disk is not None and e.disk.exists


def _parts_gone(e: Evidence) -> bool:
    return not any(o.exists for o in e.parts)


def _parts_whole(e: Evidence) -> bool:
    return all(o.exists for o in e.parts)


def _snapshot_gone(e: Evidence) -> bool:
    return _disk_exists(e) and not any(o.exists for o in e.parts[1:])


def _snapshot_present(e: Evidence) -> bool:
    return _disk_exists(e) and all(o.exists for o in e.parts[1:])


def _domain_uses_disk(e: Evidence) -> bool:
    return e.domain is not None and e.domain.uses_disk


def _always(e: Evidence) -> bool:
    return True


CONDITIONS: dict[str, Condition] = {
    "created as asked": _created_as_asked,
    "final names missing": _finals_missing,
    "final names exist": _finals_exist,
    "a temporary name survives": _temporary_survives,
    "disk at the new size": _disk_at_new_size,
    "disk at the old size": _disk_at_old_size,
    "disk exists": _disk_exists,
    "disk and snapshots gone": _parts_gone,
    "disk and snapshots all present": _parts_whole,
    "snapshot gone, disk present": _snapshot_gone,
    "snapshot and disk present": _snapshot_present,
    "the domain uses the disk": _domain_uses_disk,
    "otherwise": _always,
}

FORWARD, FINISH, BACK, OPERATOR = Decision  # the table below reads better unqualified
RULES: tuple[Rule, ...] = (
    # Publication is an atomic rename: a final name that exists holds a whole disk.
    Rule("create", "created as asked", FORWARD, "the disk was published whole"),
    Rule("create", "final names missing", BACK, "the disk was never published"),
    # A published disk of another size or format is not ours to adopt or to delete.
    Rule("create", "otherwise", OPERATOR, "a disk is published but not as the intent asked"),
    # qemu-img resize changes the size in one metadata update.
    Rule("resize", "disk at the new size", FORWARD, "the disk has the size asked for"),
    Rule("resize", "disk at the old size", BACK, "the disk was not resized"),
    Rule("resize", "otherwise", OPERATOR, "the disk is missing or at a size nobody asked for"),
    Rule("snapshot", "final names exist", FORWARD, "the snapshot was taken"),
    Rule("snapshot", "final names missing", BACK, "the snapshot was never published"),
    # A raw rollback publishes by renaming its temporary copy over the disk: while the copy
    # survives, the disk was not touched.
    Rule("rollback", "a temporary name survives", BACK, "the reverted copy was never published"),
    # Otherwise the disk may or may not hold the snapshot's data (qcow2 reverts in place), and the
    # old data is gone if it does: running the rollback again is the only way to a known state.
    Rule("rollback", "disk exists", FINISH, "a rollback is idempotent: run to the end"),
    Rule("rollback", "otherwise", OPERATOR, "the disk is missing"),
    # Gone by name is not always gone: librbd moves a snapshot it removes to the trash first, and
    # a removal cut short leaves it there. Removing it again is idempotent and finishes that.
    Rule(
        "remove-snapshot",
        "snapshot gone, disk present",
        FINISH,
        "the snapshot is gone or going: remove the rest",
    ),
    Rule("remove-snapshot", "snapshot and disk present", BACK, "the snapshot is still there"),
    Rule("remove-snapshot", "otherwise", OPERATOR, "the disk is missing"),
    # Gone by name is not always gone: an RBD image whose removal was cut short no longer opens
    # but is still listed in its pool. Removing what is left is idempotent and finishes that.
    Rule("delete", "disk and snapshots gone", FINISH, "everything was removed, or is going"),
    Rule("delete", "disk and snapshots all present", BACK, "nothing was removed"),
    # Half a delete is worse than either end: removing the rest is idempotent.
    Rule("delete", "otherwise", FINISH, "part was removed: remove the rest"),
    Rule("export", "final names exist", FORWARD, "the export was published whole"),
    Rule("export", "final names missing", BACK, "the export was never published"),
    # An import publishes by renaming, as a create does; its size is known only afterwards.
    Rule("import", "final names exist", FORWARD, "the disk was published whole"),
    Rule("import", "final names missing", BACK, "the disk was never published"),
    # librbd flattens in place and the result is the same however often it runs.
    Rule("flatten", "disk exists", FINISH, "a flatten is idempotent: run to the end"),
    Rule("flatten", "otherwise", OPERATOR, "the disk is missing"),
    # The copy is renamed into the image pool only after it was flattened and snapshotted; the
    # disk's short-lived snapshot is a temporary either way and goes.
    Rule("direct-snapshot", "final names exist", FORWARD, "the copy was published whole"),
    Rule("direct-snapshot", "final names missing", BACK, "the copy was never published"),
    # libvirt plugs a disk in, or unplugs it, as one device change: the domain (the same one,
    # by UUID) shows the disk at the target device or it does not. A domain that is gone
    # uses nothing.
    Rule("attach", "the domain uses the disk", FORWARD, "the disk is plugged in"),
    Rule("attach", "otherwise", BACK, "the disk was never plugged in"),
    Rule("detach", "the domain uses the disk", BACK, "the guest still holds the disk"),
    Rule("detach", "otherwise", FORWARD, "the disk is unplugged, or its domain is gone"),
    Rule("fetch", "final names exist", FORWARD, "the template was published whole"),
    Rule("fetch", "final names missing", BACK, "the template was never published"),
)
del FORWARD, FINISH, BACK, OPERATOR


def decide(op: str, evidence: Evidence) -> Rule:
    for rule in RULES:
        if rule.op == op and CONDITIONS[rule.when](evidence):
            return rule
    return Rule(op, "otherwise", Decision.OPERATOR, f"no recovery rule for {op}")


@dataclass(frozen=True, slots=True)
class Outcome:
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


@dataclass(slots=True)
class RecoveryReport:
    """``pending``: every operation found without an outcome; the other lists say what became of
    each (``in_flight``: its writer is alive, so it was left alone; ``deferred``: its evidence
    could not be gathered — libvirt did not answer — so it stays pending for a later run)."""

    dry_run: bool = False
    pending: list[Outcome] = field(default_factory=list)
    rolled_forward: list[Outcome] = field(default_factory=list)
    rolled_back: list[Outcome] = field(default_factory=list)
    needs_operator: list[Outcome] = field(default_factory=list)
    in_flight: list[Outcome] = field(default_factory=list)
    deferred: list[Outcome] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "pending": [o.to_json() for o in self.pending],
            "rolled_forward": [o.to_json() for o in self.rolled_forward],
            "rolled_back": [o.to_json() for o in self.rolled_back],
            "needs_operator": [o.to_json() for o in self.needs_operator],
            "in_flight": [o.to_json() for o in self.in_flight],
            "deferred": [o.to_json() for o in self.deferred],
        }


def recover(engine: Engine, *, dry_run: bool = False) -> RecoveryReport:
    """Resolve every pending operation whose writer is dead. Cost: the pending index, then one
    stream read and one probe per pending operation."""
    report = RecoveryReport(dry_run=dry_run)
    run_id = uuid.uuid4().hex
    for entry in engine.store.pending():
        op = entry.operation
        intent = engine.store.read_stream(entry.stream, after_version=op.started_version - 1)
        if not intent:
            continue  # resolved since the index was read
        started = intent[0].metadata
        found = Outcome(entry.stream, op.op, op.op_id, "pending", "no outcome recorded")
        report.pending.append(found)
        if (
            not abandoned(op.op_id)
            and is_alive(started.process, started.host, engine.host)
            and not _lease_ran_out(engine, entry.stream)
        ):
            report.in_flight.append(_with(found, "in-flight", "its writer is still running"))
            continue
        try:
            outcome = _resolve(engine, entry, intent, run_id, dry_run=dry_run)
        except ConcurrencyError:
            continue  # another recovery got there first
        except HypervisorError as exc:
            # One unreachable libvirtd must not hold up the recovery of every other disk.
            log.warning("recovery: %s %s (%s): deferred: %s", entry.stream, op.op, op.op_id, exc)
            report.deferred.append(_with(found, "deferred", f"cannot ask libvirt: {exc}"))
            continue
        log.log(
            logging.WARNING if outcome.decision == Decision.OPERATOR else logging.INFO,
            "recovery: %s %s (%s): %s, %s",
            entry.stream,
            op.op,
            op.op_id,
            outcome.decision,
            outcome.reason,
        )
        {
            Decision.FORWARD: report.rolled_forward,
            Decision.FINISH: report.rolled_forward,
            Decision.BACK: report.rolled_back,
            Decision.OPERATOR: report.needs_operator,
        }[Decision(outcome.decision)].append(outcome)
    return report


def _lease_ran_out(engine: Engine, stream: str) -> bool:
    if stream_kind(stream) != TEMPLATE:
        return False
    view = engine.store.template(stream)
    return view is not None and expired(view.lease_expires)


def _with(outcome: Outcome, decision: str, reason: str) -> Outcome:
    return Outcome(outcome.stream, outcome.op, outcome.op_id, decision, reason)


def _resolve(
    engine: Engine,
    entry: PendingEntry,
    since_intent: Sequence[Any],
    run_id: str,
    *,
    dry_run: bool,
) -> Outcome:
    kind = stream_kind(entry.stream)
    view = engine.store.disk(entry.stream) if kind == DISK else engine.store.template(entry.stream)
    assert view is not None and view.pending is not None
    already_reported = since_intent[-1].type.endswith(NEEDS_OPERATOR)
    return settle(
        engine,
        entry.stream,
        view,
        engine.recovery_metadata(entry.operation.op_id, run_id),
        error=None,
        dry_run=dry_run,
        already_reported=already_reported,
        fenced=() if dry_run else _fence(engine, entry.stream, view),
    )


def _fence(engine: Engine, stream: str, view: DiskView | TemplateView) -> list[str]:
    """Cut the dead writer of ``view``'s pending operation off the storage it touched (see
    ``Fences``); what was fenced, for the outcome. A failure to fence is logged, not raised:
    acting on the evidence may still work, and if not, that failure is recorded."""
    op = view.pending
    assert op is not None
    backend = engine.backend_named(op.params.get("backend") or op.params.get("format"))
    if not isinstance(backend, Fences):
        return []
    touched = (*(Artifact.from_json(a) for a in op.artifacts), *_parts(backend, op.op, op.params))
    try:
        fenced = backend.fence(op.params.get("writer"), touched)
    except DiskLedgerError as exc:
        log.warning(
            "recovery: %s %s (%s): fencing its writer failed: %s", stream, op.op, op.op_id, exc
        )
        return []
    if fenced:
        log.warning(
            "recovery: %s %s (%s): fenced the dead writer's clients %s",
            stream,
            op.op,
            op.op_id,
            ", ".join(fenced),
        )
    return fenced


def settle(
    engine: Engine,
    stream: str,
    view: DiskView | TemplateView,
    meta: Metadata,
    *,
    error: BaseException | None,
    dry_run: bool = False,
    already_reported: bool = False,
    fenced: Sequence[str] = (),
) -> Outcome:
    """Probe, decide by ``RULES`` and record the outcome of ``view``'s pending operation.

    Recovery calls it for a dead writer's operation (``error`` None), after fencing that writer
    (``fenced``: what it cut off, recorded with the decision); the engine calls it at once when
    an operation's effect raised (``error``): one compensation path for both.
    """
    op = view.pending
    assert op is not None
    kind = stream_kind(stream)
    backend = engine.backend_named(op.params.get("backend") or op.params.get("format"))
    named = tuple(Artifact.from_json(a) for a in op.artifacts)
    parts = _parts(backend, op.op, op.params)
    evidence = Evidence(
        named=backend.probe(named) if named else (),
        parts=backend.probe(parts) if parts else (),
        params=op.params,
        domain=_probe_domain(engine, op.op, op.params),
    )
    rule = decide(op.op, evidence)
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
    events: list[NewEvent]
    try:
        if rule.decision is Decision.OPERATOR:
            raise _NeedsOperator(rule.reason)
        if rule.decision is Decision.BACK:
            backend.remove(named)
            data = {
                "error": str(error)
                if error is not None
                else f"recovered after a crash: {rule.reason}",
                "error_type": type(error).__name__ if error is not None else "Crash",
                "removed": [a.to_json() for a in named],
                "recovery": recovery,
            }
            events = [operation_event(kind, op.op, FAILED, data, meta)]
            if isinstance(view, DiskView) and view.state is DiskState.TEMPLATE_CACHED:
                events.append(NewEvent("disk.template-released", {"template": view.template}, meta))
        else:
            if rule.decision is Decision.FINISH:
                _finish(backend, op.op, op.params, op.op_id)
            backend.remove([a for a in named if a.temporary])
            data = _completed_data(engine, backend, op.op, op.params, view, evidence)
            events = [operation_event(kind, op.op, COMPLETED, {**data, "recovery": recovery}, meta)]
    except (DiskLedgerError, _NeedsOperator) as exc:
        # The evidence contradicts itself, or acting on it failed: a person decides.
        if already_reported:
            return Outcome(stream, op.op, op.op_id, Decision.OPERATOR.value, str(exc))
        reason = rule.reason if isinstance(exc, _NeedsOperator) else f"{rule.reason}, but: {exc}"
        data = {"reason": reason, "error": cause, "recovery": recovery}
        events = [operation_event(kind, op.op, NEEDS_OPERATOR, data, meta)]
        outcome = Outcome(stream, op.op, op.op_id, Decision.OPERATOR.value, reason)
    engine.store.append(stream, view.version, events)
    return outcome


class _NeedsOperator(Exception):
    """The table says a person must decide."""


def _probe_domain(engine: Engine, op: str, params: Mapping[str, Any]) -> DomainEvidence | None:
    if op not in ("attach", "detach"):
        return None
    info = engine.hypervisor.find(params["domain"])
    return DomainEvidence(
        domain=params["domain"],
        exists=info is not None,
        active=info is not None and info.active,
        uses_disk=uses(
            info, params["domain_uuid"], params["target_dev"], source_from_json(params["source"])
        ),
    )


def _parts(backend: Backend, op: str, params: Mapping[str, Any]) -> tuple[Artifact, ...]:
    """The parts of the disk an in-place operation changes, probed beside the named artifacts."""
    location = params.get("location")
    if location is None:
        return ()
    if op in ("resize", "rollback", "flatten"):
        return backend.disk_artifacts(location, ())
    if op == "remove-snapshot":
        return backend.disk_artifacts(location, (params["snapshot"],))
    if op == "delete":
        return backend.disk_artifacts(location, tuple(params.get("snapshots", ())))
    return ()


def _finish(backend: Backend, op: str, params: Mapping[str, Any], op_id: str) -> None:
    if op == "rollback":
        backend.rollback(
            params["location"], params["format"], params["snapshot"], op_id, size=params["size"]
        )
    elif op == "delete":
        backend.delete(params["location"], params["format"], tuple(params.get("snapshots", ())))
    elif op == "remove-snapshot":
        backend.remove_snapshot(params["location"], params["format"], params["snapshot"])
    elif op == "flatten" and isinstance(backend, Flattens):
        backend.flatten(params["location"], params["format"])
    else:
        raise AssertionError(f"no way to finish {op}")


def _completed_data(
    engine: Engine,
    backend: Backend,
    op: str,
    params: Mapping[str, Any],
    view: DiskView | TemplateView,
    evidence: Evidence,
) -> dict[str, Any]:
    """What the outcome would have recorded, had the writer lived: observed again now."""
    if op == "fetch":
        fmt = engine.templates.cached_format(params["format"])
        return outcomes.fetched(fmt, engine.templates.observe(params["template"], fmt))
    if op in ("create", "import"):
        (seen,) = evidence.finals
        return outcomes.created(seen)
    if op == "direct-snapshot":
        return {"url": params["url"], "size": params["size"]}
    if op == "flatten":
        (disk,) = backend.probe(backend.disk_artifacts(params["location"], ()))
        return {"size": disk.size, "backing": disk.backing}
    if op in ("resize", "rollback", "snapshot"):
        (disk,) = backend.probe(backend.disk_artifacts(params["location"], ()))
        return {"size": disk.size}
    if op == "attach":
        return {**Attachment.from_json(params).to_json(), "added": None}
    if op == "detach":
        return {"domain": params["domain"], "removed": None}
    if op == "export":
        assert isinstance(view, DiskView)
        return {"target": params["target"], "format": params["format"], "size": view.size}
    return {}


def rules_markdown() -> str:
    """The decision table as docs/recovery.md shows it (a test keeps the two equal)."""
    lines = [
        "| operation | when the probe shows | decision | why |",
        "|---|---|---|---|",
    ]
    lines.extend(f"| `{r.op}` | {r.when} | **{r.decision.value}** | {r.reason} |" for r in RULES)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(rules_markdown(), end="")
