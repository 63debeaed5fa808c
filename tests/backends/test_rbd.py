"""The backend contract and the reference's RBD behaviours, on a real one-node Ceph cluster.

``TestRbdContract`` runs the contract every backend passes (``diskledger.testing.BackendContract``:
create, resize, snapshots, rollback, delete, export, import, probe, remove, flatten, direct
snapshot, crashes mid-effect); the tests below it are what only RBD does: names in the pool,
clones of protected template snapshots, protection, watchers, clones that refuse a removal, caps,
pools, error translation and the retry policies.

Every backend here runs as the restricted ``client.diskledger`` (``mon 'profile rbd'``, ``osd
'profile rbd'`` on the two pools): that client is enough for everything diskledger does. The
tests look at the pools as client.admin (``RbdStorage`` for the contract; ``ceph.rbd``,
``ceph.pool_contents``, ``rbd_helpers`` here) and move data through librbd or qemu's own rbd
driver (``qemu-io`` on ``rbd:pool/image:...``), so what is asserted is what the cluster holds.
"""

from __future__ import annotations

import errno
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import rados
import rbd

from diskledger import faults
from diskledger.backends import (
    Artifact,
    ArtifactKind,
    Backend,
    CephConfig,
    DirectSnapshots,
    Flattens,
    RbdBackend,
    RbdTemplateStore,
    TemplateSource,
    TemplateStore,
)
from diskledger.backends.contract import ClonesInPlace
from diskledger.backends.rbd import TEMPLATE_SNAPSHOT
from diskledger.backends.rbd.cluster import Cluster
from diskledger.backends.rbd.policies import translate
from diskledger.errors import (
    BackendError,
    CephError,
    CephUnavailable,
    ImageBusy,
    StorageIOError,
    UnsafeImage,
)
from diskledger.testing import BackendContract, RbdStorage, StorageAccess
from tests.backends.helpers import MiB, make_image
from tests.backends.rbd_helpers import (
    admin_ioctx,
    ceph_admin,
    has_pattern,
    image_info,
    snapshots,
    temporaries,
    watched,
    write_pattern,
)
from tests.support.ceph import POOL, SNAPSHOT_POOL, USER, CephCluster

IMAGE = ArtifactKind.RBD_IMAGE
CLONE = ArtifactKind.RBD_CLONE
SNAPSHOT = ArtifactKind.RBD_SNAPSHOT
RAW = "raw"
TEMPLATE_ID = "tpl"


def restricted(ceph: CephCluster, **overrides: float) -> CephConfig:
    config = ceph.ceph_config(**overrides)
    # Never admin in the code path under test.
    assert config.user == USER and config.keyring == str(ceph.keyring)
    return config


@pytest.fixture(scope="module")
def quick_monitor(ceph_cluster: CephCluster) -> Iterator[None]:
    """Each snapshot created or removed takes a snapshot id from the monitor, and the monitor
    batches map changes for ``paxos_propose_interval`` (1 s by default): back to back, every
    snapshot call waited about a second. Shorter batching changes no behaviour, only the wait;
    set for this module, restored afterwards."""
    ceph_admin(ceph_cluster, "config", "set", "mon", "paxos_propose_interval", "0.05")
    yield
    ceph_admin(ceph_cluster, "config", "rm", "mon", "paxos_propose_interval")


@pytest.fixture
def ceph(ceph: CephCluster, quick_monitor: None) -> Iterator[CephCluster]:
    yield ceph
    ceph.purge()


@pytest.fixture
def backend(ceph: CephCluster, tmp_path: Path) -> Iterator[RbdBackend]:
    backend = RbdBackend(str(tmp_path), restricted(ceph))
    yield backend
    backend.cluster.close()


@pytest.fixture
def store(backend: RbdBackend, tmp_path: Path) -> RbdTemplateStore:
    return RbdTemplateStore(str(tmp_path), backend)


@pytest.fixture
def template(store: RbdTemplateStore, tmp_path: Path) -> TemplateSource:
    """A 1 MiB template imported from a qcow2 source, holding 0x11 in its first 64 KiB."""
    source = tmp_path / "sources" / "template.qcow2"
    source.parent.mkdir()
    make_image(source, "qcow2", MiB, pattern=0x11)
    seen = store.import_file(str(source), "qcow2", TEMPLATE_ID, "op-fetch")
    assert seen.size == MiB
    return TemplateSource(seen.artifact.location, RAW, MiB)


