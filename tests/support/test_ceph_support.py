"""The Ceph test support itself: what a failed test reports of the cluster it used, and how a
thawed OSD is brought back to serving."""

from __future__ import annotations

from tests.support.ceph import CephCluster


def test_the_diagnosis_shows_the_daemons_the_monitor_sockets_and_the_health(
    ceph: CephCluster,
) -> None:
    seen = ceph.diagnose()
    assert "mon.a: pid " in seen and "osd.0: pid " in seen, seen
    assert seen.count("LISTEN") >= 2 and '"ceph-mon"' in seen, seen  # msgr2 and msgr1
    assert "HEALTH_" in seen and "quorum a" in seen, seen


def test_the_diagnosis_shows_a_frozen_osd_as_stopped(ceph: CephCluster) -> None:
    ceph.freeze_osd()
    try:
        seen = ceph.diagnose()
        assert "osd.0: pid " in seen and ", state T" in seen, seen
    finally:
        ceph.thaw_osd()


def test_a_re_peered_osd_comes_back_up_and_serves(ceph: CephCluster) -> None:
    ceph.freeze_osd()
    ceph.thaw_osd()
    ceph._repeer()  # what settle() does to a placement group stuck after the thaw
    ceph.rbd("create", "--size", "1M", "diskledger/after-repeer")
    assert ceph.pool_contents() == {"after-repeer"}
    assert ceph._ops_waiting_for_readable() == 0
