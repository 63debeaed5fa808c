"""The property-based harness (diskledger.testing) on the file backends and on RBD."""

from __future__ import annotations

from diskledger.testing import Harness, lifecycle_test_case, run_lifecycle
from tests.support.ceph import CephCluster

TestRawLifecycle = lifecycle_test_case(Harness("raw", backend="raw"))
TestQcow2Lifecycle = lifecycle_test_case(Harness("qcow2", backend="qcow2"))


def test_rbd_lifecycle(ceph: CephCluster) -> None:
    run_lifecycle(Harness("rbd", backend="rbd", environ=ceph.environ(), reset=ceph.purge))
