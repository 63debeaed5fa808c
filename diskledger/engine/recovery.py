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

Every outcome carries ``recovery: {decision, rule, evidence}``. Each operation declares its rules
(``diskledger.engine.operations``); ``settle`` acts on them, the same compensation the protocol runs
for in-process failures. Removing artifacts goes through the backend's ``remove``.

Before it probes, recovery **fences** a dead writer on shared storage (``Fences``; RBD): a client
killed with an image open keeps its watch and exclusive lock for the OSD's watch timeout, during
which the image can be neither removed nor changed. Its clients are blocklisted first (recorded as
``recovery.fenced``), as ``rbd lock break`` would; the in-process compensation never fences (its
writer is alive: itself).

Last, recovery **sweeps keys** (``diskledger.engine.encryption.sweep``): a key of an encrypted
disk is made before the intent that names it, so a process killed in between leaves a key no
intent names. Once no process holds it, and neither a disk nor a pending operation names it, it
is destroyed (``keys_destroyed``: the references, never the keys).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from diskledger.backends import Artifact, Fences
from diskledger.engine import encryption
from diskledger.engine.decisions import Decision, DomainEvidence, Evidence, Rule
from diskledger.engine.liveness import abandoned, is_alive
from diskledger.engine.operations import REGISTRY, RULES
from diskledger.engine.runtime import Runtime
from diskledger.engine.settle import Outcome, settle
from diskledger.engine.takeover import Observer, take_over
from diskledger.errors import ConcurrencyError, DiskLedgerError, HypervisorError, OwnershipLost
from diskledger.events import NEEDS_OPERATOR, TAKEN_OVER, operation_event
from diskledger.states import DiskView, TemplateView
from diskledger.states.streams import DISK, stream_kind
from diskledger.store import PendingEntry
from diskledger.store.wal import DiscardedTail

__all__ = [
    "RULES",
    "Decision",
    "DomainEvidence",
    "Evidence",
    "Outcome",
    "RecoveryReport",
    "Rule",
    "recover",
    "settle",
]

log = logging.getLogger(__name__)


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
    keys_destroyed: list[str] = field(default_factory=list)
    """References of keys no intent named (their creator died first), destroyed."""
    ledger_tail: DiscardedTail | None = None
    """What the ledger's database dropped when this process opened it after a crash: an append
    the crash cut short (never one that had returned). Reported once, by the first process to
    open the ledger after the crash."""

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (what ``diskledger recover --json`` prints)."""
        return {
            "dry_run": self.dry_run,
            "pending": [o.to_json() for o in self.pending],
            "rolled_forward": [o.to_json() for o in self.rolled_forward],
            "rolled_back": [o.to_json() for o in self.rolled_back],
            "needs_operator": [o.to_json() for o in self.needs_operator],
            "in_flight": [o.to_json() for o in self.in_flight],
            "deferred": [o.to_json() for o in self.deferred],
            "keys_destroyed": list(self.keys_destroyed),
            "ledger_tail": self.ledger_tail.to_json() if self.ledger_tail else None,
        }


def recover(
    rt: Runtime, *, dry_run: bool = False, observer: Observer | None = None
) -> RecoveryReport:
    """Resolve every pending operation whose writer is dead. Cost: the pending index, then one
    stream read and one probe per pending operation.

    On a ledger with members, operations owned by another member are settled by a takeover
    (``diskledger.engine.takeover``) when its rule allows; ``observer`` carries what this
    process has seen of the other members' renewals from one call to the next."""
    report = RecoveryReport(dry_run=dry_run, ledger_tail=rt.store.discarded_tail)
    if report.ledger_tail is not None and not dry_run:
        log.warning("%s", report.ledger_tail.describe())
        rt.store.discarded_tail = None  # said once

    run_id = uuid.uuid4().hex
    me = rt.membership
    owned_elsewhere: list[Outcome] = []
    for entry in rt.store.pending():
        op = entry.operation
        intent = rt.store.read_stream(entry.stream, after_version=op.started_version - 1)
        if not intent:
            continue  # resolved since the index was read
        started = intent[0].metadata
        found = Outcome(entry.stream, op.op, op.op_id, "pending", "no outcome recorded")
        report.pending.append(found)
        ours = me is not None and entry.owner == me.member
        if entry.owner is not None and not ours:
            owned_elsewhere.append(found)
            continue
        if not abandoned(op.op_id) and (ours or is_alive(started.process, started.host, rt.host)):
            report.in_flight.append(_with(found, "in-flight", "its writer is still running"))
            continue
        try:
            outcome = _resolve(rt, entry, intent, run_id, dry_run=dry_run, claim=ours)
        except (ConcurrencyError, OwnershipLost):
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
    if owned_elsewhere:
        _take_over(rt, report, owned_elsewhere, observer, dry_run=dry_run)
    if not dry_run:
        report.keys_destroyed = encryption.sweep(rt)
    return report


