"""Members and takeover on a shared PostgreSQL ledger, with real processes killed mid-operation.

Each "host" here is a ``diskledger`` process with its own ``DISKLEDGER_HOST``; the victim is
killed (SIGKILL, by a fault point) with its operation pending, and an engine in this process,
as another host, takes it over under the rule: lease expired by the database's clock, renewals
seen standing for a whole lease, a recorded fence before any claim. The network-namespace rig in
tests/multihost runs the same with whole hosts killed, frozen and cut off.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from diskledger import faults
from diskledger.engine import Config, Engine, takeover
from diskledger.engine.members import Membership
from diskledger.engine.operations.resize import RESIZE
from diskledger.engine.protocol import Plan, perform
from diskledger.engine.settle import settle
from diskledger.engine.takeover import _claim_and_settle
from diskledger.errors import Fenced, OwnershipLost, StoreError
from diskledger.events import TAKEN_OVER, operation_event
from diskledger.states import DiskState, MemberState
from diskledger.states.streams import DISK, member_stream
from diskledger.store import MemberRecord

LEASE = {
    "DISKLEDGER_LEASE_TTL": "1.5",
    "DISKLEDGER_LEASE_RENEW": "0.2",
    "DISKLEDGER_LEASE_DEADLINE": "1.0",
    "DISKLEDGER_TAKEOVER_SCAN": "0.2",
}


@pytest.fixture
def shared(postgres_url: str, tmp_path: Path, qemu_img: None) -> dict[str, str]:
    """The environment of every "host": one ledger, one shared directory of raw files."""
    return {
        "DISKLEDGER_LEDGER": postgres_url,
        "DISKLEDGER_ROOT": str(tmp_path / "shared"),
        "DISKLEDGER_BACKEND": "raw",
        "DISKLEDGER_MEMBERS": "1",
        **LEASE,
    }


def open_host(environ: dict[str, str], host: str, fenced: list[str] | None = None) -> Engine:
    config = Config.load(environ={**environ, "DISKLEDGER_HOST": host})
    engine = Engine.open(config)
    membership = engine.runtime.membership
    assert membership is not None
    if fenced is not None:
        engine.runtime.membership = Membership(
            engine.runtime.store, host, config.lease, on_fenced=fenced.append
        )
    return engine


@pytest.fixture
def taker(shared: dict[str, str]) -> Iterator[Engine]:
    with open_host(shared, "host-a") as engine:
        yield engine


def run_host(environ: dict[str, str], host: str, *argv: str, fault: str = "") -> int:
    env = {**os.environ, **environ, "DISKLEDGER_HOST": host, "DISKLEDGER_FAULT": fault}
    done = subprocess.run(
        [sys.executable, "-m", "diskledger.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode


def take_over_until_settled(engine: Engine, op: str, limit: float = 30.0) -> list[str]:
    """Scan like an agent until the op has an outcome; the event types of its operation."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        engine.take_over()
        types = [e.type for e in engine.store.read_all() if e.type.startswith(f"disk.{op}.")]
        if types and types[-1].rsplit(".", 1)[1] in ("completed", "failed", "needs-operator"):
            return types
        time.sleep(0.2)
    raise AssertionError(f"{op} not settled within {limit} s")


def test_an_intent_names_its_owner_and_the_member_leaves_cleanly(taker: Engine) -> None:
    view = taker.create("vm-1/root", size="1M")
    assert view.state is DiskState.CREATED
    (intent,) = [e for e in taker.history("vm-1/root") if e.type.endswith(".started")]
    (me,) = taker.members()
    assert intent.data["owner"] == {"member": me.member, "epoch": me.epoch}
    assert taker.member == me.member and me.view.host == "host-a"
    taker.close()
    (left,) = Engine.open(Config.load(environ={"DISKLEDGER_LEDGER": taker.store.url})).members()
    assert left.view.state is MemberState.LEFT