def new_disk(backend: RbdBackend, size: int = MiB, name: str = "disk0") -> str:
    location = backend.disk_location("vm1", name)
    backend.create(location, f"op-create-{name}", size=size, template=None)
    return location


def image(location: str) -> str:
    return location.partition("/")[2]


def fsid(ceph: CephCluster) -> str:
    match = re.search(r"^fsid = (\S+)$", ceph.conf.read_text(), re.MULTILINE)
    assert match is not None
    return match.group(1)


def clone_as_admin(ceph: CephCluster, parent: str, child: str, *, clone_format: int = 1) -> None:
    """A clone diskledger does not own (another tenant's, or one made by hand)."""
    ceph.rbd("clone", "--rbd-default-clone-format", str(clone_format), parent, child)


# -- the protocols ---------------------------------------------------------------------------


def test_satisfies_the_protocols(
    backend: RbdBackend, store: RbdTemplateStore, ceph: CephCluster
) -> None:
    assert isinstance(backend, Backend)
    assert isinstance(backend, Flattens) and isinstance(backend, DirectSnapshots)
    assert isinstance(store, TemplateStore)
    assert backend.disk_format == RAW and store.cached_format("qcow2") == RAW
    assert store.scope == f"ceph-{fsid(ceph)}.{POOL}"


# -- the contract ----------------------------------------------------------------------------


class TestRbdContract(BackendContract):
    """The contract every backend passes, on the cluster as the restricted client; the tests
    look at the pools as client.admin, through librbd (``RbdStorage``)."""

    @pytest.fixture
    def backend(self, ceph: CephCluster, tmp_path: Path) -> Iterator[Backend]:
        backend = RbdBackend(str(tmp_path), restricted(ceph))
        yield backend
        backend.close()

    @pytest.fixture
    def storage(self, ceph: CephCluster, tmp_path: Path) -> Iterator[StorageAccess]:
        config = restricted(ceph)
        with RbdStorage.for_config(
            config, user="admin", keyring=ceph.admin_keyring, root=tmp_path
        ) as storage:
            assert set(storage.pools) == {POOL, SNAPSHOT_POOL}
            yield storage

    @pytest.fixture
    def template_store(self, backend: RbdBackend, tmp_path: Path) -> TemplateStore:
        return RbdTemplateStore(str(tmp_path), backend)

    def template_backing(self, template: TemplateSource) -> str:
        return f"{template.location}@{TEMPLATE_SNAPSHOT}"


# -- names -----------------------------------------------------------------------------------


def test_names_of_disks_their_snapshots_and_temporaries(backend: RbdBackend) -> None:
    location = backend.disk_location("vm1", "disk0")
    assert location == f"{POOL}/vm1~disk0"

    temp, final = backend.create_artifacts(location, "op1")
    assert temp.temporary and temp.kind is IMAGE and ".tmp-op1" in temp.location
    assert final == Artifact(IMAGE, location)
    staged, temp, final = backend.import_artifacts(location, "op-import")
    assert staged.kind is ArtifactKind.FILE and staged.temporary
    assert temp.temporary and temp.kind is IMAGE
    assert final == Artifact(IMAGE, location)
    # One librbd call makes a snapshot or not, and rolls back in place: nothing temporary.
    assert backend.snapshot_artifacts(location, "s1", "op-snap") == (
        Artifact(SNAPSHOT, location, "s1"),
    )
    assert backend.rollback_artifacts(location, "s1", "op-rollback") == ()
    assert backend.disk_artifacts(location, ["s1"]) == (
        Artifact(IMAGE, location),
        Artifact(SNAPSHOT, location, "s1"),
    )


