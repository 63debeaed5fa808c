"""The operations the rbd backend brought, through the embedding API: ``import_disk`` on every
backend, ``flatten`` and ``direct_snapshot`` on rbd (refused elsewhere), their idempotency keys,
and a delete that a clone made outside diskledger refuses.

What the cluster holds is checked as client.admin (``PoolView``, ``rbd info``), never through the
backend under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskledger.engine import Config, Engine
from diskledger.errors import (
    CephError,
    Conflict,
    DiskNotFound,
    IllegalTransition,
    InvalidInput,
    InvalidName,
    InvalidSource,
)
from diskledger.events import Metadata, NewEvent
from diskledger.states import DiskState
from tests.recovery.helpers import (
    PoolView,
    assert_pools_match_ledger,
    clone_backing,
    disk_format,
    disk_location,
)
from tests.support.ceph import POOL, SNAPSHOT_POOL, CephCluster

MiB = 1 << 20
DISK = "vm-1/root"


def open_engine(root: Path, backend: str, ceph: CephCluster | None) -> Engine:
    environ = ceph.environ() if ceph is not None else {}
    return Engine.open(Config.load(root=root, backend=backend, environ=environ))


@pytest.fixture
def rbd_engine(tmp_path: Path, ceph: CephCluster, qemu_img: None) -> Iterator[Engine]:
    with open_engine(tmp_path / "root", "rbd", ceph) as engine:
        yield engine


@pytest.fixture(params=["raw", "qcow2", "rbd"])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path, qemu_img: None) -> Iterator[Engine]:
    ceph: CephCluster | None = None
    if request.param == "rbd":
        ceph = request.getfixturevalue("ceph")
    with open_engine(tmp_path / "root", request.param, ceph) as engine:
        yield engine


@pytest.fixture
def cluster(rbd_engine: Engine, ceph: CephCluster) -> CephCluster:
    return ceph


@pytest.fixture
def clone(rbd_engine: Engine, template_files: dict[str, Path]) -> str:
    """``vm-1/root``: a clone of the template ``base`` (64 MiB, raw)."""
    rbd_engine.add_template("base", template_files["raw"], "raw")
    rbd_engine.create(DISK, template="base")
    return DISK


def rbd_info(ceph: CephCluster, location: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(ceph.rbd("info", "--format", "json", location))
    return info


def assert_pools_as_recorded(engine: Engine, ceph: CephCluster) -> None:
    with PoolView(ceph) as pools:
        assert_pools_match_ledger(engine, pools)


# -- create: a clone under the final name -----------------------------------------------------


def test_a_create_from_a_template_clones_under_the_final_name(
    rbd_engine: Engine,
    cluster: CephCluster,
    template_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the template's size: one clone under the disk's name, no rename, the outcome from
    what librbd was asked; larger: a clone under a temporary name, grown, renamed."""
    from diskledger.backends.rbd.images import Images

    engine = rbd_engine
    engine.add_template("base", template_files["raw"], "raw")
    grown = engine.create("vm-1/big", template="base", size=128 * MiB)
    monkeypatch.setattr(Images, "rename", None)  # any rename fails

    view = engine.create(DISK, template="base")

    def artifacts(disk: str) -> list[tuple[str, bool]]:
        (intent,) = [e for e in engine.history(disk) if e.type == "disk.create.started"]
        return [(a["kind"], ".tmp-" in a["location"]) for a in intent.data["artifacts"]]

    assert artifacts(DISK) == [("rbd-clone", False), ("rbd-image", False)]
    assert artifacts("vm-1/big") == [("rbd-image", True), ("rbd-image", False)]
    assert view.location is not None and view.size == 64 * MiB
    info = rbd_info(cluster, view.location)
    assert info["size"] == view.size
    assert view.backing == f"{POOL}/_base~base@snap"
    parent = info["parent"]
    assert isinstance(parent, dict) and (parent["image"], parent["snapshot"]) == (
        "_base~base",
        "snap",
    )
    assert grown.size == 128 * MiB and grown.backing == view.backing
    assert engine.verify().ok
    assert_pools_as_recorded(engine, cluster)