def _take_over(
    rt: Runtime,
    report: RecoveryReport,
    found: list[Outcome],
    observer: Observer | None,
    *,
    dry_run: bool,
) -> None:
    settled: dict[str, Outcome] = {}
    waiting: dict[str, str] = {}
    if rt.membership is not None and not dry_run:
        taken = take_over(rt, observer or Observer())
        settled = {o.op_id: o for o in taken.outcomes}
        waiting = {w["member"]: w["reason"] for w in taken.waiting}
    owners = {e.operation.op_id: e.owner for e in rt.store.pending()}
    for outcome in found:
        done = settled.get(outcome.op_id)
        if done is None:
            owner = owners.get(outcome.op_id)
            why = waiting.get(owner or "", f"its member {owner} holds its lease")
            report.in_flight.append(_with(outcome, "in-flight", why))
            continue
        {
            Decision.FORWARD: report.rolled_forward,
            Decision.FINISH: report.rolled_forward,
            Decision.BACK: report.rolled_back,
            Decision.OPERATOR: report.needs_operator,
        }[Decision(done.decision)].append(done)


def _with(outcome: Outcome, decision: str, reason: str) -> Outcome:
    return Outcome(outcome.stream, outcome.op, outcome.op_id, decision, reason)


def _resolve(
    rt: Runtime,
    entry: PendingEntry,
    since_intent: Sequence[Any],
    run_id: str,
    *,
    dry_run: bool,
    claim: bool,
) -> Outcome:
    """Settle one dead writer's operation; ``claim``: it is this member's own (a thread of this
    process died in it), claimed first like any takeover."""
    kind = stream_kind(entry.stream)
    view = rt.store.disk(entry.stream) if kind == DISK else rt.store.template(entry.stream)
    assert view is not None and view.pending is not None
    if claim and view.pending.owner_member != entry.owner:
        # Taken over since the index was read (this member was fenced): not ours to settle.
        raise OwnershipLost(entry.stream, entry.operation.op_id, "taken over meanwhile")
    already_reported = since_intent[-1].type.endswith(NEEDS_OPERATOR)
    meta = rt.recovery_metadata(entry.operation.op_id, run_id)
    owner = rt.owner() if claim else None
    taken = (
        operation_event(
            kind,
            entry.operation.op,
            TAKEN_OVER,
            {
                "from": view.pending.owner_member,
                "from_epoch": (view.pending.owner or {}).get("epoch"),
                "by": owner["member"],
                "by_epoch": owner["epoch"],
            },
            meta,
        )
        if owner is not None
        else None
    )
    return settle(
        rt,
        REGISTRY[entry.operation.op],
        entry.stream,
        view,
        meta,
        error=None,
        dry_run=dry_run,
        already_reported=already_reported,
        fenced=() if dry_run else _fence(rt, entry.stream, view),
        claim=taken,
    )


def _fence(rt: Runtime, stream: str, view: DiskView | TemplateView) -> list[str]:
    """Cut the dead writer of ``view``'s pending operation off the storage it touched (see
    ``Fences``); what was fenced, for the outcome. A failure to fence is logged, not raised:
    acting on the evidence may still work, and if not, that failure is recorded."""
    op = view.pending
    assert op is not None
    backend = rt.backend_named(op.params.get("backend") or op.params.get("format"))
    if not isinstance(backend, Fences):
        return []
    parts = REGISTRY[op.op].parts(backend, op.params)
    touched = (*(Artifact.from_json(a) for a in op.artifacts), *parts)
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