# -- create ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_template_import(
    store: RbdTemplateStore, ceph: CephCluster, tmp_path: Path, fmt: str
) -> None:
    source = tmp_path / f"source.{fmt}"
    make_image(source, fmt, MiB, pattern=0x11)
    location = store.location(TEMPLATE_ID)
    assert location == f"{POOL}/_base~{TEMPLATE_ID}"
    staged, temp, final = store.import_artifacts(TEMPLATE_ID, "op-fetch")
    assert staged.kind is ArtifactKind.FILE and staged.temporary and temp.temporary
    assert final == Artifact(IMAGE, location)

    seen = store.import_file(str(source), fmt, TEMPLATE_ID, "op-fetch")

    assert seen.exists and seen.artifact == final
    assert (seen.size, seen.format, seen.backing) == (MiB, RAW, None)
    assert seen.snapshots == (TEMPLATE_SNAPSHOT,)
    assert ceph.pool_contents() == {f"_base~{TEMPLATE_ID}", f"_base~{TEMPLATE_ID}@snap"}
    assert snapshots(ceph, location) == {"snap": True}
    # Converted to raw: the bytes read as raw are the guest's, not a qcow2 header.
    spec = store.backend.rbd.spec(location)
    assert has_pattern(spec, 0x11) and has_pattern(spec, 0x00, offset=MiB - 64 * 1024)
    assert store.observe(TEMPLATE_ID, RAW) == seen
    assert not Path(staged.location).exists()

    # Already cached: observed, not imported again (a larger source changes nothing).
    bigger = tmp_path / "bigger.raw"
    make_image(bigger, "raw", 2 * MiB, pattern=0x22)
    assert store.import_file(str(bigger), "raw", TEMPLATE_ID, "op-fetch2") == seen
    assert has_pattern(spec, 0x11)
    assert temporaries(ceph) == set()


def test_template_import_refuses_a_backing_file(
    store: RbdTemplateStore, ceph: CephCluster, tmp_path: Path
) -> None:
    base = tmp_path / "base.raw"
    make_image(base, "raw", MiB)
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay)],
        check=True,
        capture_output=True,
    )
    artifacts = store.import_artifacts(TEMPLATE_ID, "op-fetch")

    with pytest.raises(UnsafeImage, match="backing"):
        store.import_file(str(overlay), "qcow2", TEMPLATE_ID, "op-fetch")

    store.backend.remove(artifacts)  # the compensation
    assert not any(o.exists for o in store.backend.probe(artifacts))
    assert ceph.pool_contents() == set()


@pytest.mark.parametrize("size", [None, 3 * MiB])
def test_disks_are_clones_of_the_templates_protected_snapshot(
    backend: RbdBackend, template: TemplateSource, ceph: CephCluster, size: int | None
) -> None:
    location = backend.disk_location("vm1", "disk0")

    seen = backend.create(location, "op1", size=size, template=template)

    assert seen.backing == f"{POOL}/_base~{TEMPLATE_ID}@snap"
    parent = image_info(ceph, location)["parent"]
    assert (parent["pool"], parent["image"], parent["snapshot"]) == (
        POOL,
        f"_base~{TEMPLATE_ID}",
        "snap",
    )
    assert snapshots(ceph, template.location) == {"snap": True}
    assert ceph.pool_contents() == {"vm1~disk0", "_base~tpl", "_base~tpl@snap"}


# -- clones in place (ClonesInPlace) ---------------------------------------------------------


def test_a_clone_in_place_is_one_clone_under_the_final_name(
    backend: RbdBackend, template: TemplateSource, ceph: CephCluster
) -> None:
    """No temporary name, no rename; what it returns is what a fresh look sees."""
    assert isinstance(backend, ClonesInPlace)
    location = backend.disk_location("vm1", "disk0")
    clone, final = backend.clone_artifacts(location, "op1", template)
    assert clone == Artifact(CLONE, location, f"{template.location}@snap", temporary=True)
    assert final == Artifact(IMAGE, location) == backend.disk_artifacts(location, ())[0]

    seen = backend.clone_template(location, "op1", template)

    assert seen == backend.probe([final])[0]
    assert seen.size == MiB and seen.backing == f"{POOL}/_base~{TEMPLATE_ID}@snap"
    assert ceph.pool_contents() == {"vm1~disk0", "_base~tpl", "_base~tpl@snap"}
    assert has_pattern(backend.rbd.spec(location), 0x11)
    # Probed together, as recovery does: the disk is whole, nothing is cut short.
    assert [o.exists for o in backend.probe([clone, final])] == [False, True]
    backend.remove([clone])  # what a roll-forward removes: a whole clone stays
    assert ceph.pool_contents() == {"vm1~disk0", "_base~tpl", "_base~tpl@snap"}
    # A retried call finds its own whole clone and observes it.
    assert backend.clone_template(location, "op1", template) == seen


def _id_object_only(ceph: CephCluster, name: str) -> None:
    """What a clone killed after its first write leaves: ``rbd_id.<name>``, nothing else."""
    with admin_ioctx(ceph) as ioctx:
        ioctx.write_full(f"rbd_id.{name}", b"\x0c\x00\x00\x00123456789abc")