def test_a_killed_hosts_publishing_operation_is_fenced_claimed_and_rolled_back(
    shared: dict[str, str], taker: Engine
) -> None:
    code = run_host(
        shared,
        "host-b",
        "disk",
        "create",
        "vm-2/root",
        "--blank",
        "--size",
        "1M",
        fault="create@mid-effect",
    )
    assert code == -9  # SIGKILLed at the fault point, its intent pending
    (entry,) = taker.store.pending()
    victim = entry.owner
    assert victim is not None and victim.startswith("host-b/")
    # Not before its lease ran out by the database's clock and a whole lease of no renewals.
    assert taker.take_over().outcomes == []
    types = take_over_until_settled(taker, "create")
    assert types == ["disk.create.started", "disk.create.taken-over", "disk.create.failed"]
    member_events = [e.type for e in taker.store.read_stream(f"member:{victim}")]
    assert member_events == ["member.joined", "member.fencing", "member.fenced"]
    claim = next(e for e in taker.store.read_all() if e.type == "disk.create.taken-over")
    fenced = taker.store.read_stream(f"member:{victim}")[-1]
    assert fenced.position < claim.position  # a recorded fence precedes every claim
    assert claim.data["from"] == victim and claim.data["by"] == taker.member
    intent = next(e for e in taker.store.read_all() if e.type == "disk.create.started")
    assert (claim.time - intent.time).total_seconds() >= float(LEASE["DISKLEDGER_LEASE_TTL"])
    assert taker.store.pending() == []
    # The temporary was set aside (its publishing rename can never succeed) and stays as the
    # fence's marker; nothing else is left.
    (aside,) = Path(shared["DISKLEDGER_ROOT"]).rglob("*.tmp*")
    assert aside.name.endswith(f".fenced-{claim.data['from_epoch']}")
    assert taker.verify().ok


def test_an_in_place_operation_on_unfenced_files_waits_for_an_operator(
    shared: dict[str, str], taker: Engine
) -> None:
    taker.create("vm-3/root", size="1M")
    code = run_host(
        shared, "host-b", "disk", "resize", "vm-3/root", "2M", fault="resize@mid-effect"
    )
    assert code == -9
    types = take_over_until_settled(taker, "resize")
    assert types[-1] == "disk.resize.needs-operator"
    (entry,) = taker.store.pending()
    assert entry.owner is not None and entry.owner.startswith("host-b/")
    taker.confirm_down(entry.owner)
    report = taker.take_over()
    assert [o.op_id for o in report.outcomes] == [entry.operation.op_id]
    assert taker.store.pending() == []
    assert taker.show("vm-3/root").pending is None


def test_a_member_that_lost_its_lease_fences_itself_and_records_nothing_more(
    shared: dict[str, str], taker: Engine
) -> None:
    fenced: list[str] = []
    zombie = open_host(shared, "host-c", fenced)
    try:
        zombie.create("vm-4/root", size="1M")
        membership = zombie.runtime.membership
        assert membership is not None and membership.joined
        # The database says its lease is gone; a taker fences it. Its heartbeat then fails.
        records = {r.member: r for r in taker.members()}
        assert records[membership.member].view.state is MemberState.LIVE
        membership._stop.set()  # frozen: no renewals, as a SIGSTOPped host
        taken = take_over_until_fenced(taker, membership.member)
        assert taken.view.state is MemberState.FENCED
        assert not membership.renew_now()  # thawed: its first renewal fails...
        assert fenced and membership.fenced is not None  # ...and it fences itself
        with pytest.raises(Fenced):
            zombie.resize("vm-4/root", "2M")
        assert [e.type for e in taker.history("vm-4/root")][-1] == "disk.create.completed"
    finally:
        zombie.close()


def take_over_until_fenced(engine: Engine, member: str, limit: float = 30.0) -> MemberRecord:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        engine.take_over()
        record = next(r for r in engine.members() if r.member == member)
        if record.view.state is MemberState.FENCED:
            return record
        time.sleep(0.2)
    raise AssertionError(f"{member} not fenced within {limit} s")


@pytest.mark.parametrize("effect_ends", ["returns", "raises"])
def test_a_zombie_whose_operation_was_taken_over_records_and_removes_nothing(
    shared: dict[str, str], taker: Engine, effect_ends: str
) -> None:
    fenced: list[str] = []
    zombie = open_host(shared, "host-d", fenced)
    try:
        zombie.create("vm-5/root", size="1M")
        rt = zombie.runtime
        view = zombie.show("vm-5/root")
        claimed = threading.Event()

        def effect() -> dict[str, object]:
            assert claimed.wait(60)
            if effect_ends == "raises":
                raise OSError("the zombie's effect failed late")
            return {"size": 2 << 20}

        params = {
            "size": 2 << 20,
            "previous_size": view.size,
            "location": view.location,
            "format": view.format,
        }
        plan = Plan("disk:vm-5/root", view, rt.backend, "op-zombie", params, effect)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                perform(rt, RESIZE, plan)
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        while not taker.store.pending():
            assert worker.is_alive(), errors
            time.sleep(0.05)
        membership = rt.membership
        assert membership is not None
        membership._stop.set()  # frozen mid-effect
        taker.confirm_down(membership.member)  # the operator powered host-d off (it thinks)
        take_over_until_fenced(taker, membership.member)
        types = [e.type for e in taker.history("vm-5/root")]
        # The disk still has its old size: the taker undid the resize and recorded it.
        assert types[-2:] == ["disk.resize.taken-over", "disk.resize.failed"]
        claimed.set()
        worker.join(60)
        (error,) = errors
        assert isinstance(error, OwnershipLost) or any(
            "no longer ours" in note for note in getattr(error, "__notes__", [])
        )
        assert [e.type for e in taker.history("vm-5/root")] == types  # nothing more recorded
    finally:
        zombie.close()


