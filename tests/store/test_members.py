"""Members and leases in the store: every implementation (SQLite, PostgreSQL) passes these."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from diskledger.errors import ConcurrencyError, Conflict, IllegalTransition
from diskledger.events import Metadata, NewEvent
from diskledger.states import MemberState
from diskledger.store import SqlEventStore, open_store

MEMBER = "member:h1/aaaa"
DISK = "disk:vm-1/root"


@pytest.fixture
def store(ledger_url: str) -> Iterator[SqlEventStore]:
    store = open_store(ledger_url)
    yield store
    store.close()


def fact(event_type: str, **data: object) -> NewEvent:
    return NewEvent(event_type, data, Metadata())


def join(store: SqlEventStore, stream: str = MEMBER, ttl: float = 30.0) -> int:
    (joined,) = store.append(
        stream, 0, [fact("member.joined", host="h1", boot_id="b", pid=1, lease_ttl=ttl)]
    )
    return joined.position


def test_a_members_epoch_is_the_position_of_its_join(store: SqlEventStore) -> None:
    store.append(DISK, 0, [fact("disk.template-bound", template="t")])
    epoch = join(store)
    assert epoch == 2
    (record,) = store.members()
    assert record.member == "h1/aaaa" and record.epoch == epoch
    assert record.view.state is MemberState.LIVE and record.renewals == 0
    assert record.expires_in is not None and 0 < record.expires_in <= 30
    again = store.member(MEMBER)
    assert again is not None and again.view == record.view and again.epoch == epoch
    assert store.member("member:nobody/x") is None


def test_renewal_extends_a_live_lease_and_counts(store: SqlEventStore) -> None:
    join(store, ttl=30.0)
    assert store.renew(MEMBER)
    assert store.renew(MEMBER)
    record = store.member(MEMBER)
    assert record is not None and record.renewals == 2 and not record.lapsed


def test_a_lapsed_lease_cannot_be_renewed(store: SqlEventStore) -> None:
    join(store, ttl=0.05)
    time.sleep(0.2)
    record = store.member(MEMBER)
    assert record is not None and record.lapsed
    assert not store.renew(MEMBER)
    assert not store.renew("member:nobody/x")


def test_fencing_for_an_expired_lease_is_refused_while_the_lease_runs(
    store: SqlEventStore,
) -> None:
    join(store, ttl=30.0)
    fencing = fact("member.fencing", by="h2/bbbb", by_epoch=9, reason="lease-expired")
    with pytest.raises(Conflict, match="has not expired"):
        store.append(MEMBER, 1, [fencing])
    assert store.stream_version(MEMBER) == 1 and store.renew(MEMBER)


def test_once_fencing_began_the_member_cannot_renew(store: SqlEventStore) -> None:
    join(store, ttl=0.05)
    time.sleep(0.2)
    fencing = fact("member.fencing", by="h2/bbbb", by_epoch=9, reason="lease-expired")
    store.append(MEMBER, 1, [fencing])
    record = store.member(MEMBER)
    assert record is not None and record.view.state is MemberState.FENCING
    assert record.view.fencing_by == {"member": "h2/bbbb", "epoch": 9}
    assert not store.renew(MEMBER)
    store.append(MEMBER, 2, [fact("member.fenced", blocklisted=[], osdmap_epoch=None)])
    with pytest.raises(IllegalTransition):
        store.append(MEMBER, 3, [fact("member.client-added", addresses=["1.2.3.4:0/1"])])


def test_two_takers_race_and_exactly_one_begins_fencing(store: SqlEventStore) -> None:
    join(store, ttl=0.05)
    time.sleep(0.2)
    results: list[str] = []
    barrier = threading.Barrier(2)

    def take(by: str) -> None:
        barrier.wait()
        event = fact("member.fencing", by=by, by_epoch=1, reason="lease-expired")
        try:
            store.append(MEMBER, 1, [event])
            results.append("won")
        except ConcurrencyError:
            results.append("lost")

    threads = [threading.Thread(target=take, args=(f"h{i}/x",)) for i in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost", "won"]


def test_the_pending_index_follows_the_owner(store: SqlEventStore) -> None:
    owner = {"member": "h1/aaaa", "epoch": 2}
    intent = NewEvent(
        "disk.create.started",
        {"params": {"size": 1}, "artifacts": [], "owner": owner},
        Metadata(op_id="op-1"),
    )
    (started,) = store.append(DISK, 0, [intent])
    (entry,) = store.pending()
    assert entry.owner == "h1/aaaa" and entry.started_position == started.position
    claim = NewEvent(
        "disk.create.taken-over",
        {"from": "h1/aaaa", "from_epoch": 2, "by": "h2/bbbb", "by_epoch": 5},
        Metadata(op_id="op-1"),
    )
    store.append(DISK, 1, [claim])
    (entry,) = store.pending()
    assert entry.owner == "h2/bbbb" and entry.started_position == started.position
    assert entry.started_at == started.time.isoformat(timespec="microseconds")
    store.append(DISK, 2, [NewEvent("disk.create.failed", {"error": "x"}, Metadata(op_id="op-1"))])
    assert store.pending() == []
