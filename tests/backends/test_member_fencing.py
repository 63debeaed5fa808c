"""Fencing members on the real one-node Ceph cluster: what a blocklisted client does next.

A member of a multi-host deployment is fenced on storage by blocklisting its client addresses
(``osd blocklist add``). These tests blocklist a backend's client the way another host would
(client.admin, or another member's ``fence_member``) and look at what the backend does with its
next request, as the cluster sees it (client.admin's view: ``ceph osd blocklist ls``, ``rbd
info``): without a registrar it comes back under a new address (the hazard); in member mode every
connection is registered before use and a blocklisted one raises ``Fenced`` for good. Each
"member" is a backend with a librados connection of its own, as on two hosts. Every blocklist
entry a test makes is removed after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from diskledger import faults
from diskledger.backends import (
    Artifact,
    ArtifactKind,
    CephConfig,
    FencesMembers,
    RbdBackend,
    SetsAside,
)
from diskledger.errors import (
    CephError,
    CephUnavailable,
    ConcurrencyError,
    Fenced,
    InvalidInput,
    StorageIOError,
)
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


# -- member mode: every connection registered, a blocklisted one final -----------------------


class Registry:
    """What a member's registrar and fence handler were told, in order."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.refuse = refuse
        self.connections: list[list[str]] = []
        self.fenced: list[str] = []

    def on_connect(self, addresses: Sequence[str]) -> None:
        self.connections.append(list(addresses))
        if self.refuse is not None:
            raise self.refuse

    def on_fenced(self, reason: str) -> None:
        self.fenced.append(reason)


def member(ceph: CephCluster, root: Path, registry: Registry) -> RbdBackend:
    return RbdBackend(
        str(root),
        restricted(ceph),
        on_connect=registry.on_connect,
        on_fenced=registry.on_fenced,
    )


@pytest.fixture
def members(ceph: CephCluster, tmp_path: Path) -> Iterator[list[RbdBackend]]:
    """Backends made by the test, closed after it."""
    made: list[RbdBackend] = []
    yield made
    for backend in made:
        backend.close()


def test_a_member_registers_each_connection_before_it_serves_a_request(
    ceph: CephCluster, tmp_path: Path, members: list[RbdBackend]
) -> None:
    """The registrar gets the new client's addresses first (what a fence blocklists); the
    request then runs on exactly that client."""
    registry = Registry()
    backend = member(ceph, tmp_path, registry)
    members.append(backend)
    assert registry.connections == []  # connected lazily

    location = blank_disk(backend)

    assert len(registry.connections) == 1
    assert registry.connections[0] == backend.client_addresses() == [current_address(backend)]
    assert image_info(ceph, location)["size"] == MiB
    assert len(registry.connections) == 1  # one connection, registered once


def test_a_connection_the_registrar_refuses_is_shut_down_unused(
    ceph: CephCluster, tmp_path: Path, members: list[RbdBackend]
) -> None:
    """The registrar's error reaches the caller as it raised it, nothing was done in the pool,
    and the refused connection is not kept: the next request connects (and registers) anew."""
    refusal = ConcurrencyError("member:host/1234", 3, 4)
    registry = Registry(refuse=refusal)
    backend = member(ceph, tmp_path, registry)
    members.append(backend)
    location = backend.disk_location("vm1", "disk0")

    with pytest.raises(ConcurrencyError) as raised:
        backend.create(location, "op-create", size=MiB, template=None)
    assert raised.value is refusal
    assert ceph.pool_contents() == set()

    registry.refuse = None
    backend.create(location, "op-create", size=MiB, template=None)
    assert len(registry.connections) == 2
    assert registry.connections[0] != registry.connections[1]
    assert backend.client_addresses() == registry.connections[1]


def test_a_member_reconnects_only_through_its_registrar(
    ceph: CephCluster, tmp_path: Path, members: list[RbdBackend]
) -> None:
    """A connection retired without a fence (what ENOTCONN does) is replaced, and the new one
    is registered before use; so is the first one after entering member mode late."""
    backend = RbdBackend(str(tmp_path), restricted(ceph))
    members.append(backend)
    location = blank_disk(backend)
    unregistered = backend.client_addresses()

    registry = Registry()
    backend.set_registrar(registry.on_connect, on_fenced=registry.on_fenced)
    backend.resize(location, "raw", 2 * MiB)
    backend.cluster.reset()
    backend.resize(location, "raw", 3 * MiB)

    assert len(registry.connections) == 2
    assert unregistered not in registry.connections
    assert registry.connections[0] != registry.connections[1]
    assert backend.client_addresses() == registry.connections[1]
    assert registry.fenced == []