def test_a_fetch_whose_member_died_is_taken_over_by_the_waiter_and_fetched_again(
    shared: dict[str, str], taker: Engine, template_files: dict[str, Path]
) -> None:
    # The same host name: the victim's process is provably dead, so no lease need run out.
    source = str(template_files["raw"])
    code = run_host(
        shared,
        "host-a",
        *("disk", "create", "vm-6/root", "--template", "base"),
        *("--template-source", source, "--template-format", "raw"),
        fault="fetch@mid-effect",
    )
    assert code == -9
    (entry,) = taker.store.pending()
    assert entry.operation.op == "fetch" and "lease_expires" not in entry.operation.params
    view = taker.ensure_template("base", source, "raw", timeout=60)
    assert view.state.value == "cached"
    types = [e.type for e in taker.store.read_all() if e.type.startswith("template.")]
    assert types == [
        "template.fetch.started",
        "template.fetch.taken-over",
        "template.fetch.failed",
        "template.fetch.started",
        "template.fetch.completed",
    ]
    fencing = next(e for e in taker.store.read_all() if e.type == "member.fencing")
    assert fencing.data["reason"] == "process-dead"


def test_when_most_members_go_stale_at_once_takeover_waits_for_an_operator(
    shared: dict[str, str], taker: Engine
) -> None:
    config = Config.load(environ={**shared, "DISKLEDGER_HOST": "host-x"})
    frozen = []
    for host in ("host-x", "host-y", "host-z"):
        member = Membership(taker.store, host, config.lease, on_fenced=lambda _: None)
        member.owner()  # joined
        member._stop.set()  # and silent from now on, as if the network had gone
        frozen.append(member)
    taker.take_over()  # host-a joins and starts watching
    deadline = time.monotonic() + 30
    while True:
        report = taker.take_over()
        if report.suspended is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert report.suspended == {"stale": sorted(m.member for m in frozen), "live": 4}
    assert report.fenced == [] and report.outcomes == []
    records = {r.member: r for r in taker.members()}
    assert all(records[m.member].view.state is MemberState.LIVE for m in frozen)
    mine = records[str(taker.member)].view
    assert mine.suspended == report.suspended  # recorded, once
    taker.take_over()
    suspensions = [
        e
        for e in taker.store.read_stream(f"member:{taker.member}")
        if e.type == "member.takeover-suspended"
    ]
    assert len(suspensions) == 1
    # An operator confirms one host is down: that one, and only that one, is taken over.
    taker.confirm_down(frozen[0].member)
    report = taker.take_over()
    assert [f["member"] for f in report.fenced] == [frozen[0].member]
    states = {r.member: r.view.state for r in taker.members()}
    assert states[frozen[0].member] is MemberState.FENCED
    assert states[frozen[1].member] is MemberState.LIVE


