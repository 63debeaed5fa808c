"""Fencing members on the real one-node Ceph cluster: what a blocklisted client does next.

A member of a multi-host deployment is fenced on storage by blocklisting its client addresses
(``osd blocklist add``). These tests blocklist a backend's client the way another host would and
look at what the backend does with its next request, as the cluster sees it (client.admin's view:
``ceph osd blocklist ls``, ``rbd info``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskledger.backends import Artifact, ArtifactKind, CephConfig, RbdBackend
from diskledger.errors import CephUnavailable
from tests.backends.helpers import MiB
from tests.backends.rbd_helpers import ceph_admin, image_info
from tests.support.ceph import POOL, USER, CephCluster

IMAGE = ArtifactKind.RBD_IMAGE


def restricted(ceph: CephCluster) -> CephConfig:
    config = ceph.ceph_config(op_timeout=5.0, retry_budget=5.0)
    assert config.user == USER  # never admin in the code path under test
    return config


class Blocklist:
    """client.admin's hand on the OSD blocklist; every entry a test adds is removed after it."""

    def __init__(self, ceph: CephCluster) -> None:
        self.ceph = ceph
        self.added: set[str] = set()

    def add(self, address: str) -> None:
        """Blocklist ``address`` and make sure the OSD knows before returning: the OSD gets the
        new map from the monitor in its own time, but processes a request only with a map at
        least as new as the one its sender holds, so an admin request sent with the latest map
        makes the OSD catch up first (there is one OSD; both pools live on it)."""
        self.added.add(address)
        ceph_admin(self.ceph, "osd", "blocklist", "add", address, "600")
        self.sync()

    def sync(self) -> None:
        import rados

        cluster = rados.Rados(
            conffile=str(self.ceph.conf),
            rados_id="admin",
            conf={"keyring": str(self.ceph.admin_keyring)},
        )
        cluster.connect(timeout=10)
        try:
            cluster.wait_for_latest_osdmap()
            ioctx = cluster.open_ioctx(POOL)
            try:
                with pytest.raises(rados.ObjectNotFound):
                    ioctx.stat("diskledger-test-osdmap-sync")
            finally:
                ioctx.close()
        finally:
            cluster.shutdown()

    def listed(self) -> set[str]:
        # Pacific prints two JSON arrays back to back: the addresses, then the CIDR ranges.
        out = ceph_admin(self.ceph, "osd", "blocklist", "ls", "-f", "json")
        entries, _ = json.JSONDecoder().raw_decode(out.strip())
        return {str(entry["addr"]) for entry in entries}

    def clear(self) -> None:
        for address in sorted(self.added | self.listed()):
            ceph_admin(self.ceph, "osd", "blocklist", "rm", address)


@pytest.fixture
def blocklist(ceph: CephCluster) -> Iterator[Blocklist]:
    hand = Blocklist(ceph)
    yield hand
    hand.clear()


@pytest.fixture
def backend(ceph: CephCluster, tmp_path: Path) -> Iterator[RbdBackend]:
    made = RbdBackend(str(tmp_path), restricted(ceph))
    yield made
    made.close()


def blank_disk(backend: RbdBackend, name: str = "disk0") -> str:
    location = backend.disk_location("vm1", name)
    backend.create(location, f"op-create-{name}", size=MiB, template=None)
    return location


def current_address(backend: RbdBackend) -> str:
    address: str = backend.cluster._connected().get_addrs()
    return address


# -- the hazard: without a registrar, a fenced process unfences itself -----------------------


def test_without_a_registrar_a_blocklisted_backend_comes_back_under_a_new_address(
    ceph: CephCluster, backend: RbdBackend, blocklist: Blocklist
) -> None:
    """Single-host mode, as it always was: the request that meets the blocklist fails, and the
    next one opens a new connection, whose new nonce is not blocklisted, and succeeds. For a
    member of a multi-host deployment that is a fenced process unfencing itself."""
    location = blank_disk(backend)
    fenced = current_address(backend)
    blocklist.add(fenced)

    with pytest.raises(CephUnavailable, match="lost its connection"):
        backend.probe([Artifact(IMAGE, location)])
    backend.resize(location, "raw", 2 * MiB)

    assert current_address(backend) != fenced
    assert fenced in blocklist.listed()
    assert image_info(ceph, location)["size"] == 2 * MiB