# -- import ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source_format", ["raw", "qcow2"])
def test_import_makes_a_disk_from_a_local_file(
    any_engine: Engine, template_files: dict[str, Path], source_format: str
) -> None:
    engine = any_engine
    backend = engine.backend.name
    view = engine.import_disk(DISK, template_files[source_format], source_format)
    assert (view.state, view.size, view.format, view.template, view.backing) == (
        DiskState.CREATED,
        64 * MiB,
        disk_format(backend),
        None,
        None,
    )
    assert view.location == disk_location(Path(engine.templates.root), DISK, backend)
    started, completed = engine.history(DISK)
    assert (started.type, completed.type) == ("disk.import.started", "disk.import.completed")
    assert started.data["params"]["source_format"] == source_format
    named = started.data["artifacts"]
    assert view.location in {a["location"] for a in named if not a.get("temporary")}
    assert any(a.get("temporary") for a in named), "the copy is written under a temporary name"
    assert engine.verify().ok


def test_import_refusals(
    any_engine: Engine, template_files: dict[str, Path], tmp_path: Path
) -> None:
    engine = any_engine
    engine.import_disk(DISK, template_files["raw"], "raw")
    head = engine.store.head()
    with pytest.raises(IllegalTransition, match="exists"):
        engine.import_disk(DISK, template_files["raw"], "raw")
    with pytest.raises(InvalidSource, match="does not exist"):
        engine.import_disk("vm-2/root", tmp_path / "missing.img", "raw")
    with pytest.raises(InvalidInput, match="import format"):
        engine.import_disk("vm-2/root", template_files["raw"], "vmdk")
    with pytest.raises(InvalidName):
        engine.import_disk("vm-2/..", template_files["raw"], "raw")
    assert engine.store.head() == head
    # A format that does not match is found on the copy: refused, recorded, nothing left.
    with pytest.raises(InvalidInput, match="declared raw, but the image is qcow2"):
        engine.import_disk("vm-2/root", template_files["qcow2"], "raw")
    assert [e.type for e in engine.history("vm-2/root")] == [
        "disk.import.started",
        "disk.import.failed",
    ]
    assert engine.show("vm-2/root").state is DiskState.ABSENT
    assert engine.verify().ok


# -- flatten --------------------------------------------------------------------------------------


def test_flatten_detaches_a_clone_from_its_template(
    rbd_engine: Engine, clone: str, cluster: CephCluster
) -> None:
    engine = rbd_engine
    view = engine.show(clone)
    assert view.backing == clone_backing(Path(engine.templates.root), "base", "rbd")
    assert view.location is not None
    assert "parent" in rbd_info(cluster, view.location)
    flat = engine.flatten(clone)
    assert flat.backing is None
    assert (flat.state, flat.size, flat.template) == (view.state, view.size, "base")
    assert "parent" not in rbd_info(cluster, view.location)
    completed = engine.history(clone)[-1]
    assert completed.type == "disk.flatten.completed" and completed.data["backing"] is None
    assert engine.template_users("base") == [clone], "it was made from the template, still"
    # Already flat: nothing to copy, and the ledger says the same.
    assert engine.flatten(clone).backing is None
    assert engine.verify().ok
    assert_pools_as_recorded(engine, cluster)


def test_flatten_keeps_snapshots_and_state(
    rbd_engine: Engine, clone: str, cluster: CephCluster
) -> None:
    engine = rbd_engine
    engine.resize(clone, "96M")
    engine.snapshot(clone, "s1")
    flat = engine.flatten(clone)
    assert (flat.state, flat.size, flat.snapshot_names, flat.backing) == (
        DiskState.SNAPSHOTTED,
        96 * MiB,
        ("s1",),
        None,
    )
    assert engine.verify().ok
    assert_pools_as_recorded(engine, cluster)


@pytest.mark.parametrize("backend", ["raw", "qcow2"])
def test_file_backends_refuse_flatten_and_direct_snapshot(
    backend: str, tmp_path: Path, qemu_img: None, template_files: dict[str, Path]
) -> None:
    with open_engine(tmp_path / "root", backend, None) as engine:
        engine.add_template("base", template_files[backend], backend)
        engine.create(DISK, template="base")
        head = engine.store.head()
        with pytest.raises(InvalidInput, match=f"the {backend} backend cannot flatten a disk"):
            engine.flatten(DISK)
        with pytest.raises(InvalidInput, match=f"{backend} backend cannot direct-snapshot"):
            engine.direct_snapshot(DISK, "ds", "img-1")
        assert engine.store.head() == head