def test_a_zombies_late_failure_claims_first_loses_and_touches_nothing(
    shared: dict[str, str], taker: Engine
) -> None:
    """The hazard: a fenced process whose effect failed late ran its compensation (probe,
    decide, remove) and only then found its ledger append refused, after another member had
    settled the operation. Now it claims (``compensating``) before it removes or records
    anything: it loses the claim (``OwnershipLost``, not a failed outcome append) and stops."""
    zombie = open_host(shared, "host-e", [])
    published = threading.Event()
    claimed = threading.Event()
    backend = zombie.runtime.backend
    create = backend.create

    def create_then_stall(*args: Any, **kwargs: Any) -> Any:
        seen = create(*args, **kwargs)  # the disk is published under its final name
        published.set()
        assert claimed.wait(60)  # frozen until another member has taken over
        return seen

    errors: list[BaseException] = []

    def run() -> None:
        try:
            with faults.armed("create@after-effect:eio"):  # and then it fails late
                zombie.create("vm-7/root", size="1M")
        except BaseException as exc:
            errors.append(exc)

    backend.create = create_then_stall  # type: ignore[method-assign]
    worker = threading.Thread(target=run)
    try:
        worker.start()
        assert published.wait(60), errors
        membership = zombie.runtime.membership
        assert membership is not None
        membership._stop.set()
        taker.confirm_down(membership.member)
        take_over_until_fenced(taker, membership.member)
        assert [e.type for e in taker.history("vm-7/root")][-2:] == [
            "disk.create.taken-over",
            "disk.create.completed",
        ]
        location = taker.show("vm-7/root").location
        assert location is not None and Path(location).exists()
        claimed.set()
        worker.join(60)
        (error,) = errors
        assert "no longer ours" in " ".join(getattr(error, "__notes__", []))
        assert Path(location).exists()  # the zombie removed nothing
        assert [e.type for e in taker.history("vm-7/root")][-1] == "disk.create.completed"
        assert taker.verify().ok
    finally:
        claimed.set()
        worker.join(60)
        zombie.close()


def test_a_member_whose_renewal_hangs_fences_itself_at_its_deadline(
    shared: dict[str, str], taker: Engine
) -> None:
    """A partition does not refuse a renewal, it leaves it hanging: the deadline must not wait
    for the renewal to come back. Here the renewal hangs on the member's own row, locked by
    another session (as a stalled writer would hold it), for longer than the deadline."""
    fenced: list[str] = []
    config = Config.load(environ={**shared, "DISKLEDGER_HOST": "host-f"})
    member = Membership(taker.store, "host-f", config.lease, on_fenced=fenced.append)
    member.owner()
    url = sa.make_url(shared["DISKLEDGER_LEDGER"]).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as holder:
        holder.execute("SELECT 1 FROM members WHERE stream_id = %s FOR UPDATE", (member.stream,))
        deadline = time.monotonic() + 30
        while not fenced and time.monotonic() < deadline:
            time.sleep(0.05)
        # The fence came while the renewal still hung on the lock (it would have been ended by
        # the session's lock_timeout, 5 s, had the member waited for it).
        (hanging,) = holder.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'UPDATE members SET expires_at%%'"
        ).fetchone() or (0,)
        holder.rollback()
    assert fenced and "could not renew" in fenced[0]
    assert hanging == 1


def test_an_outcome_the_ledger_refused_is_settled_by_the_same_process_next_pass(
    shared: dict[str, str], taker: Engine
) -> None:
    """The effect ran, but its outcome append failed (the ledger head stayed locked past the
    lock timeout, as a partitioned writer holds it): the process lives on, so no other member may
    settle the operation; its own next recovery pass must, instead of leaving it pending."""
    taker.create("vm-8/root", size="1M")
    rt = taker.runtime
    view = taker.show("vm-8/root")
    effect_done = threading.Event()
    locked = threading.Event()

    def effect() -> dict[str, object]:
        effect_done.set()
        assert locked.wait(60)
        return {"size": 2 << 20}

    params = {
        "size": 2 << 20,
        "previous_size": view.size,
        "location": view.location,
        "format": view.format,
    }
    plan = Plan("disk:vm-8/root", view, rt.backend, "op-refused", params, effect)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            perform(rt, RESIZE, plan)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    url = sa.make_url(shared["DISKLEDGER_LEDGER"]).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as holder:
        assert effect_done.wait(60)
        holder.execute("SELECT 1 FROM ledger_head FOR UPDATE")
        locked.set()
        worker.join(60)
        holder.rollback()
    (error,) = errors
    assert isinstance(error, StoreError) and "lock timeout" in str(error)
    assert [e.operation.op_id for e in taker.store.pending()] == ["op-refused"]
    report = taker.recover()
    assert [o.op_id for o in report.rolled_back] == ["op-refused"]  # the disk kept its size
    assert taker.store.pending() == []
    types = [e.type for e in taker.history("vm-8/root")][-3:]
    assert types == ["disk.resize.started", "disk.resize.taken-over", "disk.resize.failed"]