def test_a_blocklisted_member_stays_fenced(
    ceph: CephCluster, tmp_path: Path, members: list[RbdBackend], blocklist: Blocklist
) -> None:
    """The request that meets the blocklist raises Fenced, the fence handler hears of it once,
    and every later call raises Fenced, monitor-only ones too: no new connection, no new
    nonce, no silent unfencing."""
    registry = Registry()
    backend = member(ceph, tmp_path, registry)
    members.append(backend)
    location = blank_disk(backend)
    (fenced,) = backend.client_addresses()
    blocklist.add(fenced)

    with pytest.raises(Fenced, match="blocklisted"):
        backend.resize(location, "raw", 2 * MiB)
    for call in (
        lambda: backend.resize(location, "raw", 2 * MiB),
        lambda: backend.probe([Artifact(IMAGE, location)]),
        backend.client_addresses,
        backend.cluster.fsid,
        backend.cluster.monitors,
    ):
        with pytest.raises(Fenced):
            call()

    assert len(registry.fenced) == 1
    assert registry.connections == [[fenced]]
    assert backend.cluster.fenced is not None
    assert image_info(ceph, location)["size"] == MiB


# -- one member fences another -----------------------------------------------------------------


def test_a_member_fences_another_on_storage_and_takes_its_image_over(
    ceph: CephCluster, tmp_path: Path, members: list[RbdBackend], blocklist: Blocklist
) -> None:
    """Two members, each with its own connection (as if on two hosts). The taker blocklists
    the victim's registered client and, once ``fence_member`` returns, the victim's next write
    is refused (Fenced, and it never reconnects) while the taker removes the victim's image."""
    victim_registry, taker_registry = Registry(), Registry()
    victim = member(ceph, tmp_path / "victim", victim_registry)
    taker = member(ceph, tmp_path / "taker", taker_registry)
    members.extend((victim, taker))
    location = blank_disk(victim)
    (victim_client,) = victim_registry.connections[0]
    blocklist.added.add(victim_client)  # removed after the test

    done = taker.fence_member([victim_client])

    assert done["blocklisted"] == [victim_client]
    assert isinstance(done["osdmap_epoch"], int) and done["osdmap_epoch"] > 0
    assert victim_client in blocklist.listed()
    # What the taker does next is ordered after the fence: it probes the image, then the victim
    # tries to write to it.
    (seen,) = taker.probe([Artifact(IMAGE, location)])
    assert seen.exists and seen.size == MiB
    with pytest.raises(Fenced):
        victim.resize(location, "raw", 2 * MiB)
    with pytest.raises(Fenced):
        victim.create(victim.disk_location("vm1", "disk1"), "op-2", size=MiB, template=None)
    assert len(victim_registry.fenced) == 1
    assert len(victim_registry.connections) == 1  # never reconnected

    taker.delete(location, "raw", [])
    assert ceph.pool_contents() == set()
    assert image_info_or_none(ceph, location) is None
    assert taker_registry.fenced == []

    # Idempotent: fencing again renews the entry and changes nothing else.
    again = taker.fence_member([victim_client])
    assert again["blocklisted"] == [victim_client]
    assert again["osdmap_epoch"] >= done["osdmap_epoch"]


def test_a_fenced_zombie_fences_nobody(
    ceph: CephCluster, tmp_path: Path, members: list[RbdBackend], blocklist: Blocklist
) -> None:
    """A member blocklisted before it noticed (the monitors still answer it) proves itself with
    one OSD request first: it gets Fenced, and the member it meant to fence is not blocklisted."""
    zombie_registry = Registry()
    zombie = member(ceph, tmp_path / "zombie", zombie_registry)
    other = member(ceph, tmp_path / "other", Registry())
    members.extend((zombie, other))
    (zombie_client,) = zombie.client_addresses()
    (other_client,) = other.client_addresses()
    blocklist.add(zombie_client)

    with pytest.raises(Fenced):
        zombie.fence_member([other_client])

    assert other_client not in blocklist.listed()
    assert len(zombie_registry.fenced) == 1


def test_a_fence_names_clients_never_a_whole_host_unless_told(
    ceph: CephCluster, tmp_path: Path, members: list[RbdBackend], blocklist: Blocklist
) -> None:
    """An address without a nonce, or a bare IP, would cut off every client of the host (its
    VMs too): refused unless ``scope="host-ip"``, which widens each address to its IP. Nothing
    names this process itself. Refusals blocklist nothing."""
    taker = member(ceph, tmp_path, Registry())
    members.append(taker)
    (own,) = taker.client_addresses()
    before = blocklist.listed()

    for address in ("127.0.0.2:0/0", "127.0.0.2", "v2:127.0.0.2:0/0", "not-an-address", "1.2.3"):
        with pytest.raises(InvalidInput):
            taker.fence_member([address])
    with pytest.raises(InvalidInput, match="own"):
        taker.fence_member([own])
    with pytest.raises(InvalidInput, match="own"):
        taker.fence_member(["127.0.0.1"], scope="host-ip")  # this host's IP: ours too
    with pytest.raises(InvalidInput):
        taker.fence_member(["127.0.0.2:0/7"], scope="everything")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        taker.fence_member(["127.0.0.2:0/7"], expire_seconds=0)
    assert blocklist.listed() == before

    blocklist.added.update({"127.0.0.2:0/0", "127.0.0.3:0/99"})
    done = taker.fence_member(
        ["v2:127.0.0.3:0/99", "127.0.0.3:0/99"], expire_seconds=60
    )  # typed prefix dropped, duplicates once
    assert done["blocklisted"] == ["127.0.0.3:0/99"]
    widened = taker.fence_member(["127.0.0.2:0/1234", "127.0.0.2"], scope="host-ip")
    assert widened["blocklisted"] == ["127.0.0.2:0/0"]
    assert {"127.0.0.2:0/0", "127.0.0.3:0/99"} <= blocklist.listed()


