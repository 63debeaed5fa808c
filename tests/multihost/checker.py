"""The multi-host checker: pure functions over the ledger's events, the witness log and the
nemesis record, each returning a :class:`CheckResult` (counts, violations with their evidence,
notes); ``check_all`` runs them and returns a :class:`Report` whose ``render()`` is readable.

Inputs:

* ``events``: the ledger, in position order (:func:`read_ledger` reads the ``events`` table of a
  SQLAlchemy URL). Operation events are typed ``<kind>.<op>.<phase>``; members have streams
  ``member:<id>`` with ``member.joined`` (data ``host``, ``boot_id``, ``pid``, ``ceph_clients``,
  ``lease_ttl``; a member's epoch is the position of this event), ``member.client-added``,
  ``member.fencing``, ``member.fenced``, ``member.left``; a takeover is
  ``<kind>.<op>.taken-over`` with data ``{from, from_epoch, by, by_epoch}``.
* ``witness``: :func:`tests.multihost.witness.read_witness` of every host's file.
* ``nemeses``: what the rig applied (:class:`tests.multihost.rig.NemesisEvent`, CLOCK_MONOTONIC).
* ``feeds``: the lines each ``diskledger watch --json`` subscriber printed.

What each check needs:

===========================  ================================================================
check                        inputs
===========================  ================================================================
dual execution               events (taken-over), witness (the taker's ``claim`` line; the
                             calls of the member taken from)
outcomes                     events
fenced before takeover       events
false takeovers              events (member.joined host/boot_id/lease_ttl, member.fencing),
                             nemeses, the lease ttl
takeover latency             events, witness (the taker's ``takeover`` lines), nemeses (kills),
                             the bound
feed                         one subscriber's lines; the ledger (or its head) to compare with
===========================  ================================================================

When a claim or outcome has no witness line, the times fall back to the event's ``recorded_at``
(the *writer's* wall clock, so wrong under clock skew) mapped to CLOCK_MONOTONIC with
``wall_minus_monotonic`` (``time.time() - CLOCK_MONOTONIC`` sampled by the checker's process),
when given; otherwise the case is counted as unmeasured and noted.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from tests.multihost.witness import CLAIM, WitnessCall

__all__ = [
    "CheckResult",
    "LedgerEvent",
    "Report",
    "Violation",
    "check_all",
    "check_dual_execution",
    "check_false_takeovers",
    "check_feed",
    "check_fenced_before_takeover",
    "check_outcomes",
    "check_takeover_latency",
    "read_ledger",
]

PHASES = frozenset(
    {
        "started",
        "completed",
        "failed",
        "needs-operator",
        "taken-over",
        "compensating",
        "lease-renewed",
    }
)
TERMINAL = frozenset({"completed", "failed"})
MEMBER_PREFIX = "member:"
CLOCK_RATE_TOLERATED = 1.5
"""A clock running slower than 1/1.5 may make a live member miss renewals (research 4.2)."""


class Nemesis(Protocol):
    """What the checker reads of a nemesis (tests.multihost.rig.NemesisEvent)."""

    @property
    def kind(self) -> str: ...
    @property
    def host(self) -> str | None: ...
    @property
    def boot_id(self) -> str | None: ...
    @property
    def t_start(self) -> float: ...
    @property
    def t_end(self) -> float | None: ...
    @property
    def params(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class LedgerEvent:
    position: int
    stream_id: str
    version: int
    type: str
    data: Mapping[str, Any]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    op_id: str | None = None
    recorded_at: str = ""
    prev_hash: str = ""
    hash: str = ""

    @property
    def phase(self) -> str | None:
        """``started`` of ``disk.create.started``; None for facts (``member.joined``)."""
        head, _, last = self.type.rpartition(".")
        return last if head.count(".") >= 1 and last in PHASES else None

    @property
    def member(self) -> str | None:
        """The member id of a ``member:<id>`` stream."""
        return (
            self.stream_id[len(MEMBER_PREFIX) :]
            if self.stream_id.startswith(MEMBER_PREFIX)
            else None
        )

    def wall_time(self) -> float | None:
        try:
            return datetime.fromisoformat(self.recorded_at).timestamp()
        except ValueError:
            return None

    def brief(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "stream": self.stream_id,
            "type": self.type,
            "op_id": self.op_id,
            "data": dict(self.data),
            "recorded_at": self.recorded_at,
        }


def read_ledger(url: str) -> list[LedgerEvent]:
    """Every event of the ledger at SQLAlchemy ``url``, in position order."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT position, stream_id, version, type, data, metadata, op_id, "
                    "recorded_at, prev_hash, hash FROM events ORDER BY position"
                )
            ).all()
    finally:
        engine.dispose()
    return [
        LedgerEvent(
            int(r.position),
            r.stream_id,
            int(r.version),
            r.type,
            json.loads(r.data),
            json.loads(r.metadata),
            r.op_id,
            str(r.recorded_at),
            r.prev_hash,
            r.hash,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Violation:
    check: str
    message: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class CheckResult:
    name: str
    counts: dict[str, float] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def fail(self, message: str, **evidence: Any) -> None:
        self.violations.append(Violation(self.name, message, evidence))

    def count(self, key: str, by: float = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + by


@dataclass
class Report:
    results: list[CheckResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def violations(self) -> list[Violation]:
        return [v for r in self.results for v in r.violations]

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def render(self) -> str:
        lines = [
            f"multi-host check: {'PASS' if self.ok else 'FAIL'} ({len(self.violations)} violations)"
        ]
        for r in self.results:
            counts = ", ".join(f"{k} {_num(v)}" for k, v in r.counts.items()) or "nothing to check"
            lines.append(f"[{'PASS' if r.ok else 'FAIL'}] {r.name}: {counts}")
            for v in r.violations:
                lines.append(f"    VIOLATION {v.message}")
                for key, value in v.evidence.items():
                    lines.append(f"        {key}: {_show(value)}")
            lines.extend(f"    note: {n}" for n in r.notes)
        return "\n".join(lines)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def _show(value: Any) -> str:
    if isinstance(value, WitnessCall):
        return value.describe()
    if isinstance(value, list) and value and isinstance(value[0], WitnessCall):
        return "; ".join(c.describe() for c in value)
    return json.dumps(value, default=str, sort_keys=True)


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    member: str
    epoch: int
    host: str | None
    boot_id: str | None
    lease_ttl: float | None


def _members(events: Sequence[LedgerEvent]) -> dict[str, _Member]:
    found: dict[str, _Member] = {}
    for e in events:
        if e.type == "member.joined" and e.member is not None:
            ttl = e.data.get("lease_ttl")
            found[e.member] = _Member(
                e.member,
                e.position,
                e.data.get("host"),
                e.data.get("boot_id"),
                None if ttl is None else float(ttl),
            )
    return found


def _claim_times(
    events: Sequence[LedgerEvent],
    witness: Sequence[WitnessCall],
    result: CheckResult,
    wall_minus_monotonic: float | None,
) -> list[tuple[LedgerEvent, float | None, WitnessCall | None]]:
    """Each taken-over event with the CLOCK_MONOTONIC time its claim committed."""
    claims = {
        (c.op_id, c.member): c for c in witness if c.call == CLAIM and c.ok and c.t_end is not None
    }
    out: list[tuple[LedgerEvent, float | None, WitnessCall | None]] = []
    for e in events:
        if e.phase != "taken-over" or e.data.get("from") == e.data.get("by"):
            continue  # a member reclaiming its own operation loses it to nobody
        line = claims.get((e.op_id or "", str(e.data.get("by"))))
        if line is not None:
            out.append((e, line.t_end, line))
            continue
        wall = e.wall_time()
        if wall is not None and wall_minus_monotonic is not None:
            result.notes.append(
                f"claim of {e.op_id} at position {e.position} has no witness line: timed by its "
                "recorded_at (the taker's wall clock)"
            )
            out.append((e, wall - wall_minus_monotonic, None))
        else:
            result.notes.append(
                f"claim of {e.op_id} at position {e.position} has no witness line: not timed"
            )
            out.append((e, None, None))
    return out


# -- the checks ------------------------------------------------------------------------------


def check_dual_execution(
    events: Sequence[LedgerEvent],
    witness: Sequence[WitnessCall],
    *,
    wall_minus_monotonic: float | None = None,
) -> CheckResult:
    """No successful mutating call for an operation by a member that started after another
    member's claim (``taken-over`` from it) committed; a taker's calls start after its own claim.

    A zombie's call after the claim that ended ``fenced``/``error`` is counted (refused), one
    that never ended is counted and noted (unconfirmed: its process died mid-call).
    """
    result = CheckResult("dual execution")
    timed = _claim_times(events, witness, result, wall_minus_monotonic)
    # (op_id, member) -> the earliest time that member lost the operation, and the evidence.
    lost: dict[tuple[str, str], tuple[float, LedgerEvent, WitnessCall | None]] = {}
    own_claim: dict[tuple[str, str], float] = {}
    for e, t, line in timed:
        result.count("takeovers")
        if t is None:
            result.count("takeovers not timed")
            continue
        key = (e.op_id or "", str(e.data.get("from")))
        if key not in lost or t < lost[key][0]:
            lost[key] = (t, e, line)
        own_claim.setdefault((e.op_id or "", str(e.data.get("by"))), t)
    for c in witness:
        if not c.mutating:
            continue
        result.count("mutating calls")
        if c.step == "takeover":
            claimed = own_claim.get((c.op_id, c.member))
            if claimed is not None and c.t_start < claimed:
                result.fail(
                    f"{c.member} called {c.call} on {c.op_id} as a taker before its claim committed",
                    call=c,
                    claim_committed=claimed,
                )
        entry = lost.get((c.op_id, c.member))
        if entry is None:
            continue
        t_claim, event, line = entry
        if c.t_start <= t_claim:
            if line is not None and c.t_start > line.t_start and c.ok:
                result.notes.append(
                    f"{c.describe()} started while the claim at position {event.position} was "
                    "being appended (not provably after it)"
                )
            continue
        if c.ok:
            result.count("dual executions")
            result.fail(
                f"{c.member} (epoch {c.epoch}) executed {c.call} on {c.op_id} "
                f"{c.t_start - t_claim:.3f} s after {event.data.get('by')} took it over",
                zombie_call=c,
                takeover=event.brief(),
                claim_committed=t_claim,
                claim_witness=line.describe() if line else None,
            )
        elif c.result is None:
            result.count("unconfirmed calls after takeover")
            result.notes.append(
                f"unconfirmed (process died mid-call) after takeover: {c.describe()}"
            )
        else:
            result.count("refused calls after takeover")
    return result


def check_outcomes(events: Sequence[LedgerEvent]) -> CheckResult:
    """Every intent (``*.started``) ends with exactly one outcome (``completed``/``failed``);
    ``needs-operator`` keeps it pending and is listed apart, not as a violation."""
    result = CheckResult("outcomes")
    by_op: dict[str, list[LedgerEvent]] = defaultdict(list)
    for e in events:
        if e.phase is not None and e.op_id:
            by_op[e.op_id].append(e)
    for op_id, op_events in by_op.items():
        starts = [e for e in op_events if e.phase == "started"]
        ends = [e for e in op_events if e.phase in TERMINAL]
        needs_operator = [e for e in op_events if e.phase == "needs-operator"]
        if starts:
            result.count("intents")
        for e in ends:
            result.count(str(e.phase))
        if not starts:
            if ends:
                result.fail(
                    f"{op_id}: an outcome without an intent", events=[e.brief() for e in ends]
                )
            continue
        if len(starts) > 1:
            result.fail(f"{op_id}: {len(starts)} intents", events=[e.brief() for e in starts])
        if len(ends) > 1:
            result.fail(f"{op_id}: {len(ends)} outcomes", events=[e.brief() for e in ends])
        elif not ends:
            if needs_operator:
                result.count("needs-operator")
                result.notes.append(
                    f"needs-operator: {op_id} ({starts[0].type} at {starts[0].position}, "
                    f"needs-operator at {needs_operator[-1].position}: "
                    f"{json.dumps(dict(needs_operator[-1].data), default=str)})"
                )
            else:
                result.count("lost")
                result.fail(
                    f"{op_id}: intent without an outcome (lost)",
                    intent=starts[0].brief(),
                    later_events=[e.brief() for e in op_events if e is not starts[0]],
                )
        if ends and ends[0].position < starts[0].position:
            result.fail(
                f"{op_id}: outcome before its intent",
                intent=starts[0].brief(),
                outcome=ends[0].brief(),
            )
    return result


def check_fenced_before_takeover(events: Sequence[LedgerEvent]) -> CheckResult:
    """Every ``taken-over`` is preceded by ``member.fenced`` of the member it was taken from,
    and its epochs are the positions of the two members' ``member.joined``."""
    result = CheckResult("fenced before takeover")
    members = _members(events)
    fenced: dict[str, list[int]] = defaultdict(list)
    fencing: dict[str, list[int]] = defaultdict(list)
    for e in events:
        if e.member is not None and e.type == "member.fenced":
            fenced[e.member].append(e.position)
        if e.member is not None and e.type == "member.fencing":
            fencing[e.member].append(e.position)
    for e in events:
        if e.phase != "taken-over":
            continue
        victim, taker = str(e.data.get("from")), str(e.data.get("by"))
        if victim == taker:
            # A member reclaiming its own operation (its outcome append was refused and its
            # next recovery pass settles it): nobody else's, so no fence is due.
            result.count("own reclaims")
            continue
        result.count("takeovers")
        if not any(p < e.position for p in fenced[victim]):
            result.fail(
                f"{e.op_id} taken over from {victim} at position {e.position} without a "
                "member.fenced before it",
                takeover=e.brief(),
                fencing_positions=fencing[victim],
                fenced_positions=fenced[victim],
            )
        for who, key in ((victim, "from_epoch"), (taker, "by_epoch")):
            joined = members.get(who)
            claimed = e.data.get(key)
            if joined is None:
                result.fail(f"{e.op_id}: {who} ({key}) never joined", takeover=e.brief())
            elif claimed is not None and int(claimed) != joined.epoch:
                result.fail(
                    f"{e.op_id}: {key} {claimed} is not {who}'s epoch {joined.epoch}",
                    takeover=e.brief(),
                )
    return result


def _justifies(n: Nemesis, freeze_may_fence: float, now: float) -> str | None:
    """Why nemesis ``n`` may make a member lose its lease, or None when it must not."""
    if n.kind in ("kill", "exit", "link-down"):
        return n.kind
    if n.kind == "freeze":
        length = (n.t_end if n.t_end is not None else now) - n.t_start
        if length >= freeze_may_fence:
            return f"freeze {length:.2f} s >= {freeze_may_fence:g} s"
        return None
    if n.kind == "partition" and "pg" in n.params.get("targets", ()):
        return "partition from PostgreSQL"
    if n.kind == "clock" and float(n.params.get("rate", 1.0)) < 1 / CLOCK_RATE_TOLERATED:
        return f"clock rate x{n.params['rate']}"
    return None


def check_false_takeovers(
    events: Sequence[LedgerEvent],
    nemeses: Sequence[Nemesis],
    *,
    lease_ttl: float,
    freeze_may_fence: float | None = None,
) -> CheckResult:
    """No member is fenced unless its incarnation (host + boot id) suffered a fault that can
    cost a lease: a kill or exit, a freeze of at least ``freeze_may_fence``, a partition from
    PostgreSQL, a pulled link, a clock slower than 1/1.5. Short freezes, Ceph-only
    partitions, clock offsets and nothing at all do not.

    ``freeze_may_fence`` is ``renew_deadline - renew_every`` for members that fence themselves
    (a renewal may be just due as the freeze starts, and the thawed member's deadline counts
    from the last one it sent); default the ttl (the member's ``lease_ttl``, else
    ``lease_ttl``)."""
    result = CheckResult("false takeovers")
    members = _members(events)
    now = max((n.t_end or n.t_start for n in nemeses), default=0.0)
    for e in events:
        if e.type != "member.fencing" or e.member is None:
            continue
        result.count("fencings")
        m = members.get(e.member)
        if m is None:
            result.fail(f"{e.member} fenced but never joined", fencing=e.brief())
            continue
        ttl = m.lease_ttl or lease_ttl
        faults = [
            n
            for n in nemeses
            if n.host == m.host
            and (n.boot_id is None or m.boot_id is None or n.boot_id == m.boot_id)
        ]
        window = ttl if freeze_may_fence is None else min(freeze_may_fence, ttl)
        reasons = [r for n in faults if (r := _justifies(n, window, now)) is not None]
        if reasons:
            result.count("justified")
            continue
        result.fail(
            f"{e.member} on {m.host} was fenced, but its host suffered nothing that costs a lease",
            fencing=e.brief(),
            faults_of_its_host=[
                {"kind": n.kind, "t_start": n.t_start, "t_end": n.t_end, **dict(n.params)}
                for n in faults
            ],
            lease_ttl=ttl,
        )
    return result


def check_takeover_latency(
    events: Sequence[LedgerEvent],
    witness: Sequence[WitnessCall],
    nemeses: Sequence[Nemesis],
    *,
    bound: float,
    wall_minus_monotonic: float | None = None,
) -> CheckResult:
    """For each operation taken over from a member of a killed incarnation: from the kill to the
    takeover's claim (the taker's ``claim`` witness line: the fence is recorded before it; else
    the ``taken-over`` event's ``recorded_at``) is at most ``bound`` seconds, the lease + scans +
    fence the design promises. Settling after the claim is the operation's own work (an import
    re-inspects its copy), timed apart and reported, not bounded."""
    result = CheckResult("takeover latency")
    members = _members(events)
    kills = {(n.host, n.boot_id): n.t_start for n in nemeses if n.kind == "kill"}
    claimed: dict[tuple[str, str], float] = {}
    settled: dict[tuple[str, str], float] = {}
    for c in witness:
        if c.step == "takeover" and c.t_end is not None:
            key = (c.op_id, c.member)
            settled[key] = max(settled.get(key, c.t_end), c.t_end)
            if c.call == CLAIM and c.ok:
                claimed[key] = c.t_end
    latencies: list[float] = []
    settles: list[float] = []
    for e in events:
        if e.phase != "taken-over":
            continue
        victim = members.get(str(e.data.get("from")))
        if victim is None or (victim.host, victim.boot_id) not in kills:
            continue
        t_kill = kills[(victim.host, victim.boot_id)]
        key = (e.op_id or "", str(e.data.get("by")))
        end = claimed.get(key)
        how = "witness"
        if end is None:
            wall = e.wall_time()
            if wall is None or wall_minus_monotonic is None:
                result.count("unmeasured")
                result.notes.append(f"{e.op_id}: no claim witness line and no claim time")
                continue
            end, how = wall - wall_minus_monotonic, "recorded_at"
        if key in settled:
            settles.append(settled[key] - end)
        latency = end - t_kill
        latencies.append(latency)
        if latency > bound:
            result.fail(
                f"{e.op_id}: claimed {latency:.3f} s after {victim.host} was "
                f"killed (bound {bound:g} s; timed by {how})",
                takeover=e.brief(),
                kill_time=t_kill,
                end_time=end,
            )
    if latencies:
        ordered = sorted(latencies)
        result.counts |= {
            "measured": len(ordered),
            "p50 s": statistics.median(ordered),
            "p99 s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
            "max s": ordered[-1],
        }
    if settles:
        result.counts["settle after claim, max s"] = max(settles)
    return result


def check_feed(
    lines: Iterable[str],
    *,
    name: str = "feed",
    events: Sequence[LedgerEvent] | None = None,
    head: int | None = None,
) -> CheckResult:
    """One subscriber's ``diskledger watch --json`` output delivers positions 1..head, each once
    (no duplicate after a resume), with no gap and no hash break (``prev_hash`` = the previous
    line's ``hash``), and the same hashes as the ledger when ``events`` is given. Heartbeat lines
    (``{"heartbeat": N}``) are counted; a torn last line (a killed subscriber) is noted."""
    result = CheckResult(name)
    ledger = {e.position: e for e in events or ()}
    if head is None and events:
        head = events[-1].position
    last_pos, last_hash = 0, None
    seen: dict[int, str] = {}
    parsed = list(lines)
    for index, raw in enumerate(parsed):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            if index == len(parsed) - 1:
                result.notes.append(f"torn last line ignored: {raw[:80]!r}")
            else:
                result.fail(f"line {index + 1} is not JSON", line=raw[:200])
            continue
        if "heartbeat" in obj:
            result.count("heartbeats")
            if isinstance(obj["heartbeat"], int) and obj["heartbeat"] < last_pos:
                result.fail(
                    f"line {index + 1}: heartbeat {obj['heartbeat']} behind delivered {last_pos}"
                )
            continue
        pos, digest = int(obj["position"]), str(obj.get("hash"))
        result.count("events")
        if pos in seen or pos <= last_pos:
            result.count("duplicates")
            same = seen.get(pos) == digest
            result.fail(
                f"line {index + 1}: position {pos} delivered again"
                + ("" if same else " with a different hash"),
                after_position=last_pos,
                line=obj,
            )
            continue
        if pos != last_pos + 1:
            result.count("gaps")
            result.fail(
                f"line {index + 1}: gap, positions {last_pos + 1}..{pos - 1} missing",
                after_position=last_pos,
                line=obj,
            )
        elif last_hash is not None and obj.get("prev_hash") != last_hash:
            result.count("hash breaks")
            result.fail(
                f"line {index + 1}: position {pos} prev_hash {obj.get('prev_hash')} is not the "
                f"hash of {last_pos} ({last_hash})",
                line=obj,
            )
        if ledger and pos in ledger and ledger[pos].hash != digest:
            result.fail(
                f"line {index + 1}: position {pos} hash {digest} differs from the ledger's "
                f"{ledger[pos].hash}",
                line=obj,
            )
        seen[pos] = digest
        last_pos, last_hash = pos, digest
    if head is not None and last_pos < head:
        result.fail(f"positions {last_pos + 1}..{head} never delivered (head {head})")
    result.counts["last position"] = last_pos
    return result


def check_all(
    events: Sequence[LedgerEvent],
    witness: Sequence[WitnessCall],
    nemeses: Sequence[Nemesis],
    *,
    lease_ttl: float,
    latency_bound: float,
    freeze_may_fence: float | None = None,
    feeds: Mapping[str, Iterable[str]] | None = None,
    wall_minus_monotonic: float | None = None,
) -> Report:
    """Every check; ``print(report.render())`` for the readable form."""
    results = [
        check_dual_execution(events, witness, wall_minus_monotonic=wall_minus_monotonic),
        check_outcomes(events),
        check_fenced_before_takeover(events),
        check_false_takeovers(
            events, nemeses, lease_ttl=lease_ttl, freeze_may_fence=freeze_may_fence
        ),
        check_takeover_latency(
            events, witness, nemeses, bound=latency_bound, wall_minus_monotonic=wall_minus_monotonic
        ),
    ]
    for name, lines in (feeds or {}).items():
        results.append(check_feed(lines, name=f"feed {name}", events=events))
    return Report(results)