def test_a_claimed_operation_whose_settle_failed_is_settled_by_the_takers_next_pass(
    shared: dict[str, str], taker: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the chaos run: a taker claimed an operation, then the ledger restarted under its
    settle. The claim made the operation the taker's, so no other member may settle it while the
    taker lives; the taker's own next recovery pass must, instead of taking it for one of its
    own still running (it stayed pending 30.8 s, until the taker's process exited)."""
    code = run_host(
        shared, "host-h", "disk", "create", "vm-9/root", "--blank", "--size", "1M",
        fault="create@mid-effect",
    )  # fmt: skip
    assert code == -9
    failures: list[str] = []

    def settle_once_refused(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append("refused")
            raise StoreError("ledger append failed: terminating connection due to administrator")
        return settle(*args, **kwargs)

    monkeypatch.setattr(takeover, "settle", settle_once_refused)
    deadline = time.monotonic() + 30
    while not failures and time.monotonic() < deadline:
        taker.take_over()
        time.sleep(0.2)
    assert failures == ["refused"]
    (entry,) = taker.store.pending()
    assert entry.owner == taker.member  # claimed: the taker's own now
    taker.recover()
    assert taker.store.pending() == []
    events = taker.history("vm-9/root")
    assert [e.type for e in events] == [
        "disk.create.started",
        "disk.create.taken-over",  # from host-h
        "disk.create.taken-over",  # reclaimed by the taker's own recovery: a new run
        "disk.create.failed",
    ]
    assert events[2].data["from"] == events[2].data["by"] == taker.member


def test_the_self_fence_does_not_wait_for_an_append_hanging_in_the_same_partition(
    shared: dict[str, str], taker: Engine
) -> None:
    """In a partition every call to the ledger hangs, an append on the member's own stream
    (registering a Ceph client) as much as the renewal: the deadline must not wait for either."""
    fenced: list[str] = []
    config = Config.load(environ={**shared, "DISKLEDGER_HOST": "host-g"})
    member = Membership(taker.store, "host-g", config.lease, on_fenced=fenced.append)
    member.owner()
    url = sa.make_url(shared["DISKLEDGER_LEDGER"]).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as holder:
        holder.execute("SELECT 1 FROM ledger_head FOR UPDATE")
        holder.execute("SELECT 1 FROM members WHERE stream_id = %s FOR UPDATE", (member.stream,))
        registering = threading.Thread(target=lambda: _quietly(member.register_clients, ["a:0/1"]))
        registering.start()
        deadline = time.monotonic() + 30
        while not fenced and time.monotonic() < deadline:
            time.sleep(0.05)
        (hanging,) = holder.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone() or (0,)
        holder.rollback()
    registering.join(60)
    assert fenced and "could not renew" in fenced[0]
    assert hanging == 2  # the renewal and the append were both still waiting


def _quietly(call: Any, *args: Any) -> None:
    with contextlib.suppress(Exception):
        call(*args)


def test_a_taker_with_a_stale_pending_index_does_not_claim_a_claimed_operation(
    shared: dict[str, str], taker: Engine
) -> None:
    """E5 of the chaos runs: a taker that read the pending index before another taker's claim
    re-read the view (whose version includes that claim), checked only the op id, and claimed
    the operation again from the member its stale index named: two members then settled it."""
    code = run_host(
        shared, "host-b", "disk", "create", "vm-9/root", "--blank", "--size", "1M",
        fault="create@mid-effect",
    )  # fmt: skip
    assert code == -9
    (stale,) = taker.store.pending()
    assert stale.owner is not None
    victim = taker.store.member(member_stream(stale.owner))
    assert victim is not None
    with open_host(shared, "host-c") as first:
        first_owner = first.runtime.owner()
        assert first_owner is not None
        view = first.store.disk(stale.stream)
        assert view is not None
        claim = operation_event(
            DISK,
            "create",
            TAKEN_OVER,
            {
                "from": victim.member,
                "from_epoch": victim.epoch,
                "by": first_owner["member"],
                "by_epoch": first_owner["epoch"],
            },
            first.runtime.recovery_metadata(stale.operation.op_id, "first-taker"),
        )
        first.store.append(stale.stream, view.version, [claim])  # claimed, still settling
        me = taker.runtime.membership
        assert me is not None
        assert _claim_and_settle(taker.runtime, me, victim, stale) is None
        types = [e.type for e in taker.history("vm-9/root")]
        assert types == ["disk.create.started", "disk.create.taken-over"]
        (entry,) = taker.store.pending()
        assert entry.owner == first_owner["member"]