def _no_parent(ceph: CephCluster, name: str) -> None:
    """Killed after the child's header was written, before its parent was attached."""
    ceph.rbd("create", "--size", "1M", f"{POOL}/{name}")


def _not_listed_by_its_parent(ceph: CephCluster, name: str) -> None:
    """Killed after the parent was attached, before the child was attached to the parent: a v1
    clone whose entry in ``rbd_children`` is missing."""
    clone_as_admin(ceph, f"{POOL}/_base~{TEMPLATE_ID}@snap", f"{POOL}/{name}", clone_format=1)
    with admin_ioctx(ceph) as ioctx:
        ioctx.remove_object("rbd_children")  # the template's only clone


CUT_SHORT = {
    "id-object": _id_object_only,
    "no-parent": _no_parent,
    "not-listed": _not_listed_by_its_parent,
}


@pytest.mark.parametrize("state", CUT_SHORT)
def test_a_clone_in_place_cut_short_is_told_and_removed(
    state: str, backend: RbdBackend, template: TemplateSource, ceph: CephCluster
) -> None:
    """Each state a clone killed part way can leave under the final name: recovery's probe
    (the intent's artifacts together) reports the clone, not the disk; removing the named
    artifacts leaves nothing, not even an ``rbd_id`` object; the name can be cloned again."""
    location = backend.disk_location("vm1", "disk0")
    named = backend.clone_artifacts(location, "op1", template)
    final = named[1]
    CUT_SHORT[state](ceph, image(location))

    assert [o.exists for o in backend.probe(named)] == [True, False]
    assert backend.probe([final])[0].exists is (state != "id-object")  # alone: what is there
    with pytest.raises(CephError) as caught:
        backend.clone_template(location, "op1", template)  # never adopted, never replaced
    assert caught.value.errno == errno.EEXIST

    backend.remove(named)
    backend.remove(named)

    assert [o.exists for o in backend.probe(named)] == [False, False]
    assert ceph.pool_contents() == {"_base~tpl", "_base~tpl@snap"}
    with admin_ioctx(ceph) as ioctx:
        assert not [o.key for o in ioctx.list_objects() if o.key.startswith("rbd_id.vm1")]
    backend.clone_template(location, "op2", template)
    assert [o.exists for o in backend.probe(named)] == [False, True]


