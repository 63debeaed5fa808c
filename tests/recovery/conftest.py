"""Fixtures of the crash tests: template images, and a guard against an armed test process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.recovery.helpers import MiB, write_data_image
from tests.support.ceph import CephCluster


@pytest.fixture(autouse=True, scope="session")
def _unarmed_test_process() -> None:
    """Faults are read when diskledger is imported: armed here, they would fire in the test
    process itself, which must only ever kill the CLI processes it starts."""
    if os.environ.get("DISKLEDGER_FAULT"):
        pytest.fail("unset DISKLEDGER_FAULT: the crash tests arm it per CLI process", pytrace=False)


@pytest.fixture(scope="session")
def small_templates(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> dict[str, Path]:
    """16 MiB templates, raw and qcow2, with data in every MiB."""
    directory = tmp_path_factory.mktemp("small-templates")
    raw = write_data_image(directory / "small.raw", 16 * MiB, chunk=64 << 10, every=MiB, seed=1)
    qcow2 = directory / "small.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
        check=True,
        capture_output=True,
    )
    return {"raw": raw, "qcow2": qcow2}


BIG_TEMPLATE_MIB = int(os.environ.get("DISKLEDGER_TORTURE_TEMPLATE_MIB", "256"))


@pytest.fixture(scope="session")
def big_template(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> Path:
    """A raw template whose copies take real time: 1 MiB of random data every 2 MiB (256 MiB
    by default, i.e. 128 MiB of data; ``DISKLEDGER_TORTURE_TEMPLATE_MIB`` changes the size)."""
    directory = tmp_path_factory.mktemp("big-template")
    return write_data_image(
        directory / "big.raw", BIG_TEMPLATE_MIB * MiB, chunk=MiB, every=2 * MiB, seed=2
    )


RBD_TEMPLATE_MIB = int(os.environ.get("DISKLEDGER_TORTURE_RBD_TEMPLATE_MIB", "256"))


@pytest.fixture(scope="session")
def rbd_template(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> Path:
    """The rbd torture's template: 1 MiB of random data every 2 MiB, 256 MiB by default
    (``DISKLEDGER_TORTURE_RBD_TEMPLATE_MIB``), as the file backends' torture has. The operations
    that move data (import, export, flatten, a direct snapshot's copy) then take about half a
    second here, and three kills in four land after the intent and before the outcome (at 64
    MiB, barely one in two); a hundred kills and their recoveries take about 50 s on 2 cores."""
    directory = tmp_path_factory.mktemp("rbd-template")
    return write_data_image(
        directory / "rbd.raw", RBD_TEMPLATE_MIB * MiB, chunk=MiB, every=2 * MiB, seed=3
    )


@pytest.fixture
def rbd_pools(ceph: CephCluster) -> CephCluster:
    """The session's cluster, both pools empty before and after the test (the ``ceph``
    fixture): what a crash test on rbd compares the pools with is its own ledger alone."""
    return ceph
