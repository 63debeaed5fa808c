"""The rig's self-tests: real namespaces, PostgreSQL and Ceph in the core namespace, stand-in
workers (tests/multihost/stand_in.py) on the hosts, and each nemesis shown to do what it says."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.multihost.rig import CEPH, PG, Cluster, Host, HostProcess, monotonic
from tests.multihost.witness import WitnessCall, read_witness
from tests.support.postgres import pid_alive

pytestmark = pytest.mark.multihost


def stand_in(host: Host, mode: str, *args: str, seconds: float = 30) -> HostProcess:
    argv = [sys.executable, "-m", "tests.multihost.stand_in", mode, "--seconds", str(seconds)]
    return host.spawn([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def calls(
    host: Host, call: str, result: str | None = "ok", since: float = 0.0
) -> list[WitnessCall]:
    if not host.witness_path.exists():
        return []
    return [
        c
        for c in read_witness([host.witness_path])
        if c.call == call and c.t_start >= since and (result is None or c.result == result)
    ]


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = monotonic() + timeout
    while not condition():
        if monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def first_json_line(process: HostProcess) -> dict[str, object]:
    assert process.popen.stdout is not None
    line = process.popen.stdout.readline()
    assert line, f"no output; stderr: {process.popen.stderr.read() if process.popen.stderr else ''}"
    loaded: dict[str, object] = json.loads(line)
    return loaded


def test_hosts_reach_postgres_and_ceph_from_their_own_addresses(rig: Cluster) -> None:
    h1, h2, _ = rig.hosts
    with rig.postgres.connect() as conn:
        before = conn.execute("SELECT count(*) FROM stand_in").fetchone()
    workers = [stand_in(h, "pg", seconds=2) for h in (h1, h2)]
    for w in workers:
        assert w.wait(30) == 0
    with rig.postgres.connect() as conn:
        rows = conn.execute("SELECT host, count(*) FROM stand_in GROUP BY host").fetchall()
    assert {host for host, _ in rows} >= {"h1", "h2"}
    assert before is not None
    # Ceph clients: each host's client has that host's address (distinct per host).
    addrs = {}
    for h in (h1, h2):
        process = stand_in(h, "addrs")
        addrs[h.name] = str(first_json_line(process)["addrs"])
        assert process.wait(30) == 0
    assert addrs["h1"].startswith(f"{h1.address}:"), addrs
    assert addrs["h2"].startswith(f"{h2.address}:"), addrs


def test_blocklisting_one_hosts_client_does_not_touch_another_host(rig: Cluster) -> None:
    h1, h2, _ = rig.hosts
    w1, w2 = stand_in(h1, "rados", "--interval", "0.1"), stand_in(h2, "rados", "--interval", "0.1")
    a1 = str(first_json_line(w1)["addrs"])
    first_json_line(w2)
    wait_until(
        "both rados workers writing",
        lambda: bool(calls(h1, "rados_put")) and bool(calls(h2, "rados_put")),
    )
    # Exactly h1's worker's client (address and nonce) is blocklisted.
    rig.ceph_admin("osd", "blocklist", "add", a1, "600")
    try:
        t = monotonic()
        wait_until("h1's worker fenced", lambda: bool(calls(h1, "rados_put", "fenced", since=t)))
        t_fenced = monotonic()
        wait_until("h2 still writing", lambda: len(calls(h2, "rados_put", since=t_fenced)) >= 3)
        assert not calls(h1, "rados_put", "ok", since=t_fenced + 1.0)
        # A new client on h1 has a new nonce and is not blocklisted (the reconnect hazard) ...
        assert (
            rig.rados(h1, "-p", "diskledger", "put", "rig-new-client", "-", input="x").returncode
            == 0
        )
        # ... unless the whole address is: then h1 is cut off and h2 is not.
        rig.ceph_admin("osd", "blocklist", "add", f"{h1.address}:0/0", "600")
        time.sleep(0.5)
        cut = rig.rados(h1, "-p", "diskledger", "put", "rig-h1", "-", input="x")
        assert cut.returncode != 0, cut
        assert rig.rados(h2, "-p", "diskledger", "put", "rig-h2", "-", input="x").returncode == 0
    finally:
        rig.ceph_admin("osd", "blocklist", "rm", a1)
        rig.ceph_admin("osd", "blocklist", "rm", f"{h1.address}:0/0")
    assert rig.rados(h1, "-p", "diskledger", "put", "rig-h1", "-", input="x").returncode == 0


def test_kill_host_kills_every_process_of_the_host_and_only_those(rig: Cluster) -> None:
    h1, h2, _ = rig.hosts
    tree = stand_in(h1, "tree", "--interval", "0.1")
    first_json_line(tree)  # its child and grandchild are running
    stand_in(h1, "pg")
    other = stand_in(h2, "tree", "--interval", "0.1")
    first_json_line(other)
    old_boot = h1.boot_id
    pids = h1.pids()
    # sh+unshare, init, 2 x nsenter, 2 workers, sleep, sh, sleep
    assert len(pids) >= 8, pids
    event = rig.kill_host(h1)
    assert h1.pids() == []
    assert not [pid for pid in pids if pid_alive(pid)]
    assert tree.returncode is not None
    assert event.kind == "kill" and event.boot_id == old_boot
    assert other.poll() is None and h2.pids()
    # The next spawn boots a new incarnation.
    again = stand_in(h1, "tree", seconds=1)
    assert h1.boot_id not in (None, old_boot)
    first_json_line(again)


def test_freeze_stops_progress_and_thaw_resumes(rig: Cluster) -> None:
    h1 = rig.hosts[0]
    stand_in(h1, "pg", "--interval", "0.02")
    wait_until("inserts", lambda: len(calls(h1, "pg_insert")) >= 5)
    rig.freeze(h1)
    assert h1.frozen
    frozen_at = len(calls(h1, "pg_insert", result=None))
    time.sleep(1.0)
    assert len(calls(h1, "pg_insert", result=None)) == frozen_at
    event = rig.thaw(h1)
    assert event is not None and event.t_end is not None and event.t_end - event.t_start >= 1.0
    t = monotonic()
    wait_until("inserts after the thaw", lambda: len(calls(h1, "pg_insert", since=t)) >= 5, 5)
    # freeze(seconds=) blocks, then thaws
    event = rig.freeze(h1, seconds=0.3)
    assert event is not None and not h1.frozen and event.t_end is not None


def test_partition_from_postgres_spares_ceph_and_the_other_way_round(rig: Cluster) -> None:
    h1 = rig.hosts[0]
    stand_in(h1, "pg", "--interval", "0.05")
    rados = stand_in(h1, "rados", "--interval", "0.05")
    first_json_line(rados)
    wait_until(
        "both workers", lambda: bool(calls(h1, "pg_insert")) and bool(calls(h1, "rados_put"))
    )

    for cut, spared in ((PG, "rados_put"), (CEPH, "pg_insert")):
        blocked = "pg_insert" if cut == PG else "rados_put"
        rig.partition(h1, {cut})
        time.sleep(0.3)  # a call already answered may still end
        t = monotonic()
        time.sleep(2.0)
        assert not calls(h1, blocked, since=t), f"{blocked} went through a {cut} partition"
        assert len(calls(h1, spared, since=t)) >= 5, f"{spared} stalled by a {cut} partition"
        event = rig.heal(h1)
        assert event is not None and event.params["targets"] == [cut]
        t = monotonic()
        wait_until(f"{blocked} after healing", lambda: bool(calls(h1, blocked, since=t)), 12)  # noqa: B023


def test_link_down_cuts_everything(rig: Cluster) -> None:
    h1 = rig.hosts[0]
    stand_in(h1, "pg", "--interval", "0.05")
    wait_until("inserts", lambda: bool(calls(h1, "pg_insert")))
    rig.link_down(h1)
    time.sleep(0.3)
    t = monotonic()
    time.sleep(1.5)
    assert not calls(h1, "pg_insert", since=t)
    rig.link_up(h1)
    t = monotonic()
    wait_until("inserts after the link is back", lambda: bool(calls(h1, "pg_insert", since=t)), 12)


def test_restart_postgres_drops_sessions_and_comes_back(rig: Cluster) -> None:
    h1 = rig.hosts[0]
    stand_in(h1, "pg", "--interval", "0.05")
    wait_until("inserts", lambda: len(calls(h1, "pg_insert")) >= 3)
    with rig.postgres.connect("postgres") as conn:
        before = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    event = rig.restart_postgres()
    assert event.t_end is not None
    with rig.postgres.connect("postgres") as conn:
        after = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert before != after
    wait_until(
        "the worker to see its session closed",
        lambda: any(str(c.result).startswith("error:") for c in calls(h1, "pg_insert", None)),
        10,
    )
    wait_until(
        "inserts after the restart",
        lambda: bool(calls(h1, "pg_insert", since=event.t_end or 0)),
        10,
    )


def test_terminate_listeners_ends_a_listening_session(rig: Cluster) -> None:
    h2 = rig.hosts[1]
    listener = stand_in(h2, "listen")
    wait_until("LISTEN", lambda: bool(calls(h2, "listen")))
    event = rig.terminate_listeners()
    assert event.params["terminated"] == 1, event
    assert listener.wait(10) == 3
    (ended,) = calls(h2, "wait", result=None)
    assert ended.result is not None and ended.result.startswith("error:")


def test_faketime_skews_the_wall_clock_only(rig: Cluster) -> None:
    h2, h3 = rig.hosts[1], rig.hosts[2]
    rig.set_clock(h3, offset=600)
    for h in (h2, h3):
        stand_in(h, "tree", "--interval", "0.1")  # time.sleep under libfaketime works
    wait_until("ticks", lambda: len(calls(h3, "tick")) >= 3 and len(calls(h2, "tick")) >= 3)
    here = time.time() - monotonic()

    def skew(host: Host, since: float = 0.0) -> list[float]:
        return [float(c.extra["wall"]) - c.t_start - here for c in calls(host, "tick", since=since)]

    assert all(abs(s) < 0.5 for s in skew(h2)), skew(h2)
    assert all(abs(s - 600) < 0.5 for s in skew(h3)), skew(h3)
    # CLOCK_MONOTONIC is the real one: the lines were written within this test's time.
    assert all(0 < monotonic() - c.t_start < 30 for c in calls(h3, "tick"))
    # A new skew reaches running processes within a few seconds: with FAKETIME_CACHE_DURATION=1
    # libfaketime re-reads the file once the cache is more than one *whole* second old, which
    # is up to three seconds after the write (a fixed 1.5 s wait failed in CI).
    changed = monotonic()
    rig.set_clock(h3, offset=-300)
    wait_until("the new skew", lambda: any(abs(s + 300) < 0.5 for s in skew(h3, since=changed)), 10)
    t = monotonic()
    wait_until("ticks after the change", lambda: len(calls(h3, "tick", since=t)) >= 3)
    assert all(abs(s + 300) < 0.5 for s in skew(h3, since=t)), skew(h3, since=t)
    assert [e.kind for e in rig.nemeses.events] == ["clock", "clock"]