def test_exists_answers_a_missing_name_without_opening_it(
    backend: RbdBackend, template: TemplateSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name with no ``rbd_id`` object (nor a format 1 header) is missing: no image context
    is built to find that out; a name that has one is opened."""
    opened: list[str] = []
    real = rbd.Image

    def counting(ioctx: object, name: str, *args: object, **kwargs: object) -> object:
        opened.append(name)
        return real(ioctx, name, *args, **kwargs)

    monkeypatch.setattr(rbd, "Image", counting)
    assert not backend.rbd.exists(backend.disk_location("vm1", "nope"))
    assert opened == []
    assert backend.rbd.exists(template.location)
    assert opened == ["_base~tpl"]


# -- snapshots -------------------------------------------------------------------------------


def test_rollback_to_a_missing_snapshot_is_refused(backend: RbdBackend) -> None:
    location = new_disk(backend)
    with pytest.raises(CephError, match="no snapshot") as caught:
        backend.rollback(location, RAW, "nope", "op-rollback", size=MiB)
    assert caught.value.errno == errno.ENOENT


def test_snapshots_are_unprotected_and_keep_the_size_they_were_taken_at(
    backend: RbdBackend, ceph: CephCluster
) -> None:
    location = new_disk(backend)
    final = Artifact(IMAGE, location)
    snap = Artifact(SNAPSHOT, location, "s1")

    seen = backend.snapshot(location, RAW, "s1", "op-snap")

    assert seen.protected is False and backend.probe([snap])[0].protected is False
    assert snapshots(ceph, location) == {"s1": False}
    ceph.rbd("snap", "protect", f"{location}@s1")
    backend.resize(location, RAW, 2 * MiB)
    final_seen, snap_seen = backend.probe([final, snap])
    assert snap_seen.protected is True and final_seen.snapshots == ("s1",)
    # The size the snapshot was taken at, not the image's size now.
    assert snap_seen.size == MiB and final_seen.size == 2 * MiB
    missing = Artifact(SNAPSHOT, f"{POOL}/nothing", "s1")
    assert backend.probe([missing])[0].exists is False


def test_remove_snapshot_unprotects_a_protected_one(backend: RbdBackend, ceph: CephCluster) -> None:
    location = new_disk(backend)
    backend.snapshot(location, RAW, "s2", "op-snap2")
    backend.snapshot(location, RAW, "s3", "op-snap3")
    ceph.rbd("snap", "protect", f"{location}@s3")
    s2, s3 = (backend.snapshot_artifacts(location, s, "t")[0] for s in ("s2", "s3"))

    backend.remove_snapshot(location, RAW, "s3")  # protected: unprotected, then removed
    backend.remove_snapshot(location, RAW, "s3")

    assert [o.exists for o in backend.probe([s2, s3])] == [True, False]
    assert snapshots(ceph, location) == {"s2": False}
    assert temporaries(ceph) == set()


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "clone-v2"])
def test_remove_snapshot_with_clones_is_refused(
    backend: RbdBackend, ceph: CephCluster, protected: bool
) -> None:
    location = new_disk(backend)
    backend.snapshot(location, RAW, "s1", "op-snap")
    if protected:
        ceph.rbd("snap", "protect", f"{location}@s1")
    clone_as_admin(ceph, f"{location}@s1", f"{POOL}/foreign", clone_format=1 if protected else 2)

    with pytest.raises(CephError, match=r"clones.*foreign") as caught:
        backend.remove_snapshot(location, RAW, "s1")

    assert "\n" not in str(caught.value)
    assert snapshots(ceph, location) == {"s1": protected}
    assert image_info(ceph, f"{POOL}/foreign")["parent"]["image"] == "vm1~disk0"


# -- delete ----------------------------------------------------------------------------------


def test_delete_takes_protected_snapshots(backend: RbdBackend, ceph: CephCluster) -> None:
    location = new_disk(backend)
    backend.snapshot(location, RAW, "s1", "op-snap")
    backend.snapshot(location, RAW, "s2", "op-snap2")
    ceph.rbd("snap", "protect", f"{location}@s2")

    backend.delete(location, RAW, ["s1", "s2"])
    backend.delete(location, RAW, ["s1", "s2"])

    assert ceph.pool_contents() == set()
    assert not any(o.exists for o in backend.probe(backend.disk_artifacts(location, ["s1", "s2"])))


@pytest.mark.parametrize("protected", [True, False], ids=["protected", "clone-v2"])
def test_delete_refuses_while_a_snapshot_has_a_clone(
    backend: RbdBackend, ceph: CephCluster, protected: bool
) -> None:
    """diskledger never flattens or removes an image it does not own: refused, nothing touched
    (not even the snapshots without clones, so the disk stays whole)."""
    location = new_disk(backend)
    backend.snapshot(location, RAW, "s1", "op-snap")
    backend.snapshot(location, RAW, "s2", "op-snap2")
    if protected:
        ceph.rbd("snap", "protect", f"{location}@s2")
    clone_as_admin(ceph, f"{location}@s2", f"{POOL}/foreign", clone_format=1 if protected else 2)
    before = ceph.pool_contents()

    with pytest.raises(CephError, match=r"clones.*foreign"):
        backend.delete(location, RAW, ["s1", "s2"])

    assert ceph.pool_contents() == before
    assert "parent" in image_info(ceph, f"{POOL}/foreign")  # not flattened


def test_delete_refuses_snapshots_the_ledger_did_not_name(
    backend: RbdBackend, ceph: CephCluster
) -> None:
    location = new_disk(backend)
    backend.snapshot(location, RAW, "s1", "op-snap")
    ceph.rbd("snap", "create", f"{location}@by-hand")

    with pytest.raises(CephError, match="by-hand") as caught:
        backend.delete(location, RAW, ["s1"])

    assert caught.value.errno == errno.ENOTEMPTY
    assert ceph.pool_contents() == {"vm1~disk0", "vm1~disk0@s1", "vm1~disk0@by-hand"}


def test_delete_of_a_watched_image_gives_up_as_busy(
    ceph: CephCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client still watching the image (a running VM) is waited for under the busy policy; past
    the budget the delete raises ImageBusy and the disk is still whole: neither removed under its
    user nor half removed (its snapshots stay too)."""
    budget = 2.0
    backend = RbdBackend(str(tmp_path), restricted(ceph, busy_budget=budget))
    location = new_disk(backend)
    backend.snapshot(location, RAW, "s1", "op-snap")
    before = ceph.pool_contents()

    with watched(ceph, location):
        start = time.monotonic()
        with pytest.raises(ImageBusy, match="in use") as caught:
            backend.delete(location, RAW, ["s1"])
        elapsed = time.monotonic() - start

    # Retried (backoff from 0.5 s), then given up within the budget plus one backoff step.
    retries = [r for r in caplog.records if "retrying under the busy policy" in r.getMessage()]
    assert len(retries) >= 2 and 1.0 <= elapsed < budget + 4.5, (len(retries), elapsed)
    assert caught.value.errno == errno.EBUSY and "\n" not in str(caught.value)
    assert ceph.pool_contents() == before
    assert "parent" not in image_info(ceph, location)  # and not flattened or otherwise changed
    backend.cluster.close()


def test_delete_waits_for_a_watcher_that_goes_away(ceph: CephCluster, tmp_path: Path) -> None:
    backend = RbdBackend(str(tmp_path), restricted(ceph, busy_budget=20.0))
    location = new_disk(backend)
    backend.snapshot(location, RAW, "s1", "op-snap")

    with watched(ceph, location, release_after=1.0):
        start = time.monotonic()
        backend.delete(location, RAW, ["s1"])
        elapsed = time.monotonic() - start

    assert 0.9 <= elapsed < 15, elapsed
    assert ceph.pool_contents() == set()
    backend.cluster.close()


# -- flatten ---------------------------------------------------------------------------------


def test_flatten_leaves_the_template_without_clones(
    backend: RbdBackend, template: TemplateSource, ceph: CephCluster
) -> None:
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op1", size=2 * MiB, template=template)
    assert ceph.rbd("children", f"{template.location}@snap").strip() == "diskledger/vm1~disk0"

    backend.flatten(location, RAW)

    assert "parent" not in image_info(ceph, location)
    assert ceph.rbd("children", f"{template.location}@snap").strip() == ""
    assert ceph.pool_contents() == {"vm1~disk0", "_base~tpl", "_base~tpl@snap"}


# -- direct snapshot -------------------------------------------------------------------------


def test_direct_snapshot_is_a_protected_snap_in_the_snapshot_pool(
    backend: RbdBackend, template: TemplateSource, ceph: CephCluster
) -> None:
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op1", size=2 * MiB, template=template)
    temp, source_snapshot, target = backend.direct_snapshot_artifacts(
        location, "handoff", "img1", "op-ds"
    )
    assert temp.kind is IMAGE and temp.location.startswith(f"{SNAPSHOT_POOL}/img1.tmp-")
    assert source_snapshot == Artifact(SNAPSHOT, location, "handoff", temporary=True)
    assert target == Artifact(IMAGE, f"{SNAPSHOT_POOL}/img1")
    url = f"rbd://{fsid(ceph)}/{SNAPSHOT_POOL}/img1/snap"
    assert backend.direct_snapshot_url("img1") == url

    assert backend.direct_snapshot(location, RAW, "handoff", "img1", "op-ds") == url

    assert "parent" not in image_info(ceph, target.location)
    assert snapshots(ceph, target.location) == {"snap": True}
    assert ceph.pool_contents(SNAPSHOT_POOL) == {"img1", "img1@snap"}
    # The source snapshot is gone; the disk and the template are as they were.
    assert ceph.pool_contents() == {"vm1~disk0", "_base~tpl", "_base~tpl@snap"}
    assert image_info(ceph, location)["parent"]["image"] == "_base~tpl"


def test_direct_snapshot_failing_mid_way_leaves_nothing_after_compensation(
    backend: RbdBackend,
    ceph: CephCluster,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    # Should the compensation fail, the shared purge (one pool after the other) would meet a
    # clone in the snapshot pool of an image in the disk pool; purge takes it first.
    request.addfinalizer(ceph.purge)
    location = new_disk(backend)
    write_pattern(backend.rbd.spec(location), 0x44)
    artifacts = backend.direct_snapshot_artifacts(location, "handoff", "img1", "op-ds")
    # DISKLEDGER_FAULT is read once at import; arm the same point the same syntax names.
    for key, action in faults.parse("direct-snapshot@mid-effect:eio").items():
        monkeypatch.setitem(faults._ARMED, key, action)

    with pytest.raises(StorageIOError, match="direct-snapshot@mid-effect"):
        backend.direct_snapshot(location, RAW, "handoff", "img1", "op-ds")

    # Half done: the temporary clone and the protected source snapshot exist.
    temp_seen, snap_seen, target_seen = backend.probe(artifacts)
    assert temp_seen.exists and temp_seen.backing == f"{location}@handoff"
    assert snap_seen.exists and snap_seen.protected is True
    assert not target_seen.exists

    backend.remove(artifacts)  # what the engine's compensation runs
    backend.remove(artifacts)

    assert not any(o.exists for o in backend.probe(artifacts))
    assert ceph.pool_contents() == {"vm1~disk0"}
    assert ceph.pool_contents(SNAPSHOT_POOL) == set()
    assert has_pattern(backend.rbd.spec(location), 0x44)


# -- probe, remove, inventory ----------------------------------------------------------------


def test_probe_of_a_temporary_image_left_by_a_crash(backend: RbdBackend, ceph: CephCluster) -> None:
    location = backend.disk_location("vm1", "disk0")
    temp, final = backend.create_artifacts(location, "op1")

    ceph.rbd("create", "--size", "1M", temp.location)  # left by a crash mid-create

    temp_seen, final_seen = backend.probe([temp, final])
    assert temp_seen.exists and temp_seen.size == MiB and not final_seen.exists


def test_remove_takes_a_temporary_with_a_protected_snapshot(
    backend: RbdBackend, ceph: CephCluster
) -> None:
    location = backend.disk_location("vm1", "disk0")
    created = backend.create_artifacts(location, "op1")
    backend.create(location, "op1", size=MiB, template=None)
    snapped = backend.snapshot_artifacts(location, "s1", "op2")
    backend.snapshot(location, RAW, "s1", "op2")
    # A temporary image left by a crash, with a protected snapshot (as a template import makes).
    temp = created[0].location
    ceph.rbd("create", "--size", "1M", temp)
    ceph.rbd("snap", "create", f"{temp}@snap")
    ceph.rbd("snap", "protect", f"{temp}@snap")
    named = [*created, *snapped]

    backend.remove(named)
    backend.remove(named)

    assert not any(o.exists for o in backend.probe(named))
    assert ceph.pool_contents() == set()


def test_remove_refuses_an_image_with_clones(
    backend: RbdBackend, template: TemplateSource, ceph: CephCluster
) -> None:
    """A template with disks cloned from it is not removed (nor are the disks flattened)."""
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op1", size=None, template=template)
    before = ceph.pool_contents()

    with pytest.raises(CephError, match="clones that depend on it: diskledger/vm1~disk0"):
        backend.remove([Artifact(IMAGE, template.location)])

    assert ceph.pool_contents() == before
    assert image_info(ceph, location)["parent"]["image"] == "_base~tpl"


def test_inventory_lists_every_image_and_snapshot(
    backend: RbdBackend, template: TemplateSource, ceph: CephCluster
) -> None:
    one = new_disk(backend, name="one")
    backend.snapshot(one, RAW, "s1", "op-snap")
    backend.snapshot(one, RAW, "s2", "op-snap2")
    two = backend.disk_location("vm1", "two")
    backend.create(two, "op-two", size=None, template=template)
    ceph.rbd("create", "--size", "1M", f"{POOL}/leftover.tmp-op9")

    found = backend.inventory()

    assert sorted(found, key=str) == sorted(
        [
            Artifact(IMAGE, one),
            Artifact(SNAPSHOT, one, "s1"),
            Artifact(SNAPSHOT, one, "s2"),
            Artifact(IMAGE, two),
            Artifact(IMAGE, template.location),
            Artifact(SNAPSHOT, template.location, "snap"),
            Artifact(IMAGE, f"{POOL}/leftover.tmp-op9"),
        ],
        key=str,
    )
    as_listed = {a.location.partition("/")[2] + (f"@{a.name}" if a.name else "") for a in found}
    assert as_listed == ceph.pool_contents()


# -- errors ----------------------------------------------------------------------------------


def test_a_missing_pool_is_a_typed_error(ceph: CephCluster, tmp_path: Path) -> None:
    config = CephConfig(
        conf=str(ceph.conf), pool="no-such-pool", user=USER, keyring=str(ceph.keyring)
    )
    backend = RbdBackend(str(tmp_path), config)
    location = backend.disk_location("vm1", "disk0")
    try:
        with pytest.raises(CephError) as caught:
            backend.create(location, "op1", size=MiB, template=None)
        assert type(caught.value) is CephError and caught.value.errno == errno.ENOENT
        message = str(caught.value)
        assert "no-such-pool" in message and "\n" not in message
        with pytest.raises(CephError):
            backend.probe([Artifact(IMAGE, location)])
    finally:
        backend.cluster.close()


@pytest.fixture
def foreign_pool(ceph: CephCluster) -> Iterator[str]:
    """A pool the restricted client has no caps on."""
    name = "diskledger-foreign"
    ceph_admin(ceph, "osd", "pool", "create", name, "1")
    yield name
    ceph_admin(ceph, "osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it")


def test_a_pool_without_caps_is_refused(
    ceph: CephCluster, foreign_pool: str, tmp_path: Path
) -> None:
    config = CephConfig(
        conf=str(ceph.conf), pool=foreign_pool, user=USER, keyring=str(ceph.keyring)
    )
    backend = RbdBackend(str(tmp_path), config)
    try:
        with pytest.raises(CephError, match="permission denied") as caught:
            backend.create(backend.disk_location("vm1", "disk0"), "op1", size=MiB, template=None)
        assert caught.value.errno in (errno.EPERM, errno.EACCES)
        assert "\n" not in str(caught.value)
    finally:
        backend.cluster.close()


TRANSLATIONS = [
    (rados.TimedOut, errno.ETIMEDOUT, CephUnavailable),
    (rbd.Timeout, errno.ETIMEDOUT, CephUnavailable),
    (rbd.ConnectionShutdown, errno.ESHUTDOWN, CephUnavailable),
    (rbd.ImageBusy, errno.EBUSY, ImageBusy),
    (rbd.NoSpace, errno.ENOSPC, StorageIOError),
    (rados.NoSpace, errno.ENOSPC, StorageIOError),
    (rbd.PermissionError, errno.EPERM, CephError),
    (rados.PermissionError, errno.EACCES, CephError),
    (rbd.ImageNotFound, errno.ENOENT, CephError),
    (rados.ObjectNotFound, errno.ENOENT, CephError),
]


@pytest.mark.parametrize(
    ("cls", "code", "expected"),
    TRANSLATIONS,
    ids=[f"{cls.__module__}.{cls.__name__}" for cls, _, _ in TRANSLATIONS],
)
def test_translate(cls: type[Exception], code: int, expected: type[CephError]) -> None:
    """librados/librbd exceptions, as the bindings raise them, to the error tree by errno."""
    exc = cls("refused", errno=code)  # type: ignore[call-arg]
    error = translate(exc, "resize pool/image", CephConfig(conf="c", pool=POOL).transient)
    assert type(error) is expected and error.errno == code
    assert str(error).startswith("ceph: resize pool/image: ") and "\n" not in str(error)
    if expected is ImageBusy:
        assert "in use" in str(error)
    if code in (errno.EPERM, errno.EACCES):
        assert "permission denied" in str(error)


def test_translate_of_a_foreign_exception_is_a_backend_error() -> None:
    error = translate(KeyError("x"), "list pool p", CephConfig(conf="c", pool=POOL).transient)
    assert type(error) is BackendError and "KeyError" in str(error)


def test_call_retries_transient_errors_within_the_budget_then_translates() -> None:
    cluster = Cluster(CephConfig(conf="/nonexistent/ceph.conf", pool=POOL, retry_budget=0.5))
    attempts: list[float] = []

    def timing_out() -> None:
        attempts.append(time.monotonic())
        raise rados.TimedOut("timed out", errno=errno.ETIMEDOUT)

    with pytest.raises(CephUnavailable, match=r"within 0\.5 s") as caught:
        cluster.call("stat pool/image", timing_out)
    assert len(attempts) >= 2 and attempts[-1] - attempts[0] < 2
    assert isinstance(caught.value.__cause__, rados.TimedOut)

    denied: list[int] = []

    def refusing() -> None:
        denied.append(1)
        raise rbd.PermissionError("denied", errno=errno.EPERM)

    with pytest.raises(CephError, match="permission denied"):
        cluster.call("create pool/image", refusing)
    assert denied == [1]  # permanent: not retried
