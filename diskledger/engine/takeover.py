"""Taking over the operations of a member that stopped: the rule, the fence, the claim.

A live member T takes over the pending operations of member M only when

1. M is ``fenced`` or has ``left``; or M is ``fencing`` and its fencer is itself gone; or M is
   ``live`` and its lease has run out **by the database's clock** and T has itself seen M's
   renewal count stand still for a whole lease on T's own monotonic clock (a database that
   paused, or a clock that jumped, cannot make T fence a member that is still renewing); or an
   operator confirmed M's host is down (``confirm_down``); and
2. the circuit breaker is closed: when more than half of the live members, and at least two,
   look stale at once, the fault is more likely T's own (a partitioned network or database) than
   theirs, so T records ``member.takeover-suspended`` and waits for an operator.

Then, for M: (a) ``member.fencing`` — in the same transaction the store re-checks that the lease
has run out, so a renewal and a fence never both win, and M's next renewal fails; (b) the storage
fence: on Ceph every client address M registered is blocklisted and T waits for the OSD map that
carries it; (c) ``member.fenced``. For each operation M owns: (d) ``<op>.taken-over`` — a
compare-and-swap on the stream's version, so M can record nothing more for it — then the same
``settle`` crash recovery runs.

Storage without a fence (files on a shared directory) cannot stop a zombie that is frozen rather
than dead. An operation that publishes by rename is still safe to take over: its temporaries are
renamed aside first, so the zombie's publishing rename fails. One that changes files in place
(resize, qcow2 snapshots, delete) goes to ``needs-operator`` until an operator confirms M's host
is down. So do attach and detach taken over from another host (only M's libvirtd can say what
its domain holds).

A member on this host whose process is provably gone (``liveness``) is taken over at once,
without waiting a lease: a dead process renews nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from diskledger.backends import Artifact, FencesMembers, SetsAside
from diskledger.context import OperationContext, working_for
from diskledger.engine.liveness import abandon, current_process, is_alive
from diskledger.engine.members import Membership
from diskledger.engine.operations import REGISTRY
from diskledger.engine.runtime import Runtime
from diskledger.engine.settle import Outcome, settle
from diskledger.errors import ConcurrencyError, Conflict, DiskLedgerError, InvalidInput
from diskledger.events import NEEDS_OPERATOR, TAKEN_OVER, Metadata, NewEvent, operation_event
from diskledger.states import DiskView, MemberState, TemplateView, evolve
from diskledger.states.streams import DISK, member_stream, stream_kind
from diskledger.store import MemberRecord, PendingEntry

__all__ = ["Observer", "TakeoverReport", "confirm_down", "take_over"]

log = logging.getLogger(__name__)


class Observer:
    """What this member has seen of the others' renewals, on its own monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, tuple[int, float]] = {}

    def stale_for(self, record: MemberRecord) -> float:
        """Seconds since this observer first saw ``record``'s renewal count at its present value
        (0 the first time it sees it, or when it changed)."""
        now = self._clock()
        seen = self._seen.get(record.member)
        if seen is None or seen[0] != record.renewals:
            self._seen[record.member] = (record.renewals, now)
            return 0.0
        return now - seen[1]


