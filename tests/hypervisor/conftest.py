"""Engines whose disks real KVM domains open: file disks under ``libvirt_root``, rbd disks on the
session's cluster with the libvirt ceph secret defined from the restricted client's key; and the
root image a real OS boots from (``root_image``, tests/support/rootfs.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskledger import Config, Engine
from tests.support.ceph import CephCluster
from tests.support.guest import GuestUnavailable
from tests.support.libvirt import Domains
from tests.support.rootfs import RootImage, build

SECRET_UUID = "5d1b2f0e-8a44-4c1b-9d1e-6c0f3a9e7b21"


def open_engine(root: Path, backend: str, environ: dict[str, str] | None = None) -> Engine:
    settings = {"DISKLEDGER_DETACH_TIMEOUT": "3", **(environ or {})}
    return Engine.open(Config.load(root=root, backend=backend, environ=settings))


@pytest.fixture
def rbd_libvirt_environ(ceph: CephCluster) -> dict[str, str]:
    return {**ceph.environ(), "DISKLEDGER_RBD_SECRET_UUID": SECRET_UUID}


@pytest.fixture(params=["raw", "qcow2", "rbd"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(
    request: pytest.FixtureRequest,
    backend_name: str,
    libvirt_root: Path,
    tmp_path: Path,
    qemu_img: None,
) -> Iterator[Engine]:
    """An engine of each backend, with everything a domain needs to open its disks: file disks
    under a root qemu can reach, rbd disks with the ceph secret defined (and removed after).

    The cluster is set up before ``domains``, so that the domains are destroyed (and let go of
    their images) before the pools are emptied."""
    if backend_name != "rbd":
        with open_engine(libvirt_root, backend_name) as opened:
            yield opened
        return
    environ = request.getfixturevalue("rbd_libvirt_environ")
    booted: Domains = request.getfixturevalue("domains")
    with open_engine(tmp_path / "root", "rbd", environ) as opened:
        booted.track_secret(opened.define_ceph_secret())
        yield opened


@pytest.fixture(scope="session")
def root_image() -> RootImage:
    """The kernel, initramfs and ext4 root image of the real-OS guest, built once per recipe
    (tests/support/rootfs.py). Skipped when it cannot be built here, except under CI=true, where
    that is a failure."""
    try:
        return build()
    except GuestUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc}; under CI=true a missing component is a failure", pytrace=False)
        pytest.skip(str(exc))
