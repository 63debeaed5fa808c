"""The checker on synthetic ledgers, witness logs and nemesis records: clean runs pass, and each
planted fault is caught with its evidence."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.multihost.checker import (
    LedgerEvent,
    check_all,
    check_dual_execution,
    check_false_takeovers,
    check_feed,
    check_fenced_before_takeover,
    check_outcomes,
    check_takeover_latency,
    read_ledger,
)
from tests.multihost.rig import NemesisEvent, NemesisLog
from tests.multihost.witness import WitnessCall, WitnessWriter, default_fenced, read_witness

A, B = "h1/aaaa", "h2/bbbb"
BOOT_A, BOOT_B = "boot-a", "boot-b"
TTL = 3.0


class Ledger:
    """Builds a ledger the way the store would: positions 1.., versions per stream, a hash chain."""

    def __init__(self) -> None:
        self.events: list[LedgerEvent] = []
        self.versions: dict[str, int] = {}

    def add(
        self, stream: str, type: str, data: dict[str, Any] | None = None, op_id: str | None = None
    ) -> LedgerEvent:
        position = len(self.events) + 1
        version = self.versions.get(stream, 0) + 1
        self.versions[stream] = version
        event = LedgerEvent(
            position,
            stream,
            version,
            type,
            data or {},
            {"op_id": op_id},
            op_id,
            f"2026-01-01T00:00:{position:02d}+00:00",
            self.events[-1].hash if self.events else "0" * 64,
            f"hash{position}",
        )
        self.events.append(event)
        return event

    def drop(self, type: str) -> None:
        self.events = [e for e in self.events if e.type != type]


def call(
    member: str,
    step: str,
    name: str,
    t_start: float,
    t_end: float | None,
    result: str | None,
    op_id: str = "op1",
) -> WitnessCall:
    host = member.split("/", maxsplit=1)[0]
    epoch = 1 if member == A else 2
    return WitnessCall(op_id, "create", member, epoch, step, name, t_start, t_end, result, host, 7)


def takeover_run(fenced: bool = True) -> tuple[Ledger, list[WitnessCall], list[NemesisEvent]]:
    """A on h1 starts op1, h1 is killed at t=12, B fences A and takes op1 over, rolls it back."""
    ledger = Ledger()
    ledger.add(
        f"member:{A}",
        "member.joined",
        {"host": "h1", "boot_id": BOOT_A, "pid": 7, "ceph_clients": [], "lease_ttl": TTL},
    )
    ledger.add(
        f"member:{B}",
        "member.joined",
        {"host": "h2", "boot_id": BOOT_B, "pid": 7, "ceph_clients": [], "lease_ttl": TTL},
    )
    ledger.add("disk:i/d", "disk.create.started", {"owner": {"member": A, "epoch": 1}}, "op1")
    ledger.add(f"member:{A}", "member.fencing", {"by": B, "by_epoch": 2})
    if fenced:
        ledger.add(f"member:{A}", "member.fenced", {"blocklisted": ["10.213.0.11:0/1"]})
    ledger.add(
        "disk:i/d",
        "disk.create.taken-over",
        {"from": A, "from_epoch": 1, "by": B, "by_epoch": 2},
        "op1",
    )
    ledger.add("disk:i/d", "disk.create.failed", {"rolled_back": True}, "op1")
    witness = [
        call(A, "effect", "create", 10.0, 11.0, "ok"),
        call(B, "takeover", "claim", 20.0, 20.1, "ok"),
        call(B, "takeover", "delete", 20.2, 20.5, "ok"),
        call(B, "takeover", "outcome", 20.6, 20.7, "ok"),
    ]
    nemeses = [NemesisEvent("kill", "h1", BOOT_A, 12.0, 12.01)]
    return ledger, witness, nemeses


def test_a_clean_takeover_passes_every_check() -> None:
    ledger, witness, nemeses = takeover_run()
    feed = [
        json.dumps({"position": e.position, "prev_hash": e.prev_hash, "hash": e.hash})
        for e in ledger.events
    ]
    report = check_all(
        ledger.events, witness, nemeses, lease_ttl=TTL, latency_bound=10.0, feeds={"h1": feed}
    )
    assert report.ok, report.render()
    latency = report.result("takeover latency")
    assert latency.counts["measured"] == 1
    assert latency.counts["max s"] == pytest.approx(8.1)  # kill -> claim; settling is apart
    assert "PASS" in report.render()


def test_a_zombie_call_after_the_claim_is_dual_execution() -> None:
    ledger, witness, nemeses = takeover_run()
    zombie = call(A, "effect", "create", 20.3, 20.4, "ok")
    result = check_dual_execution(ledger.events, [*witness, zombie])
    assert not result.ok
    (violation,) = result.violations
    assert violation.evidence["zombie_call"] == zombie
    assert violation.evidence["claim_committed"] == 20.1
    report = check_all(
        ledger.events, [*witness, zombie], nemeses, lease_ttl=TTL, latency_bound=10.0
    )
    assert "VIOLATION h1/aaaa (epoch 1) executed create on op1" in report.render()


def test_a_zombie_call_refused_or_before_the_claim_is_not_dual_execution() -> None:
    ledger, witness, _ = takeover_run()
    refused = call(A, "compensate", "delete", 20.3, 20.4, "fenced")
    unknown = call(A, "effect", "create", 20.5, None, None)
    before = call(A, "effect", "create", 19.0, 19.5, "ok")
    result = check_dual_execution(ledger.events, [*witness, refused, unknown, before])
    assert result.ok, result.violations
    assert result.counts["refused calls after takeover"] == 1
    assert result.counts["unconfirmed calls after takeover"] == 1


def test_a_taker_acting_before_its_claim_is_caught() -> None:
    ledger, witness, _ = takeover_run()
    early = call(B, "takeover", "delete", 19.0, 19.2, "ok")
    result = check_dual_execution(ledger.events, [*witness, early])
    assert [v.message for v in result.violations] == [
        "h2/bbbb called delete on op1 as a taker before its claim committed"
    ]


def test_a_claim_without_a_witness_line_is_timed_by_recorded_at_or_noted() -> None:
    ledger, witness, _ = takeover_run()
    without_claim = [c for c in witness if c.call != "claim"]
    result = check_dual_execution(ledger.events, without_claim)
    assert result.counts["takeovers not timed"] == 1 and result.notes
    taken = next(e for e in ledger.events if e.phase == "taken-over")
    offset = taken.wall_time() - 20.1  # type: ignore[operator]
    zombie = call(A, "effect", "create", 30.0, 30.5, "ok")
    result = check_dual_execution(
        ledger.events, [*without_claim, zombie], wall_minus_monotonic=offset
    )
    assert len(result.violations) == 1


def test_a_takeover_without_a_fence_is_caught() -> None:
    ledger, _, _ = takeover_run(fenced=False)
    result = check_fenced_before_takeover(ledger.events)
    (violation,) = result.violations
    assert "without a member.fenced before it" in violation.message
    assert violation.evidence["fencing_positions"] == [4]


def test_a_fence_after_the_takeover_or_a_wrong_epoch_is_caught() -> None:
    ledger, _, _ = takeover_run(fenced=False)
    ledger.add(f"member:{A}", "member.fenced", {})
    assert not check_fenced_before_takeover(ledger.events).ok
    ledger = Ledger()
    ledger.add(f"member:{A}", "member.joined", {"host": "h1", "boot_id": BOOT_A})
    ledger.add(f"member:{B}", "member.joined", {"host": "h2", "boot_id": BOOT_B})
    ledger.add(f"member:{A}", "member.fenced", {})
    ledger.add(
        "disk:i/d",
        "disk.create.taken-over",
        {"from": A, "from_epoch": 5, "by": B, "by_epoch": 2},
        "op1",
    )
    (violation,) = check_fenced_before_takeover(ledger.events).violations
    assert violation.message == "op1: from_epoch 5 is not h1/aaaa's epoch 1"


def test_outcomes_lost_doubled_and_needs_operator() -> None:
    ledger = Ledger()
    ledger.add("disk:i/a", "disk.create.started", {}, "ok-op")
    ledger.add("disk:i/a", "disk.create.completed", {}, "ok-op")
    ledger.add("disk:i/b", "disk.create.started", {}, "lost-op")
    ledger.add("disk:i/c", "disk.resize.started", {}, "twice")
    ledger.add("disk:i/c", "disk.resize.completed", {}, "twice")
    ledger.add("disk:i/c", "disk.resize.failed", {}, "twice")
    ledger.add("disk:i/d", "disk.resize.started", {}, "stuck")
    ledger.add("disk:i/d", "disk.resize.needs-operator", {"why": "contradictory"}, "stuck")
    ledger.add("disk:i/e", "disk.delete.failed", {}, "orphan")
    result = check_outcomes(ledger.events)
    assert sorted(v.message for v in result.violations) == [
        "lost-op: intent without an outcome (lost)",
        "orphan: an outcome without an intent",
        "twice: 2 outcomes",
    ]
    assert result.counts["needs-operator"] == 1
    assert any("needs-operator: stuck" in note for note in result.notes)


def test_false_takeovers_short_freeze_and_ceph_partition_are_caught() -> None:
    ledger, _, _ = takeover_run()
    short = [NemesisEvent("freeze", "h1", BOOT_A, 10.0, 11.0)]
    ceph_only = [NemesisEvent("partition", "h1", BOOT_A, 10.0, 30.0, {"targets": ["ceph"]})]
    other_host = [NemesisEvent("kill", "h2", BOOT_B, 10.0, 10.1)]
    for nemeses in (short, ceph_only, other_host, []):
        result = check_false_takeovers(ledger.events, nemeses, lease_ttl=TTL)
        (violation,) = result.violations
        assert "suffered nothing that costs a lease" in violation.message
    for nemeses in (
        [NemesisEvent("freeze", "h1", BOOT_A, 10.0, 14.0)],
        [NemesisEvent("partition", "h1", BOOT_A, 10.0, 30.0, {"targets": ["ceph", "pg"]})],
        [NemesisEvent("kill", "h1", BOOT_A, 10.0, 10.1)],
    ):
        assert check_false_takeovers(ledger.events, nemeses, lease_ttl=TTL).ok
    # A member fences itself renew_deadline after the last renewal it sent, so a freeze
    # shorter than a ttl but over renew_deadline - renew_every may cost the lease; half of
    # that may not.
    two_seconds = [NemesisEvent("freeze", "h1", BOOT_A, 10.0, 12.0)]
    assert check_false_takeovers(ledger.events, two_seconds, lease_ttl=TTL, freeze_may_fence=1.5).ok
    brief = [NemesisEvent("freeze", "h1", BOOT_A, 10.0, 10.75)]
    assert not check_false_takeovers(ledger.events, brief, lease_ttl=TTL, freeze_may_fence=1.5).ok
    # A kill of an earlier incarnation of the same host does not justify fencing this one.
    stale = [NemesisEvent("kill", "h1", "an-earlier-boot", 1.0, 1.1)]
    assert not check_false_takeovers(ledger.events, stale, lease_ttl=TTL).ok


def test_takeover_latency_over_the_bound_is_caught() -> None:
    ledger, witness, nemeses = takeover_run()
    result = check_takeover_latency(ledger.events, witness, nemeses, bound=6.5)
    (violation,) = result.violations
    assert "claimed 8.100 s after h1 was killed (bound 6.5 s; timed by witness)" in (
        violation.message
    )


def feed_lines(positions: list[int], broken_at: int | None = None) -> list[str]:
    lines = []
    for p in positions:
        prev = "0" * 64 if p == 1 else f"hash{p - 1}"
        if p == broken_at:
            prev = "something-else"
        lines.append(
            json.dumps(
                {
                    "position": p,
                    "stream": "disk:i/d",
                    "version": p,
                    "type": "t",
                    "prev_hash": prev,
                    "hash": f"hash{p}",
                }
            )
        )
    return lines


def test_feed_clean_with_heartbeats_and_a_torn_last_line_passes() -> None:
    lines = feed_lines([1, 2, 3])
    lines.insert(2, json.dumps({"heartbeat": 2}))
    result = check_feed([*lines, '{"position": 4, "str'], head=3)
    assert result.ok, result.violations
    assert result.counts["heartbeats"] == 1
    assert result.notes and "torn last line" in result.notes[0]


@pytest.mark.parametrize(
    ("positions", "broken_at", "message"),
    [
        ([1, 2, 4, 5], None, "line 3: gap, positions 3..3 missing"),
        ([1, 2, 3, 2, 3, 4, 5], None, "line 4: position 2 delivered again"),
        (
            [1, 2, 3, 4, 5],
            4,
            "line 4: position 4 prev_hash something-else is not the hash of 3 (hash3)",
        ),
        ([1, 2, 3], None, "positions 4..5 never delivered (head 5)"),
        ([2, 3, 4, 5], None, "line 1: gap, positions 1..1 missing"),
    ],
)
def test_feed_faults_are_caught(positions: list[int], broken_at: int | None, message: str) -> None:
    result = check_feed(feed_lines(positions, broken_at), head=5)
    assert result.violations[0].message == message


def test_feed_compared_with_the_ledger() -> None:
    ledger, _, _ = takeover_run()
    lines = [
        json.dumps({"position": e.position, "prev_hash": e.prev_hash, "hash": e.hash})
        for e in ledger.events
    ]
    assert check_feed(lines, events=ledger.events).ok
    forged = json.loads(lines[-1]) | {"hash": "forged"}
    result = check_feed([*lines[:-1], json.dumps(forged)], events=ledger.events)
    assert "differs from the ledger's" in result.violations[0].message


def test_witness_writer_and_reader_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "h1.jsonl"
    with WitnessWriter(path, host="h1", member=A, epoch=1) as writer:
        with writer.call("op1", "create", "effect", "create"):
            pass
        with pytest.raises(OSError), writer.call("op1", "create", "compensate", "delete"):
            raise OSError(errno.ESHUTDOWN, "blocklisted")
        with pytest.raises(ValueError), writer.call("op1", "create", "compensate", "delete"):
            raise ValueError("boom")
        with writer.claim("op2", "resize"):
            pass
        writer.record("op3", "create", "effect", "create", 5.0, None, None)  # killed mid-call
    with path.open("a") as out:
        out.write('{"op_id": "op4", "op": "cre')  # torn by the kill
    calls = read_witness([path])
    assert [(c.op_id, c.call, c.result) for c in calls] == [
        ("op3", "create", None),
        ("op1", "create", "ok"),
        ("op1", "delete", "fenced"),
        ("op1", "delete", "error:ValueError"),
        ("op2", "claim", "ok"),
    ]
    assert all(c.t_end is None or c.t_end >= c.t_start for c in calls)
    assert default_fenced(RuntimeError("x")) is False


def test_nemesis_log_round_trip(tmp_path: Path) -> None:
    log = NemesisLog(tmp_path / "nemeses.jsonl")
    freeze = log.record(NemesisEvent("freeze", "h1", "b", 1.0, None))
    log.record(NemesisEvent("kill", "h2", "c", 2.0, 2.1))
    log.finish(freeze, 4.0)
    loaded = NemesisLog.load(tmp_path / "nemeses.jsonl")
    assert [(e.kind, e.t_end) for e in loaded] == [("freeze", 4.0), ("kill", 2.1)]
    assert loaded == log.events


def test_read_ledger_reads_the_stores_events_table(tmp_path: Path) -> None:
    from diskledger.store import open_store
    from diskledger.store.schema import events

    url = f"sqlite:///{tmp_path}/ledger.db"
    open_store(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            events.insert(),
            [
                {
                    "position": 1,
                    "stream_id": f"member:{A}",
                    "version": 1,
                    "type": "member.joined",
                    "schema": 1,
                    "data": json.dumps({"host": "h1", "boot_id": BOOT_A}),
                    "metadata": json.dumps({"op_id": None}),
                    "op_id": None,
                    "recorded_at": "2026-01-01T00:00:00+00:00",
                    "prev_hash": "0" * 64,
                    "hash": "1" * 64,
                }
            ],
        )
    engine.dispose()
    (event,) = read_ledger(url)
    assert (event.member, event.data["host"], event.phase) == (A, "h1", None)