# -- direct snapshot ------------------------------------------------------------------------------


def test_direct_snapshot_publishes_a_standalone_copy(
    rbd_engine: Engine, clone: str, cluster: CephCluster
) -> None:
    engine = rbd_engine
    before = engine.show(clone)
    fsid = engine.templates.scope.removeprefix("ceph-").rpartition(".")[0]  # type: ignore[union-attr]
    result = engine.direct_snapshot(clone, "ds", "img-1")
    assert result.url == f"rbd://{fsid}/{SNAPSHOT_POOL}/img-1/snap"
    assert (result.disk, result.size) == (clone, 64 * MiB)
    assert result.to_json() == {"disk": clone, "url": result.url, "size": 64 * MiB}
    # The ledger records it: the intent names every artifact, the outcome the URL.
    started, completed = engine.history(clone)[-2:]
    assert started.type == "disk.direct-snapshot.started"
    named = {
        (a["location"], a.get("name"), bool(a.get("temporary"))) for a in started.data["artifacts"]
    }
    assert (f"{SNAPSHOT_POOL}/img-1", None, False) in named
    assert (before.location, "ds", True) in named
    assert any(loc.startswith(f"{SNAPSHOT_POOL}/img-1.tmp-") and tmp for loc, _, tmp in named)
    assert completed.type == "disk.direct-snapshot.completed"
    assert completed.data["url"] == result.url
    # The disk is as it was; the copy is flat and holds a protected snap to clone from.
    after = engine.show(clone)
    assert (after.state, after.snapshots, after.backing) == (
        before.state,
        before.snapshots,
        before.backing,
    )
    info = rbd_info(cluster, f"{SNAPSHOT_POOL}/img-1")
    assert "parent" not in info and info["size"] == 64 * MiB
    snaps = json.loads(cluster.rbd("snap", "ls", "--format", "json", f"{SNAPSHOT_POOL}/img-1"))
    assert [(s["name"], s["protected"]) for s in snaps] == [("snap", "true")]
    assert engine.verify().ok
    assert_pools_as_recorded(engine, cluster)


def test_direct_snapshot_refusals_change_nothing(
    rbd_engine: Engine, clone: str, cluster: CephCluster
) -> None:
    engine = rbd_engine
    engine.snapshot(clone, "s1")
    engine.direct_snapshot(clone, "ds", "img-1")
    head = engine.store.head()
    with PoolView(cluster) as pools:
        contents = (pools.contents(POOL), pools.contents(SNAPSHOT_POOL))
    with pytest.raises(InvalidInput, match="already has a snapshot 's1'"):
        engine.direct_snapshot(clone, "s1", "img-2")
    with pytest.raises(Conflict, match="exists but the ledger does not own it"):
        engine.direct_snapshot(clone, "ds", "img-1")
    with pytest.raises(InvalidName):
        engine.direct_snapshot(clone, "ds", "../img")
    with pytest.raises(DiskNotFound):
        engine.direct_snapshot("vm-9/root", "ds", "img-2")
    assert engine.store.head() == head
    with PoolView(cluster) as pools:
        assert (pools.contents(POOL), pools.contents(SNAPSHOT_POOL)) == contents


# -- idempotency keys -----------------------------------------------------------------------------


def test_import_with_an_op_id_runs_once(
    any_engine: Engine, template_files: dict[str, Path]
) -> None:
    engine = any_engine
    first = engine.import_disk(DISK, template_files["raw"], "raw", op_id="import-1")
    again = engine.import_disk(DISK, template_files["raw"], "raw", op_id="import-1")
    assert again == first
    assert [e.type for e in engine.history(DISK)] == [
        "disk.import.started",
        "disk.import.completed",
    ]
    with pytest.raises(Conflict, match="was used for import"):
        engine.import_disk("vm-2/root", template_files["raw"], "raw", op_id="import-1")
    # A failed operation's key is spent.
    with pytest.raises(InvalidInput):
        engine.import_disk("vm-3/root", template_files["qcow2"], "raw", op_id="import-2")
    with pytest.raises(Conflict, match="failed"):
        engine.import_disk("vm-3/root", template_files["qcow2"], "raw", op_id="import-2")