@dataclass(slots=True)
class TakeoverReport:
    """What a takeover scan did (``Engine.take_over``): per member, and per operation."""

    fenced: list[dict[str, Any]] = field(default_factory=list)
    """Members fenced by this scan, each ``{member, reason, ...}``."""
    waiting: list[dict[str, Any]] = field(default_factory=list)
    """Members that look gone but may not be taken over yet (and why); ``observing``: only
    because this taker has not watched their renewals stand still for a whole lease yet."""

    @property
    def observing(self) -> bool:
        """Some member waits only because this taker has not watched it for a lease yet."""
        return any(w.get("observing") for w in self.waiting)

    suspended: dict[str, Any] | None = None
    """Set when the circuit breaker held the takeover back (too many members looked gone at
    once): an operator confirms which are down (``Engine.confirm_down``)."""
    outcomes: list[Outcome] = field(default_factory=list)
    """What became of each operation the fenced members owned."""

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (what ``diskledger takeover --json`` prints)."""
        return {
            "fenced": self.fenced,
            "waiting": self.waiting,
            "suspended": self.suspended,
            "outcomes": [o.to_json() for o in self.outcomes],
        }


def take_over(
    rt: Runtime,
    observer: Observer,
    *,
    only: str | None = None,
) -> TakeoverReport:
    """One scan: fence every member the rule allows and settle what it owned. ``only``: consider
    that member alone (the operator's ``diskledger takeover --member``)."""
    me = rt.membership
    if me is None:
        raise InvalidInput(
            "this ledger has no members (DISKLEDGER_MEMBERS=0): nothing to take over"
        )
    me.owner()  # joined: a taker needs an epoch of its own
    report = TakeoverReport()
    records = {r.member: r for r in rt.store.members()}
    owned = _pending_by_owner(rt.store.pending())
    live = [r for r in records.values() if r.view.state is MemberState.LIVE]
    stale: list[MemberRecord] = []
    victims: list[tuple[MemberRecord, str]] = []
    for record in records.values():
        if record.member == me.member or (only is not None and record.member != only):
            continue
        verdict = _verdict(rt, observer, record, records)
        if verdict is None:
            continue
        if verdict == "stale":
            stale.append(record)
        elif verdict.startswith("wait:"):
            # Its lease ran out; this taker has not yet watched it stand still for a lease.
            report.waiting.append(
                {"member": record.member, "reason": verdict[5:], "observing": True}
            )
        elif record.view.state in (MemberState.LIVE, MemberState.FENCING) or owned.get(
            record.member
        ):
            victims.append((record, verdict))
    # Members an operator confirmed down still count as gone at once: confirming one of many
    # must not close the breaker for the rest.
    confirmed = sum(
        1 for r, why in victims if why == "confirmed-down" and r.view.state is MemberState.LIVE
    )
    gone = len(stale) + confirmed
    if stale and gone >= 2 and 2 * gone > len(live):
        report.suspended = _suspend(me, stale, len(live))
        report.waiting.extend(
            {"member": r.member, "reason": "takeover suspended: confirm it is down"} for r in stale
        )
    else:
        victims.extend((r, "lease-expired") for r in stale)
    for record, reason in victims:
        try:
            fence = _fence(rt, me, record, reason, owned.get(record.member, []))
        except Conflict as exc:
            report.waiting.append({"member": record.member, "reason": str(exc)})
            continue
        if fence is not None:
            report.fenced.append({"member": record.member, "reason": reason, **fence})
        for entry in owned.get(record.member, []):
            outcome = _claim_and_settle(rt, me, record, entry)
            if outcome is not None:
                report.outcomes.append(outcome)
    return report


def confirm_down(rt: Runtime, member: str, *, by: str) -> MemberRecord:
    """Record that an operator confirmed ``member``'s host is down: takeover may go past the
    circuit breaker and past in-place operations on storage without a fence."""
    stream = member_stream(member)
    for _ in range(10):
        record = rt.store.member(stream)
        if record is None:
            raise InvalidInput(f"no member {member!r} (see `diskledger members`)")
        if record.view.state is MemberState.LEFT:
            raise InvalidInput(f"member {member} left cleanly: there is nothing to take over")
        if record.view.confirmed_down is not None:
            return record
        event = NewEvent("member.confirmed-down", {"by": by}, _meta(rt))
        try:
            rt.store.append(stream, record.view.version, [event])
        except ConcurrencyError:
            continue
        confirmed = rt.store.member(stream)
        assert confirmed is not None
        return confirmed
    raise Conflict(f"member {member} kept changing: try again")


def _verdict(
    rt: Runtime, observer: Observer, record: MemberRecord, records: dict[str, MemberRecord]
) -> str | None:
    """Why ``record`` may be taken over (the ``member.fencing`` reason), ``"stale"`` when only
    the circuit breaker stands between, ``"wait:<why>"``, or None when it is fine."""
    view = record.view
    if view.state in (MemberState.FENCED, MemberState.LEFT):
        return "fenced" if view.state is MemberState.FENCED else "left"
    if view.state is MemberState.FENCING:
        fencer = records.get(str((view.fencing_by or {}).get("member")))
        if fencer is None or fencer.lapsed or fencer.view.state is not MemberState.LIVE:
            return "fencer-gone"
        me = rt.membership
        if me is not None and fencer.member == me.member:
            return "fencer-gone"  # an earlier scan of ours stopped half-way: finish it
        return None
    if view.state is not MemberState.LIVE:
        return None
    stale_for = observer.stale_for(record)
    if view.confirmed_down is not None:
        return "confirmed-down"
    if view.host == rt.host and not is_alive(view.process, view.host or "", rt.host):
        return "process-dead"
    if not record.lapsed:
        return None
    ttl = view.lease_ttl or 0.0
    if stale_for < ttl:
        return f"wait:its lease ran out; renewals seen standing for {stale_for:.1f} of {ttl:g} s"
    return "stale"


def _suspend(me: Membership, stale: Sequence[MemberRecord], live: int) -> dict[str, Any]:
    names = sorted(r.member for r in stale)
    suspended = {"stale": names, "live": live}
    log.warning(
        "takeover suspended: %d of %d live members look stale at once (%s); confirm each is "
        "down with `diskledger takeover --member M --confirm-down`",
        len(stale),
        live,
        ", ".join(names),
    )
    me.record_suspension(suspended)
    return suspended


def _fence(
    rt: Runtime,
    me: Membership,
    record: MemberRecord,
    reason: str,
    owned: Sequence[PendingEntry],
) -> dict[str, Any] | None:
    """Steps a-c for ``record`` (nothing for a member already fenced or gone cleanly)."""
    view = record.view
    if view.state in (MemberState.FENCED, MemberState.LEFT):
        return None
    owner = me.owner()
    fencing = NewEvent(
        "member.fencing",
        {"by": owner["member"], "by_epoch": owner["epoch"], "reason": reason},
        me.metadata(),
    )
    try:
        (recorded,) = rt.store.append(member_stream(view.member), view.version, [fencing])
    except ConcurrencyError as exc:
        raise Conflict(f"member {view.member} changed while being fenced: next scan") from exc
    log.warning("fencing member %s (%s) of host %s", view.member, reason, view.host)
    blocklisted: list[str] = []
    storage: list[dict[str, Any]] = []
    for name, backend in _fencing_backends(rt, owned) if view.ceph_clients else ():
        done = backend.fence_member(view.ceph_clients)
        storage.append({"backend": name, **done})
        blocklisted.extend(done.get("blocklisted", ()))
    fenced = NewEvent(
        "member.fenced",
        {"by": owner["member"], "by_epoch": owner["epoch"], "storage": storage},
        me.metadata(),
    )
    rt.store.append(member_stream(view.member), recorded.version, [fenced])
    return {"blocklisted": blocklisted, "storage": storage}


def _fencing_backends(
    rt: Runtime, owned: Sequence[PendingEntry]
) -> list[tuple[str, FencesMembers]]:
    names = {rt.backend.name, *(_backend_name(e) for e in owned)}
    found: list[tuple[str, FencesMembers]] = []
    for name in sorted(n for n in names if n):
        backend = rt.backend_named(name)
        if isinstance(backend, FencesMembers):
            found.append((name, backend))
    return found


def _claim_and_settle(
    rt: Runtime, me: Membership, victim: MemberRecord, entry: PendingEntry
) -> Outcome | None:
    """Step d and the settle, for one operation of ``victim``."""
    op = entry.operation
    operation = REGISTRY[op.op]
    kind = stream_kind(entry.stream)
    view: DiskView | TemplateView | None = (
        rt.store.disk(entry.stream) if kind == DISK else rt.store.template(entry.stream)
    )
    if view is None or view.pending is None or view.pending.op_id != op.op_id:
        return None  # settled since the index was read
    if view.pending.owner_member != victim.member:
        # Another taker claimed it since the index was read, and may be settling it now: the
        # claim below would succeed (its version is this fresh view's) and run it twice.
        return None
    backend = rt.backend_named(_backend_name(entry))
    run_id = uuid.uuid4().hex
    meta = rt.recovery_metadata(op.op_id, run_id)
    unfenced = not isinstance(backend, FencesMembers)
    confirmed = victim.view.confirmed_down is not None
    needs_operator = None
    if operation.host_bound and victim.view.host != rt.host and not confirmed:
        needs_operator = f"only host {victim.view.host}'s libvirtd can say what its domain holds"
    elif unfenced and not operation.publishes and not confirmed:
        needs_operator = (
            f"{backend.name} storage has no fence and {op.op} changes it in place: a frozen "
            f"{victim.view.host} could still be writing"
        )
    if needs_operator is not None:
        return _ask_operator(rt, entry, view, victim, needs_operator, meta)
    owner = me.owner()
    claim = operation_event(
        kind,
        op.op,
        TAKEN_OVER,
        {
            "from": victim.member,
            "from_epoch": victim.epoch,
            "by": owner["member"],
            "by_epoch": owner["epoch"],
        },
        meta,
    )
    try:
        rt.store.append(entry.stream, view.version, [claim])
    except ConcurrencyError:
        return None  # another taker claimed it first
    view = evolve(view, claim)
    context = OperationContext(
        op.op_id, op.op, str(owner["member"]), int(owner["epoch"]), "takeover"
    )
    with working_for(context):
        if unfenced and operation.publishes and isinstance(backend, SetsAside):
            temporaries = [a for a in map(Artifact.from_json, op.artifacts) if a.temporary]
            backend.set_aside(temporaries, f"{victim.epoch}")
        try:
            return settle(
                rt,
                operation,
                entry.stream,
                view,
                meta,
                error=None,
                already_reported=False,
                fenced=[f"member {victim.member}"],
            )
        except DiskLedgerError as exc:
            # Claimed, so this member owns it now and no other may settle it while it lives:
            # unless marked, its own recovery passes would take it for one still running (a
            # ledger restart here left a claimed operation pending until the member exited).
            abandon(op.op_id)
            log.warning("takeover of %s %s (%s) failed: %s", entry.stream, op.op, op.op_id, exc)
            return None


def _ask_operator(
    rt: Runtime,
    entry: PendingEntry,
    view: DiskView | TemplateView,
    victim: MemberRecord,
    reason: str,
    meta: Any,
) -> Outcome:
    op = entry.operation
    why = f"{reason}; confirm with `diskledger takeover --member {victim.member} --confirm-down`"
    events = rt.store.read_stream(entry.stream, after_version=view.version - 1)
    if not (events and events[-1].type.endswith(f".{NEEDS_OPERATOR}")):
        event = operation_event(
            stream_kind(entry.stream),
            op.op,
            NEEDS_OPERATOR,
            {"reason": why, "error": f"member {victim.member} was fenced", "owner": victim.member},
            meta,
        )
        # Its owner or another taker may have moved it meanwhile: the next scan sees.
        with contextlib.suppress(ConcurrencyError):
            rt.store.append(entry.stream, view.version, [event])
    return Outcome(entry.stream, op.op, op.op_id, "needs-operator", why)


def _pending_by_owner(entries: Sequence[PendingEntry]) -> dict[str, list[PendingEntry]]:
    owned: dict[str, list[PendingEntry]] = {}
    for entry in entries:
        if entry.owner is not None:
            owned.setdefault(entry.owner, []).append(entry)
    return owned


def _backend_name(entry: PendingEntry) -> str | None:
    params = entry.operation.params
    name = params.get("backend") or params.get("format")
    return None if name is None else str(name)


def _meta(rt: Runtime) -> Metadata:
    return Metadata(host=rt.host, actor="diskledger-operator", process=current_process())
