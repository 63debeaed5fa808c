"""Setting a fenced operation's temporaries aside, on the file backends (raw, qcow2).

Files on a shared directory have no storage-side fence: a member taking over another member's
operation renames the operation's temporaries aside (``set_aside``) before it probes, so that
the other member, if it is still running (frozen, then thawed: a zombie), cannot publish. Here
the zombie is a real operation stopped at its ``mid-effect`` fault point, where the taker's
``set_aside`` runs; or one that has not started yet when the taker sets aside.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from diskledger import faults
from diskledger.backends import (
    Artifact,
    ArtifactKind,
    Backend,
    Qcow2Backend,
    RawBackend,
    SetsAside,
    TemplateCache,
    files,
)
from diskledger.errors import BackendError, Fenced, InvalidName, StorageIOError
from tests.backends.helpers import MiB, make_image

FILE = ArtifactKind.FILE
TAG = "epoch-41"


@pytest.fixture
def at_mid_effect(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Callable[[], None]], None]:
    """``at_mid_effect(op, action)``: run ``action`` when ``op`` reaches its mid-effect fault
    point, as a taker would act while the zombie is frozen there; the zombie then goes on."""
    hooks: dict[str, Callable[[], None]] = {}
    real = faults.reach

    def reach(point: str, op: str) -> None:
        action = hooks.pop(op, None) if point == "mid-effect" else None
        if action is not None:
            action()
        real(point, op)

    monkeypatch.setattr(faults, "reach", reach)

    def arm(op: str, action: Callable[[], None]) -> None:
        hooks[op] = action

    return arm


def set_aside(backend: Backend, artifacts: tuple[Artifact, ...]) -> list[str]:
    assert isinstance(backend, SetsAside)
    return backend.set_aside(artifacts, TAG)


def listing(directory: str) -> set[str]:
    return set(os.listdir(directory))


def test_file_backends_set_aside() -> None:
    assert isinstance(RawBackend("/nonexistent"), SetsAside)
    assert isinstance(Qcow2Backend("/nonexistent"), SetsAside)


def test_a_create_whose_temporary_is_set_aside_mid_effect_never_publishes(
    backend: Backend, at_mid_effect: Callable[[str, Callable[[], None]], None]
) -> None:
    """The zombie wrote its temporary and is about to rename it onto the disk's name; the taker
    moves it aside first: the publishing rename fails (ENOENT) and the disk never appears."""
    location = backend.disk_location("vm1", "disk0")
    artifacts = backend.create_artifacts(location, "op-create")
    temp = artifacts[0].location
    moved: list[str] = []
    at_mid_effect("create", lambda: moved.extend(set_aside(backend, artifacts)))

    with pytest.raises(StorageIOError) as raised:
        backend.create(location, "op-create", size=MiB, template=None)

    assert raised.value.errno == errno.ENOENT
    assert moved == [f"{temp}.fenced-{TAG}"]
    assert not os.path.lexists(location)
    assert not os.path.lexists(temp)
    assert os.path.isfile(moved[0]) and not os.path.islink(moved[0])


def test_a_create_set_aside_before_it_began_writes_but_never_publishes(
    backend: Backend,
) -> None:
    """The zombie had not made its temporary when the taker looked: nothing moves, a tombstone
    takes the set-aside name (the instance directory is made for it), and the zombie's create,
    when it runs after all, writes its temporary but is refused the rename (Fenced) and removes
    what it wrote: the taker settled before it existed, so nobody else would."""
    location = backend.disk_location("vm1", "disk0")
    artifacts = backend.create_artifacts(location, "op-create")
    temp = artifacts[0].location
    tombstone = f"{temp}.fenced-{TAG}"

    assert set_aside(backend, artifacts) == []
    assert os.path.islink(tombstone) and not os.path.exists(tombstone)

    with pytest.raises(Fenced, match="set it aside"):
        backend.create(location, "op-create", size=MiB, template=None)

    assert not os.path.lexists(location)
    assert not os.path.lexists(temp)
    assert set_aside(backend, artifacts) == []  # idempotent: the tombstone stays
    assert os.path.islink(tombstone)


def test_an_export_set_aside_mid_effect_never_appears(
    backend: Backend, tmp_path: Path, at_mid_effect: Callable[[str, Callable[[], None]], None]
) -> None:
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op-create", size=MiB, template=None)
    target = str(tmp_path / "exports" / "disk0.qcow2")
    os.makedirs(os.path.dirname(target))
    artifacts = backend.export_artifacts(target, "op-export")
    at_mid_effect("export", lambda: set_aside(backend, artifacts))

    with pytest.raises(StorageIOError) as raised:
        backend.export(location, backend.disk_format, target, "qcow2", "op-export")

    assert raised.value.errno == errno.ENOENT
    assert listing(os.path.dirname(target)) == {f"disk0.qcow2.tmp-op-export.fenced-{TAG}"}


def test_an_import_set_aside_before_it_began_never_publishes(
    backend: Backend, tmp_path: Path
) -> None:
    """Both temporaries of an import (the staged copy, the converted disk) get tombstones: the
    zombie's copy is refused its rename into the disk's temporary name, or its conversion's
    output the rename onto the disk."""
    source = tmp_path / "source.raw"
    make_image(source, "raw", MiB)
    location = backend.disk_location("vm1", "disk0")
    artifacts = backend.import_artifacts(location, "op-import")
    assert set_aside(backend, artifacts) == []

    with pytest.raises(Fenced):
        backend.import_file(location, "op-import", str(source), "raw", max_virtual_size=MiB)

    assert not os.path.lexists(location)


def test_an_import_set_aside_while_its_copy_is_inspected_fails_with_a_storage_error(
    backend: Backend, tmp_path: Path, at_mid_effect: Callable[[str, Callable[[], None]], None]
) -> None:
    source = tmp_path / "source.raw"
    make_image(source, "raw", MiB)
    location = backend.disk_location("vm1", "disk0")
    artifacts = backend.import_artifacts(location, "op-import")
    at_mid_effect("import", lambda: set_aside(backend, artifacts))
    try:
        with pytest.raises(StorageIOError):
            backend.import_file(location, "op-import", str(source), "raw", max_virtual_size=MiB)
    finally:
        assert not os.path.lexists(location)


def test_a_raw_snapshot_copy_set_aside_mid_effect_never_appears(
    tmp_path: Path, at_mid_effect: Callable[[str, Callable[[], None]], None]
) -> None:
    backend = RawBackend(str(tmp_path))
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op-create", size=MiB, template=None)
    artifacts = backend.snapshot_artifacts(location, "snap1", "op-snap")
    at_mid_effect("snapshot", lambda: set_aside(backend, artifacts))

    with pytest.raises(StorageIOError):
        backend.snapshot(location, "raw", "snap1", "op-snap")

    assert listing(f"{location}.snapshots") == {f"snap1.tmp-op-snap.fenced-{TAG}"}


def test_a_template_fetch_set_aside_before_it_began_never_publishes(tmp_path: Path) -> None:
    """Template temporaries live in the root's template cache; the backend sets them aside
    like any other temporary file."""
    source = tmp_path / "source.raw"
    make_image(source, "raw", MiB)
    backend = RawBackend(str(tmp_path / "root"))
    cache = TemplateCache(str(tmp_path / "root"))
    artifacts = cache.import_artifacts("base", "op-fetch")
    assert set_aside(backend, artifacts) == []

    with pytest.raises(Fenced):
        cache.import_file(str(source), "raw", "base", "op-fetch")

    assert not os.path.lexists(cache.location("base"))


def test_setting_aside_is_idempotent_and_touches_temporary_files_only(backend: Backend) -> None:
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op-create", size=MiB, template=None)
    temp = f"{location}.tmp-op-resize"
    Path(temp).write_bytes(b"half written")
    artifacts = (
        Artifact(FILE, temp, temporary=True),
        Artifact(FILE, location),  # final: never moved
        Artifact(ArtifactKind.INTERNAL_SNAPSHOT, location, name="s", temporary=True),
    )

    first = set_aside(backend, artifacts)
    second = set_aside(backend, artifacts)

    assert first == second == [f"{temp}.fenced-{TAG}"]
    assert Path(first[0]).read_bytes() == b"half written"
    assert os.path.isfile(location)
    assert listing(os.path.dirname(location)) == {"disk0", f"disk0.tmp-op-resize.fenced-{TAG}"}


def test_only_temporary_names_are_set_aside_and_tags_are_one_name(tmp_path: Path) -> None:
    disk = tmp_path / "disk0"
    disk.write_bytes(b"data")
    with pytest.raises(BackendError, match="not a temporary"):
        files.set_aside(str(tmp_path), str(disk), TAG)
    for tag in ("a/b", "", "..", "x.tmp-y"):
        with pytest.raises(InvalidName):
            files.set_aside(str(tmp_path), f"{disk}.tmp-op", tag)
    assert disk.read_bytes() == b"data"


def test_a_tombstone_outside_the_root_needs_a_directory_that_exists(tmp_path: Path) -> None:
    """An export's target directory is not made by anyone: where it is missing, the zombie
    cannot write there either, and no tombstone is needed (nor made)."""
    root = tmp_path / "root"
    root.mkdir()
    missing = tmp_path / "exports" / "disk0.tmp-op"
    assert files.set_aside(str(root), str(missing), TAG) is None
    assert not (tmp_path / "exports").exists()


def test_space_is_never_reserved_for_a_temporary_that_was_set_aside(tmp_path: Path) -> None:
    """``fallocate`` creates a file it does not find: a preallocating zombie would otherwise
    recreate its set-aside temporary, empty, and might publish that as the disk."""
    missing = tmp_path / "disk0.tmp-op"
    with pytest.raises(StorageIOError) as raised:
        files.reserve(str(missing), MiB)
    assert raised.value.errno == errno.ENOENT
    assert not missing.exists()

    present = tmp_path / "disk1.tmp-op"
    present.write_bytes(b"")
    files.reserve(str(present), MiB)
    assert present.stat().st_size == 0
    assert present.stat().st_blocks * 512 >= MiB