def test_flatten_and_direct_snapshot_with_an_op_id_run_once(
    rbd_engine: Engine, clone: str, cluster: CephCluster
) -> None:
    engine = rbd_engine
    flat = engine.flatten(clone, op_id="flatten-1")
    events = len(engine.history(clone))
    assert engine.flatten(clone, op_id="flatten-1") == flat
    published = engine.direct_snapshot(clone, "ds", "img-1", op_id="publish-1")
    assert engine.direct_snapshot(clone, "ds", "img-1", op_id="publish-1") == published
    assert len(engine.history(clone)) == events + 2
    with pytest.raises(Conflict, match="was used for direct-snapshot"):
        engine.direct_snapshot(clone, "ds", "img-2", op_id="publish-1")
    with pytest.raises(Conflict, match="was used for flatten"):
        engine.resize(clone, "96M", op_id="flatten-1")
    with PoolView(cluster) as pools:
        assert pools.contents(SNAPSHOT_POOL) == {"img-1", "img-1@snap"}


# -- what diskledger does not own ------------------------------------------------------------------


@pytest.mark.parametrize("cloned_from", ["s1", "s2"])
def test_a_delete_refused_by_an_outside_clone_leaves_the_disk_live(
    rbd_engine: Engine, clone: str, cluster: CephCluster, cloned_from: str
) -> None:
    """Someone clones one of the disk's snapshots outside diskledger (protecting it first, as
    clone format 1 needs). The delete is refused before anything is removed, whichever snapshot
    it is: recorded as failed with the reason, the disk and every snapshot still there."""
    engine = rbd_engine
    engine.snapshot(clone, "s1")
    engine.snapshot(clone, "s2")
    location = engine.show(clone).location
    cluster.rbd("snap", "protect", f"{location}@{cloned_from}")
    cluster.rbd("clone", f"{location}@{cloned_from}", f"{POOL}/outside")

    with pytest.raises(CephError, match="has clones that depend on it") as refused:
        engine.delete(clone)
    assert f"{POOL}/outside" in str(refused.value)
    view = engine.show(clone)
    assert (view.state, view.snapshot_names, view.pending) == (
        DiskState.SNAPSHOTTED,
        ("s1", "s2"),
        None,
    )
    failed = engine.history(clone)[-1]
    assert failed.type == "disk.delete.failed"
    assert "has clones that depend on it" in failed.data["error"]
    assert failed.data["recovery"]["decision"] == "roll-back"
    with PoolView(cluster) as pools:
        assert {f"vm-1~root@{s}" for s in ("s1", "s2")} <= pools.contents(POOL)
    report = engine.verify()
    assert report.drift == [] and report.orphans == [f"{POOL}/outside"]

    # Once the outsider has flattened its clone, the delete goes through.
    cluster.rbd("flatten", "--no-progress", f"{POOL}/outside")
    cluster.rbd("snap", "unprotect", f"{location}@{cloned_from}")
    assert engine.delete(clone).state is DiskState.ABSENT
    with PoolView(cluster) as pools:
        assert pools.contents(POOL) == {"_base~base", "_base~base@snap", "outside"}


# -- fencing a dead writer -------------------------------------------------------------------------

DEAD = "no-such-boot:999999:1"