def test_unfencing_lifts_the_fence_with_the_right_caps_only(
    ceph: CephCluster, tmp_path: Path, members: list[RbdBackend], blocklist: Blocklist
) -> None:
    """``mon 'profile rbd'`` may add to the blocklist, not remove from it: unfencing needs
    ``allow command "osd blocklist" with blocklistop=rm`` as well. With it, a client the fence
    cut off is served again (a plain librados client here: a member's backend stays fenced for
    good, by design). Unfencing what is not blocklisted is fine."""
    import rados

    victim = rados.Rados(
        conffile=str(ceph.conf), rados_id=USER, conf={"keyring": str(ceph.keyring)}
    )
    victim.connect(timeout=10)
    try:
        (address,) = victim.get_addrs().strip("[]").split(",")
        blocklist.added.add(address)
        restricted_taker = member(ceph, tmp_path / "restricted", Registry())
        fencer = RbdBackend(str(tmp_path / "fencer"), fencer_config(ceph, tmp_path))
        members.extend((restricted_taker, fencer))

        restricted_taker.fence_member([address])
        restricted_taker.probe([Artifact(IMAGE, f"{POOL}/nothing")])  # the OSD has the map
        ioctx = victim.open_ioctx(POOL)
        try:
            with pytest.raises(rados.ConnectionShutdown):
                ioctx.stat("anything")

            with pytest.raises(CephError, match="permission denied"):
                restricted_taker.unfence_member([address])
            assert address in blocklist.listed()

            done = fencer.unfence_member([address])
            assert done["unblocklisted"] == [address]
            assert address not in blocklist.listed()
            fencer.probe([Artifact(IMAGE, f"{POOL}/nothing")])
            with pytest.raises(rados.ObjectNotFound):
                ioctx.stat("anything")  # served again
            assert fencer.unfence_member([address])["unblocklisted"] == [address]
        finally:
            ioctx.close()
    finally:
        victim.shutdown()


FENCER = "diskledger-fencer"


def fencer_config(ceph: CephCluster, tmp_path: Path) -> CephConfig:
    """A client with diskledger's caps plus the removal of blocklist entries (made once per
    cluster; ``get-or-create`` returns the existing key after that)."""
    keyring = tmp_path / f"client.{FENCER}.keyring"
    ceph_admin(
        ceph,
        "auth",
        "get-or-create",
        f"client.{FENCER}",
        "mon",
        'profile rbd, allow command "osd blocklist" with blocklistop=rm',
        "osd",
        f"profile rbd pool={POOL}",
        "-o",
        str(keyring),
    )
    return CephConfig(
        conf=str(ceph.conf),
        pool=POOL,
        user=FENCER,
        keyring=str(keyring),
        op_timeout=5.0,
        retry_budget=5.0,
    )


def image_info_or_none(ceph: CephCluster, location: str) -> dict[str, Any] | None:
    try:
        return image_info(ceph, location)
    except RuntimeError:
        return None


# -- what the blocklist does not cover: rbd's temporary files -----------------------------------


def test_rbd_sets_aside_its_temporary_files_and_leaves_its_images_to_the_fence(
    ceph: CephCluster,
    backend: RbdBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An export has read the image and is about to publish its file: no Ceph request is left
    for a blocklist to refuse. The taker sets the file aside and the publish fails; asked to
    set aside a temporary image, the backend leaves it to ``fence_member``."""
    assert isinstance(backend, SetsAside) and isinstance(backend, FencesMembers)
    location = blank_disk(backend)
    target = str(tmp_path / "exports" / "disk0.raw")
    os.makedirs(os.path.dirname(target))
    artifacts = backend.export_artifacts(target, "op-export")
    temp_image = Artifact(IMAGE, f"{location}.tmp-op-other", temporary=True)
    moved: list[str] = []
    real = faults.reach

    def reach(point: str, op: str) -> None:
        if (point, op) == ("mid-effect", "export"):
            moved.extend(backend.set_aside((*artifacts, temp_image), "epoch-7"))
        real(point, op)

    monkeypatch.setattr(faults, "reach", reach)

    with pytest.raises(StorageIOError):
        backend.export(location, "raw", target, "raw", "op-export")

    assert moved == [f"{target}.tmp-op-export.fenced-epoch-7"]
    assert os.listdir(os.path.dirname(target)) == ["disk0.raw.tmp-op-export.fenced-epoch-7"]
    assert ceph.pool_contents() == {image_name(location)}


def image_name(location: str) -> str:
    return location.partition("/")[2]
