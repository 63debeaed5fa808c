"""The property-based harness (diskledger.testing) on the file backends (on parallels, growing a
disk is a request the engine must refuse: ``Capability.FIXED_SIZE``), on RBD, and with a libvirt
domain that disks are attached to; and most of its steps are real operations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from diskledger.backends import DiskSource, RawBackend, SourceKind
from diskledger.testing import (
    STATS,
    Harness,
    HarnessStats,
    RbdStorage,
    budget,
    lifecycle_test_case,
    run_lifecycle,
)
from tests.support.ceph import CephCluster
from tests.support.libvirt import Domains

TestRawLifecycle = lifecycle_test_case(Harness("raw", backend="raw"))
TestQcow2Lifecycle = lifecycle_test_case(Harness("qcow2", backend="qcow2"))
TestParallelsLifecycle = lifecycle_test_case(Harness("parallels", backend="parallels"))


def rbd_harness(ceph: CephCluster) -> Harness:
    """The harness on the cluster as the restricted client; guest bytes are read and written as
    client.admin, through librbd."""
    return Harness(
        "rbd",
        backend="rbd",
        environ=ceph.environ(),
        reset=ceph.purge,
        storage=lambda root: RbdStorage.for_config(
            ceph.ceph_config(), user="admin", keyring=ceph.admin_keyring
        ),
    )


def test_rbd_lifecycle(ceph: CephCluster) -> None:
    run_lifecycle(rbd_harness(ceph))


def test_lifecycle_with_a_domain(domains: Domains, libvirt_root: Path, qemu_img: None) -> None:
    """qcow2 disks attached to a running KVM domain (hot-plugged on its virtio-scsi controller),
    resized through it while attached, refused what would change them under it, detached."""
    domain = domains.boot(scsi=True)
    run_lifecycle(
        Harness(
            "libvirt",
            backend="qcow2",
            environ={"DISKLEDGER_DETACH_TIMEOUT": "5"},
            domain=domain.name(),
            workdir=libvirt_root,
        )
    )
    assert domain.isActive()


def test_most_steps_are_real_operations(qemu_img: None) -> None:
    """At least half of all steps run an operation the engine carries out (not a request it
    refuses, a guest write, a crash, a recovery, a repeated key): on a fixed budget, so the
    figure is the same every run."""
    before = dataclasses.replace(STATS)
    run_lifecycle(
        Harness("ratio", backend=RawBackend),
        settings=budget(max_examples=10, stateful_step_count=30, derandomize=True),
    )
    done = HarnessStats(
        **{
            f.name: getattr(STATS, f.name) - getattr(before, f.name)
            for f in dataclasses.fields(STATS)
        }
    )
    assert done.operations >= done.steps / 2, done.line()


class DisksOverTheNetwork(RawBackend):
    """Files, but described as network disks: the harness cannot know where to read them."""

    def disk_source(self, location: str, *, addresses: bool = True) -> DiskSource:
        return DiskSource(SourceKind.NETWORK, protocol="rbd", name=location)


def test_a_backend_whose_disks_are_not_files_needs_a_storage(qemu_img: None) -> None:
    with pytest.raises(ValueError, match="give the harness a storage="):
        run_lifecycle(
            Harness("network", backend=DisksOverTheNetwork), settings=budget(max_examples=1)
        )