_HOLD_AND_DIE = """
import os, signal, sys
from diskledger.engine import Config, Engine
engine = Engine.open(Config.load(root=sys.argv[1], backend="rbd", recover=False))
with engine.backend.rbd.image(sys.argv[2]) as image:
    image.write(b"\\xab" * 4096, 0)  # a write takes the image's exclusive lock
    print(engine.backend.writer()["ceph_client"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def crashed_rollback(engine: Engine, disk: str, writer: int) -> None:
    """Record a rollback intent as a writer (Ceph client ``writer``) that then died left it."""
    view = engine.show(disk)
    params = {
        "snapshot": "s1",
        "location": view.location,
        "format": "raw",
        "size": view.size,
        "backend": "rbd",
        "writer": {"ceph_client": writer},
    }
    meta = Metadata(op_id="crashed-rollback", host=engine.host, pid=999999, process=DEAD)
    data = {"params": params, "artifacts": [], "request": {}}
    engine.store.append(
        f"disk:{disk}", view.version, [NewEvent("disk.rollback.started", data, meta)]
    )


def test_recovery_fences_a_dead_writer_that_held_the_disk(
    rbd_engine: Engine, clone: str, cluster: CephCluster, tmp_path: Path
) -> None:
    """A writer killed while it held the image (its watch and exclusive lock outlive it for the
    OSD's 30 s watch timeout) is blocklisted by recovery, which then finishes its rollback at
    once, instead of waiting out the watch or finding the lock held (needs-operator)."""
    engine = rbd_engine
    engine.snapshot(clone, "s1")
    location = engine.show(clone).location
    assert location is not None
    env = {**os.environ, **cluster.environ()}
    held = subprocess.run(
        [sys.executable, "-c", _HOLD_AND_DIE, engine.templates.root, location],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert held.returncode == -signal.SIGKILL, held.stderr
    writer = int(held.stdout)
    with PoolView(cluster) as pools, pools.cluster.open_ioctx(POOL) as ioctx:
        import rbd

        with rbd.Image(ioctx, location.partition("/")[2], read_only=True) as image:
            assert [w["id"] for w in image.watchers_list()] == [writer]  # the dead one's watch
    crashed_rollback(engine, clone, writer)

    started = time.monotonic()
    report = engine.recover()
    assert [o.decision for o in report.rolled_forward] == ["finish"], report.to_json()
    assert time.monotonic() - started < 15, "waited for the dead client's watch to expire"
    fenced = engine.history(clone)[-1].data["recovery"]["fenced"]
    assert len(fenced) == 1 and fenced[0].startswith("127.0.0.1:")
    assert engine.verify().ok
    assert engine.delete(clone).state is DiskState.ABSENT  # nothing holds it any more


def test_recovery_never_fences_a_stranger(
    rbd_engine: Engine, clone: str, cluster: CephCluster
) -> None:
    """A client that is not the dead writer (a VM running on the disk) is left alone."""
    import rbd

    engine = rbd_engine
    engine.snapshot(clone, "s1")
    location = engine.show(clone).location
    assert location is not None
    with (
        PoolView(cluster) as pools,
        pools.cluster.open_ioctx(POOL) as ioctx,
        rbd.Image(ioctx, location.partition("/")[2]) as vm,
    ):
        stranger = pools.cluster.get_instance_id()
        crashed_rollback(engine, clone, stranger + 1000)  # some other, dead client
        report = engine.recover()
        assert report.rolled_forward or report.needs_operator
        assert "fenced" not in engine.history(clone)[-1].data["recovery"]
        vm.write(b"\x01" * 4096, 0)  # the stranger's connection still works


@pytest.mark.parametrize("target_format", ["raw", "qcow2"])
def test_an_export_reads_without_a_watch(
    rbd_engine: Engine,
    clone: str,
    cluster: CephCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target_format: str,
) -> None:
    """While an export copies the disk, no client watches it: an export killed part way leaves
    nothing that keeps the disk from being deleted (a watch outlives its client for 30 s)."""
    import rbd

    location = rbd_engine.show(clone).location
    assert location is not None
    watchers: list[list[int]] = []
    write = os.pwrite

    def looking(fd: int, data: bytes, offset: int) -> int:
        if not watchers:
            with (
                PoolView(cluster) as pools,
                pools.cluster.open_ioctx(POOL) as ioctx,
                rbd.Image(ioctx, location.partition("/")[2], read_only=True) as image,
            ):
                watchers.append([w["id"] for w in image.watchers_list()])
        return write(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", looking)
    done = rbd_engine.export(clone, tmp_path / f"out.{target_format}", target_format)
    assert watchers == [[]]
    assert (done.format, done.size) == (target_format, 64 * MiB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out." + target_format, "root"]
