"""The backend contract as a conformance suite: every backend proves itself the same way.

Subclass ``BackendContract`` in a pytest module (the class name must start with ``Test``) and
define two fixtures, the backend under test and direct access to its storage::

    import pytest
    from diskledger.testing import BackendContract, FileStorage

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend(self, tmp_path):
            backend = MyBackend(str(tmp_path))
            yield backend
            backend.close()

        @pytest.fixture
        def storage(self, tmp_path):
            return FileStorage(tmp_path)

pytest then runs every ``test_*`` method below against it. The hooks are fixtures, not
methods, so that a backend can take whatever fixtures it needs (a cluster, a volume group), and
tear down after itself with ``yield``; the suite itself uses ``tmp_path``, parametrization and
skips, which a ``unittest.TestCase`` could not.

The hooks:

``backend``
    A fresh backend on fresh storage for each test, its root at ``tmp_path``. Required.
``storage``
    A ``StorageAccess`` to the same storage (``FileStorage``, ``RbdStorage``, or the backend
    author's own). The suite judges data by reading and writing guest bytes through it, and
    leaks by what its ``existing()`` lists, never by the backend's own ``probe``. When it is a
    ``StorageInspection`` too, sizes, backing images and internal snapshots are also checked
    on the storage. Required.
``template_store``
    Where the backend caches templates (default: ``TemplateCache`` files under ``tmp_path``).
    The suite imports 1 MiB templates of known bytes through it, from raw and qcow2 sources.
``template_backing(template)``
    A method: what a disk made from ``template`` names as its backing, when the backend has
    ``Capability.BACKING_OVERLAY`` (by default the template's location).
``artifact_names(artifact)``
    A method: the names ``existing()`` lists for an artifact (by default its location, and
    ``location@name`` for an RBD snapshot; nothing for a qcow2 internal snapshot).

What differs between backends legitimately is read from the backend, not configured:
``Capability.BACKING_OVERLAY`` (a disk made from a template keeps it as its backing image),
``INTERNAL_SNAPSHOTS`` (snapshots are listed inside the disk), ``FLATTEN`` and
``DIRECT_SNAPSHOT`` (their tests are skipped without them), ``FIXED_SIZE`` (the tests that grow
a disk are skipped with it, and one checks that growing is refused instead).

Making the source images the suite imports takes ``qemu-img`` (Debian's ``qemu-utils``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from diskledger import faults
from diskledger.backends import (
    Artifact,
    ArtifactKind,
    Backend,
    Capability,
    DirectSnapshots,
    DiskSource,
    Flattens,
    SourceKind,
    TemplateCache,
    TemplateSource,
    TemplateStore,
)
from diskledger.errors import BackendError, InvalidSize, UnsafeImage, Unsupported
from diskledger.testing.samples import (
    CHUNK,
    MiB,
    assert_facts,
    cache_template,
    fill,
    holds,
    make_source,
    new_disk,
    qemu_img,
    temporaries,
)
from diskledger.testing.storage import StorageAccess

__all__ = ["BackendContract"]

MAX_IMPORT = 64 * MiB
"""The ``max_virtual_size`` the suite imports with."""

OVERLAY = Capability.BACKING_OVERLAY
INTERNAL = Capability.INTERNAL_SNAPSHOTS
FIXED = Capability.FIXED_SIZE


class BackendContract:
    """What every backend must do, as pytest tests. See the module's docstring for the hooks."""

    # -- hooks ---------------------------------------------------------------------------------

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        """Hook: a fresh backend on fresh storage, rooted at ``tmp_path``. Override it."""
        raise NotImplementedError(f"{type(self).__name__} must define the 'backend' fixture")

    @pytest.fixture
    def storage(self, backend: Backend, tmp_path: Path) -> StorageAccess:
        """Hook: direct access to the storage ``backend`` keeps disks in. Override it."""
        raise NotImplementedError(f"{type(self).__name__} must define the 'storage' fixture")

    @pytest.fixture
    def template_store(self, backend: Backend, tmp_path: Path) -> TemplateStore:
        """Hook: where ``backend``'s templates are cached; local files by default."""
        return TemplateCache(str(tmp_path))

    def template_backing(self, template: TemplateSource) -> str:
        """Hook: what a disk made from ``template`` names as its backing image, when the backend
        has ``Capability.BACKING_OVERLAY``: the template's location by default (a qcow2
        overlay); an RBD clone names the template's snapshot, ``location@snap``."""
        return template.location

    def artifact_names(self, artifact: Artifact) -> set[str]:
        """Hook: what ``storage.existing()`` lists for ``artifact`` once it exists."""
        if artifact.kind is ArtifactKind.INTERNAL_SNAPSHOT:
            return set()  # inside the image file, which is listed for the disk
        if artifact.kind is ArtifactKind.RBD_SNAPSHOT:
            return {f"{artifact.location}@{artifact.name}"}
        return {artifact.location}

    # -- what the tests share ------------------------------------------------------------------

    @pytest.fixture(params=["raw", "qcow2"])
    def template(
        self, request: pytest.FixtureRequest, template_store: TemplateStore, tmp_path: Path
    ) -> TemplateSource:
        """A cached 1 MiB template holding 0x11 in its first 64 KiB, imported from a raw or a
        qcow2 source."""
        fmt: str = request.param
        return cache_template(template_store, tmp_path / "sources", fmt)

    def names(self, artifacts: Iterable[Artifact]) -> set[str]:
        return {name for artifact in artifacts for name in self.artifact_names(artifact)}

    # -- the protocol ----------------------------------------------------------------------------

    def test_satisfies_the_protocol(self, backend: Backend, storage: StorageAccess) -> None:
        assert isinstance(backend, Backend)
        assert isinstance(storage, StorageAccess)
        assert backend.name and backend.disk_format
        assert isinstance(backend.capabilities, frozenset)
        assert all(isinstance(c, Capability) for c in backend.capabilities)
        # Capabilities are declared, and each declared one is there.
        assert isinstance(backend, Flattens) == (Capability.FLATTEN in backend.capabilities)
        assert isinstance(backend, DirectSnapshots) == (
            Capability.DIRECT_SNAPSHOT in backend.capabilities
        )

    @pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "x.tmp-1"])
    def test_refuses_names_that_escape_or_mimic_temporaries(
        self, backend: Backend, bad: str
    ) -> None:
        with pytest.raises(ValueError, match="invalid"):
            backend.disk_location("vm1", bad)
        with pytest.raises(ValueError, match="invalid"):
            backend.disk_location(bad, "disk0")

    def test_artifacts_round_trip_through_json(self, backend: Backend) -> None:
        location = backend.disk_location("vm1", "disk0")
        artifacts = [
            *backend.create_artifacts(location, "t"),
            *backend.import_artifacts(location, "t"),
            *backend.snapshot_artifacts(location, "s1", "t"),
            *backend.rollback_artifacts(location, "s1", "t"),
            *backend.export_artifacts("/elsewhere/x.img", "t"),
            *backend.disk_artifacts(location, ["s1", "s2"]),
        ]
        if isinstance(backend, DirectSnapshots):
            artifacts.extend(backend.direct_snapshot_artifacts(location, "s1", "img1", "t"))
        for artifact in artifacts:
            assert Artifact.from_json(artifact.to_json()) == artifact

    def test_disk_artifacts_name_the_disk_then_each_snapshot(
        self, backend: Backend, storage: StorageAccess
    ) -> None:
        location = backend.disk_location("vm1", "disk0")
        disk, s1, s2 = backend.disk_artifacts(location, ["s1", "s2"])

        assert backend.disk_artifacts(location, []) == (disk,)
        assert disk.location == location and not disk.temporary
        assert disk == backend.create_artifacts(location, "t")[-1]
        assert disk == backend.import_artifacts(location, "t")[-1]
        assert s1 == backend.snapshot_artifacts(location, "s1", "t")[-1] and not s1.temporary
        assert s2 == backend.snapshot_artifacts(location, "s2", "t")[-1] and not s2.temporary
        # And the effects observe them under the same names.
        fmt = backend.disk_format
        assert backend.create(location, "op1", size=MiB, template=None).artifact == disk
        assert backend.snapshot(location, fmt, "s1", "op2").artifact == s1
        seen = backend.probe([disk, s1, s2])
        assert [o.artifact for o in seen] == [disk, s1, s2]
        assert [o.exists for o in seen] == [True, True, False]
        assert not temporaries(storage)

    def test_disk_source(self, backend: Backend) -> None:
        location = new_disk(backend)

        source = backend.disk_source(location)
        bare = backend.disk_source(location, addresses=False)

        assert isinstance(source, DiskSource) and isinstance(source.kind, SourceKind)
        if source.kind is SourceKind.FILE:
            assert source.path == location and source.protocol is None and source.hosts == ()
        elif source.kind is SourceKind.BLOCK:
            assert source.path and os.path.isabs(source.path)
        else:
            assert source.protocol and source.name and source.path is None
            assert source.hosts and all(
                isinstance(host, str) and host and isinstance(port, int) and 0 < port < 65536
                for host, port in source.hosts
            )
            # Without addresses: the same, minus what must be looked up.
            assert bare.hosts == ()
        assert bare == dataclasses.replace(source, hosts=())

    # -- create --------------------------------------------------------------------------------

    def test_blank_create(self, backend: Backend, storage: StorageAccess) -> None:
        location = backend.disk_location("vm1", "disk0")
        *temps, final = backend.create_artifacts(location, "op1")
        assert temps and all(t.temporary for t in temps)
        assert not final.temporary and final.location == location
        before = storage.existing()

        seen = backend.create(location, "op1", size=2 * MiB, template=None)

        assert seen.exists and seen.artifact == final
        assert (seen.size, seen.format, seen.backing, seen.snapshots) == (
            2 * MiB,
            backend.disk_format,
            None,
            (),
        )
        assert_facts(storage, location, backend.disk_format, size=2 * MiB, backing=None)
        assert storage.existing() == before | self.names([final])
        assert not any(o.exists for o in backend.probe(temps))
        fmt = backend.disk_format
        assert storage.read(location, fmt, 0, 2 * MiB) == bytes(2 * MiB)  # blank: zeroes
        fill(storage, location, fmt, 0x11)
        assert holds(storage, location, fmt, 0x11) and holds(storage, location, fmt, 0x00, MiB)
        assert not temporaries(storage)

    def test_blank_create_needs_a_size(self, backend: Backend, storage: StorageAccess) -> None:
        location = backend.disk_location("vm1", "disk0")
        artifacts = backend.create_artifacts(location, "op1")
        before = storage.existing()

        with pytest.raises(InvalidSize, match="size"):
            backend.create(location, "op1", size=None, template=None)

        assert storage.existing() == before
        assert not any(o.exists for o in backend.probe(artifacts))

    @pytest.mark.parametrize("size", [None, MiB // 2, 3 * MiB], ids=["none", "smaller", "larger"])
    def test_create_from_template(
        self,
        backend: Backend,
        storage: StorageAccess,
        template: TemplateSource,
        size: int | None,
    ) -> None:
        location = backend.disk_location("vm1", "disk0")
        fmt = backend.disk_format
        before = storage.existing()

        seen = backend.create(location, "op1", size=size, template=template)

        # Grown when larger; the template's size otherwise (the engine refuses a smaller one
        # before it gets here; a backend never shrinks the template's data).
        expected = max(size or 0, template.virtual_size)
        assert seen.exists and seen.size == expected and seen.format == fmt
        assert seen.artifact == backend.disk_artifacts(location, [])[0]
        if OVERLAY in backend.capabilities:
            assert seen.backing == self.template_backing(template)
        else:
            assert seen.backing is None
        assert_facts(storage, location, fmt, size=expected, backing=seen.backing)
        assert holds(storage, location, fmt, 0x11)
        assert holds(storage, location, fmt, 0x00, MiB - CHUNK)
        fill(storage, location, fmt, 0x22)  # the disk is its own: the template keeps its data
        assert holds(storage, location, fmt, 0x22)
        assert holds(storage, template.location, template.format, 0x11)
        assert storage.existing() == before | self.names(backend.disk_artifacts(location, []))
        assert not temporaries(storage)

    def test_existing_disk_is_not_recreated(
        self,
        backend: Backend,
        storage: StorageAccess,
        template_store: TemplateStore,
        tmp_path: Path,
    ) -> None:
        template = cache_template(template_store, tmp_path / "sources", "qcow2")
        location = new_disk(backend)
        fmt = backend.disk_format
        fill(storage, location, fmt, 0x5A)
        before = storage.existing()

        again = backend.create(location, "op-again", size=4 * MiB, template=None)
        from_template = backend.create(location, "op-again2", size=4 * MiB, template=template)

        assert again.size == from_template.size == MiB
        assert again.backing is None and from_template.backing is None
        assert holds(storage, location, fmt, 0x5A)
        assert_facts(storage, location, fmt, size=MiB, backing=None)
        assert storage.existing() == before
        assert not temporaries(storage)

    # -- resize --------------------------------------------------------------------------------

    def test_resize_grows_only(self, backend: Backend, storage: StorageAccess) -> None:
        if FIXED in backend.capabilities:
            pytest.skip(f"the {backend.name} backend's disks keep their size (FIXED_SIZE)")
        location = new_disk(backend)
        fmt = backend.disk_format
        fill(storage, location, fmt, 0x22)
        before = storage.existing()

        assert backend.resize(location, fmt, 2 * MiB).size == 2 * MiB
        assert backend.resize(location, fmt, 2 * MiB).size == 2 * MiB  # idempotent
        assert backend.resize(location, fmt, MiB).size == 2 * MiB  # never shrinks

        assert_facts(storage, location, fmt, size=2 * MiB)
        assert holds(storage, location, fmt, 0x22)
        assert holds(storage, location, fmt, 0x00, MiB + CHUNK)
        fill(storage, location, fmt, 0x23, MiB + CHUNK)
        assert holds(storage, location, fmt, 0x23, MiB + CHUNK)
        assert storage.existing() == before
        assert not temporaries(storage)

    def test_a_fixed_size_disk_refuses_to_grow(
        self, backend: Backend, storage: StorageAccess
    ) -> None:
        if FIXED not in backend.capabilities:
            pytest.skip(f"the {backend.name} backend grows disks")
        location = new_disk(backend)
        fmt = backend.disk_format
        fill(storage, location, fmt, 0x22)
        before = storage.existing()

        with pytest.raises(Unsupported, match="resize"):
            backend.resize(location, fmt, 2 * MiB)
        assert backend.resize(location, fmt, MiB).size == MiB  # already that large: left alone

        assert_facts(storage, location, fmt, size=MiB)
        assert holds(storage, location, fmt, 0x22)
        assert storage.existing() == before
        assert not temporaries(storage)

    def test_refuses_another_format(self, backend: Backend, storage: StorageAccess) -> None:
        location = new_disk(backend)
        fmt = backend.disk_format
        other = "qcow2" if fmt == "raw" else "raw"
        before = storage.existing()

        with pytest.raises(ValueError, match=rf"\b{fmt}\b.*\bnot {other}\b"):
            backend.resize(location, other, 2 * MiB)

        assert_facts(storage, location, fmt, size=MiB)
        assert storage.existing() == before

    # -- snapshots -----------------------------------------------------------------------------

    def test_snapshot_and_rollback_restore_data(
        self, backend: Backend, storage: StorageAccess
    ) -> None:
        before = storage.existing()
        location = new_disk(backend)
        fmt = backend.disk_format
        fill(storage, location, fmt, 0xAB)
        *temps, artifact = backend.snapshot_artifacts(location, "s1", "op-snap")
        assert all(t.temporary for t in temps) and not artifact.temporary
        assert artifact == backend.disk_artifacts(location, ["s1"])[1]

        seen = backend.snapshot(location, fmt, "s1", "op-snap")
        assert seen.exists and seen.artifact == artifact and seen.size == MiB
        assert not seen.protected
        assert backend.snapshot(location, fmt, "s1", "op-snap2") == seen  # idempotent
        assert storage.existing() == before | self.names(backend.disk_artifacts(location, ["s1"]))
        fill(storage, location, fmt, 0xCD)
        assert holds(storage, location, fmt, 0xCD)
        # The disk itself is never named: it existed before, compensation must not remove it.
        assert all(a.temporary for a in backend.rollback_artifacts(location, "s1", "op-rollback"))

        after = backend.rollback(location, fmt, "s1", "op-rollback", size=MiB)

        assert after.exists and after.size == MiB
        assert holds(storage, location, fmt, 0xAB)
        if INTERNAL in backend.capabilities:
            assert after.snapshots == ("s1",)
            assert_facts(storage, location, fmt, size=MiB, snapshots=("s1",))
        else:
            assert_facts(storage, location, fmt, size=MiB)
        assert backend.probe([artifact])[0].exists
        assert storage.existing() == before | self.names(backend.disk_artifacts(location, ["s1"]))
        assert not temporaries(storage)

    def test_rollback_keeps_the_size_when_the_snapshot_was_smaller(
        self, backend: Backend, storage: StorageAccess
    ) -> None:
        if FIXED in backend.capabilities:
            pytest.skip(f"the {backend.name} backend's disks keep their size (FIXED_SIZE)")
        location = new_disk(backend)
        fmt = backend.disk_format
        fill(storage, location, fmt, 0xAB)
        backend.snapshot(location, fmt, "small", "op-snap")
        backend.resize(location, fmt, 3 * MiB)
        fill(storage, location, fmt, 0xCD)
        fill(storage, location, fmt, 0xCD, 2 * MiB)

        after = backend.rollback(location, fmt, "small", "op-rollback", size=3 * MiB)

        assert after.size == 3 * MiB
        assert_facts(storage, location, fmt, size=3 * MiB)
        assert holds(storage, location, fmt, 0xAB)
        assert holds(storage, location, fmt, 0x00, 2 * MiB)  # past the snapshot's end: zeroes
        assert not temporaries(storage)

    def test_rollback_to_a_missing_snapshot_is_refused(
        self, backend: Backend, storage: StorageAccess
    ) -> None:
        location = new_disk(backend)
        fmt = backend.disk_format
        fill(storage, location, fmt, 0xAB)
        before = storage.existing()

        with pytest.raises(BackendError):
            backend.rollback(location, fmt, "nope", "op-rollback", size=MiB)

        assert holds(storage, location, fmt, 0xAB)
        assert_facts(storage, location, fmt, size=MiB)
        assert storage.existing() == before

    def test_remove_snapshot_is_idempotent(self, backend: Backend, storage: StorageAccess) -> None:
        before = storage.existing()
        location = new_disk(backend)
        fmt = backend.disk_format
        backend.snapshot(location, fmt, "s1", "op-snap")
        backend.snapshot(location, fmt, "s2", "op-snap2")
        s1 = backend.snapshot_artifacts(location, "s1", "op-snap")[-1]
        s2 = backend.snapshot_artifacts(location, "s2", "op-snap2")[-1]

        backend.remove_snapshot(location, fmt, "s1")
        backend.remove_snapshot(location, fmt, "s1")

        s1_seen, s2_seen = backend.probe([s1, s2])
        assert not s1_seen.exists and s2_seen.exists
        if INTERNAL in backend.capabilities:
            assert backend.probe([backend.disk_artifacts(location, [])[0]])[0].snapshots == ("s2",)
            assert_facts(storage, location, fmt, size=MiB, snapshots=("s2",))
        assert storage.existing() == before | self.names(backend.disk_artifacts(location, ["s2"]))
        assert not temporaries(storage)

    # -- delete --------------------------------------------------------------------------------

    def test_delete_is_idempotent_and_removes_the_snapshots(
        self, backend: Backend, storage: StorageAccess
    ) -> None:
        before = storage.existing()
        location = new_disk(backend)
        fmt = backend.disk_format
        backend.snapshot(location, fmt, "s1", "op-snap")
        backend.snapshot(location, fmt, "s2", "op-snap2")

        backend.delete(location, fmt, ["s1", "s2"])
        backend.delete(location, fmt, ["s1", "s2"])

        assert storage.existing() == before
        assert not any(
            o.exists for o in backend.probe(backend.disk_artifacts(location, ["s1", "s2"]))
        )

    def test_delete_keeps_the_other_disks_of_the_instance(
        self, backend: Backend, storage: StorageAccess
    ) -> None:
        before = storage.existing()
        one, two = new_disk(backend, name="one"), new_disk(backend, name="two")
        fmt = backend.disk_format
        fill(storage, two, fmt, 0x77)

        backend.delete(one, fmt, [])

        assert storage.existing() == before | self.names(backend.disk_artifacts(two, []))
        one_seen, two_seen = backend.probe(
            [backend.disk_artifacts(one, [])[0], backend.disk_artifacts(two, [])[0]]
        )
        assert not one_seen.exists and two_seen.exists
        assert holds(storage, two, fmt, 0x77)

    # -- export and import ---------------------------------------------------------------------

    @pytest.mark.parametrize("target_format", ["raw", "qcow2"])
    def test_export_is_standalone(
        self,
        backend: Backend,
        storage: StorageAccess,
        template: TemplateSource,
        tmp_path: Path,
        target_format: str,
    ) -> None:
        location = backend.disk_location("vm1", "disk0")
        fmt = backend.disk_format
        backend.create(location, "op1", size=2 * MiB, template=template)
        fill(storage, location, fmt, 0x33, MiB)
        exports = tmp_path / "exports"
        exports.mkdir()
        target = str(exports / f"export.{target_format}")
        *temps, final = backend.export_artifacts(target, "op-export")
        assert temps and all(t.temporary for t in temps)
        assert final == Artifact(ArtifactKind.FILE, target)
        before = storage.existing()

        seen = backend.export(location, fmt, target, target_format, "op-export")

        assert seen.exists and seen.artifact == final
        assert (seen.size, seen.format, seen.backing) == (2 * MiB, target_format, None)
        assert_facts(storage, target, target_format, size=2 * MiB, backing=None)
        assert holds(storage, target, target_format, 0x11)
        assert holds(storage, target, target_format, 0x33, MiB)
        # Every byte of the guest's view, the template's included.
        assert storage.read(target, target_format, 0, 2 * MiB) == storage.read(
            location, fmt, 0, 2 * MiB
        )
        assert holds(storage, location, fmt, 0x33, MiB)  # the disk is as it was
        assert os.listdir(exports) == [os.path.basename(target)]
        assert storage.existing() - {target} == before
        assert not temporaries(storage)

    @pytest.mark.parametrize("fmt", ["raw", "qcow2"])
    def test_import_file(
        self, backend: Backend, storage: StorageAccess, tmp_path: Path, fmt: str
    ) -> None:
        source = tmp_path / "sources" / f"source.{fmt}"
        make_source(source, fmt, 2 * MiB, pattern=0x55)
        other = tmp_path / "sources" / "other.raw"
        make_source(other, "raw", 4 * MiB, pattern=0x66)
        location = backend.disk_location("vm1", "imported")
        *temps, final = backend.import_artifacts(location, "op-import")
        assert temps and all(t.temporary for t in temps)
        assert final == backend.disk_artifacts(location, [])[0]
        disk_format = backend.disk_format
        before = storage.existing()

        seen = backend.import_file(
            location, "op-import", str(source), fmt, max_virtual_size=MAX_IMPORT
        )

        assert seen.exists and seen.artifact == final
        assert (seen.size, seen.format, seen.backing) == (2 * MiB, disk_format, None)
        assert_facts(storage, location, disk_format, size=2 * MiB, backing=None)
        # Converted to the backend's format: what the guest reads is the source's data.
        assert holds(storage, location, disk_format, 0x55)
        assert holds(storage, location, disk_format, 0x00, MiB)
        assert storage.existing() == before | self.names([final])
        assert not any(o.exists for o in backend.probe(temps))

        # A disk that already exists is not imported again (a larger source changes nothing).
        again = backend.import_file(
            location, "op-import2", str(other), "raw", max_virtual_size=MAX_IMPORT
        )
        assert again == seen and holds(storage, location, disk_format, 0x55)
        assert storage.existing() == before | self.names([final])
        assert not temporaries(storage)

    def test_import_file_refuses_a_backing_file(
        self, backend: Backend, storage: StorageAccess, tmp_path: Path
    ) -> None:
        base = tmp_path / "sources" / "base.raw"
        make_source(base, "raw", MiB)
        overlay = tmp_path / "sources" / "overlay.qcow2"
        qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(overlay))
        location = backend.disk_location("vm1", "imported")
        artifacts = backend.import_artifacts(location, "op-import")
        before = storage.existing()

        with pytest.raises(UnsafeImage, match="backing"):
            backend.import_file(
                location, "op-import", str(overlay), "qcow2", max_virtual_size=MAX_IMPORT
            )

        backend.remove(artifacts)  # the compensation
        assert not any(o.exists for o in backend.probe(artifacts))
        assert storage.existing() == before

    # -- probe and remove ----------------------------------------------------------------------

    def test_probe(self, backend: Backend, storage: StorageAccess) -> None:
        location = backend.disk_location("vm1", "disk0")
        fmt = backend.disk_format
        *temps, final = backend.create_artifacts(location, "op1")
        snap = backend.snapshot_artifacts(location, "s1", "op2")[-1]
        assert [o.exists for o in backend.probe([*temps, final, snap])] == [False] * (
            len(temps) + 2
        )

        # A create killed mid-way: the temporary name exists, the final one does not.
        with faults.armed("create@mid-effect:crash"), pytest.raises(faults.Crash):
            backend.create(location, "op1", size=MiB, template=None)
        *temps_seen, final_seen = backend.probe([*temps, final])
        assert any(o.exists for o in temps_seen) and not final_seen.exists
        backend.remove(temps)

        backend.create(location, "op1", size=MiB, template=None)
        final_seen, snap_seen = backend.probe([final, snap])
        assert final_seen.exists and (final_seen.size, final_seen.format) == (MiB, fmt)
        assert final_seen.backing is None and final_seen.snapshots == ()
        assert not snap_seen.exists

        backend.snapshot(location, fmt, "s1", "op2")
        (snap_seen,) = backend.probe([snap])
        assert snap_seen.exists and snap_seen.size in (None, MiB)
        grown = MiB if FIXED in backend.capabilities else 2 * MiB
        if grown != MiB:
            backend.resize(location, fmt, grown)
        before = storage.existing()
        final_seen, snap_seen = backend.probe([final, snap])
        assert final_seen.size == grown
        # When reported, the size the snapshot was taken at, not the disk's size now.
        assert snap_seen.exists and snap_seen.size in (None, MiB)
        if INTERNAL in backend.capabilities:
            assert final_seen.snapshots == ("s1",)
        nothing = backend.disk_location("vm1", "nothing")
        assert not any(o.exists for o in backend.probe(backend.disk_artifacts(nothing, ["s1"])))
        assert storage.existing() == before  # probing changes nothing

    def test_remove_removes_every_named_artifact(
        self, backend: Backend, storage: StorageAccess
    ) -> None:
        before = storage.existing()
        location = backend.disk_location("vm1", "disk0")
        fmt = backend.disk_format
        # What crashes leave: a create and a snapshot killed mid-way, then done again.
        crashed = backend.create_artifacts(location, "op0")
        with faults.armed("create@mid-effect:crash"), pytest.raises(faults.Crash):
            backend.create(location, "op0", size=MiB, template=None)
        created = backend.create_artifacts(location, "op1")
        backend.create(location, "op1", size=MiB, template=None)
        crashed_snapshot = backend.snapshot_artifacts(location, "s1", "op2")
        with faults.armed("snapshot@mid-effect:crash"), pytest.raises(faults.Crash):
            backend.snapshot(location, fmt, "s1", "op2")
        snapped = backend.snapshot_artifacts(location, "s1", "op3")
        backend.snapshot(location, fmt, "s1", "op3")
        assert temporaries(storage)
        named = [*crashed, *created, *crashed_snapshot, *snapped]

        backend.remove(named)
        backend.remove(named)

        assert not any(o.exists for o in backend.probe(named))
        assert storage.existing() == before
        assert not temporaries(storage)

    def test_inventory_is_in_storage(self, backend: Backend, storage: StorageAccess) -> None:
        location = new_disk(backend)
        backend.snapshot(location, backend.disk_format, "s1", "op-snap")

        found = backend.inventory()

        assert self.names(found) <= storage.existing()

    # -- atomic publication --------------------------------------------------------------------

    @pytest.mark.parametrize(
        "effect", ["create", "create-from-template", "snapshot", "export", "direct-snapshot"]
    )
    def test_a_crash_mid_effect_publishes_nothing(
        self,
        backend: Backend,
        storage: StorageAccess,
        template_store: TemplateStore,
        tmp_path: Path,
        effect: str,
    ) -> None:
        """Killed part way, an effect leaves its final name unpublished; the compensation (or
        recovery) removes what it named, and run again it converges."""
        if effect == "direct-snapshot" and not isinstance(backend, DirectSnapshots):
            pytest.skip(f"the {backend.name} backend has no direct snapshots")
        op = effect.removesuffix("-from-template")
        fmt = backend.disk_format
        location = backend.disk_location("vm1", "disk0")
        template = None
        if effect == "create-from-template":
            template = cache_template(template_store, tmp_path / "sources", "qcow2")
        if op != "create":
            new_disk(backend)
            fill(storage, location, fmt, 0x5A)
        target = str(tmp_path / "export.qcow2")

        def named() -> tuple[Artifact, ...]:
            """What the operation's intent names."""
            if op == "create":
                return backend.create_artifacts(location, "op")
            if op == "snapshot":
                return backend.snapshot_artifacts(location, "s1", "op")
            if op == "export":
                return backend.export_artifacts(target, "op")
            assert isinstance(backend, DirectSnapshots)
            return backend.direct_snapshot_artifacts(location, "s1", "img1", "op")

        def run() -> None:
            if op == "create":
                backend.create(location, "op", size=2 * MiB, template=template)
            elif op == "snapshot":
                backend.snapshot(location, fmt, "s1", "op")
            elif op == "export":
                backend.export(location, fmt, target, "qcow2", "op")
            else:
                assert isinstance(backend, DirectSnapshots)
                backend.direct_snapshot(location, fmt, "s1", "img1", "op")

        artifacts = named()
        final = artifacts[-1]
        assert not final.temporary
        before = storage.existing()

        with faults.armed(f"{op}@mid-effect:crash"), pytest.raises(faults.Crash):
            run()

        assert not backend.probe([final])[0].exists
        assert not self.names([final]) & storage.existing()
        backend.remove(artifacts)  # the compensation, or recovery rolling back
        assert not any(o.exists for o in backend.probe(artifacts))
        assert storage.existing() == before
        if op != "create":
            assert holds(storage, location, fmt, 0x5A)

        run()  # and run again, it converges
        assert backend.probe([final])[0].exists
        assert not temporaries(storage)

    # -- capabilities ----------------------------------------------------------------------------

    def test_flatten(
        self,
        backend: Backend,
        storage: StorageAccess,
        template_store: TemplateStore,
        tmp_path: Path,
    ) -> None:
        if not isinstance(backend, Flattens):
            pytest.skip(f"the {backend.name} backend does not flatten")
        template = cache_template(template_store, tmp_path / "sources", "qcow2")
        location = backend.disk_location("vm1", "disk0")
        fmt = backend.disk_format
        backend.create(location, "op1", size=2 * MiB, template=template)
        fill(storage, location, fmt, 0x22, MiB)
        before = storage.existing()

        seen = backend.flatten(location, fmt)

        assert seen.exists and seen.backing is None and seen.size == 2 * MiB
        assert_facts(storage, location, fmt, size=2 * MiB, backing=None)
        assert holds(storage, location, fmt, 0x11) and holds(storage, location, fmt, 0x22, MiB)
        assert holds(storage, template.location, template.format, 0x11)
        assert backend.flatten(location, fmt) == seen  # a flat disk is left alone
        assert storage.existing() == before
        assert not temporaries(storage)

    def test_direct_snapshot(
        self,
        backend: Backend,
        storage: StorageAccess,
        template_store: TemplateStore,
        tmp_path: Path,
    ) -> None:
        if not isinstance(backend, DirectSnapshots):
            pytest.skip(f"the {backend.name} backend has no direct snapshots")
        template = cache_template(template_store, tmp_path / "sources", "qcow2")
        location = backend.disk_location("vm1", "disk0")
        fmt = backend.disk_format
        disk = backend.create(location, "op1", size=2 * MiB, template=template)
        fill(storage, location, fmt, 0x44, MiB)
        *temps, target = backend.direct_snapshot_artifacts(location, "handoff", "img1", "op-ds")
        assert temps and all(t.temporary for t in temps) and not target.temporary
        url = backend.direct_snapshot_url("img1")
        before = storage.existing()

        assert backend.direct_snapshot(location, fmt, "handoff", "img1", "op-ds") == url

        (target_seen,) = backend.probe([target])
        assert target_seen.exists and target_seen.backing is None
        assert target_seen.size == 2 * MiB
        assert_facts(storage, target.location, fmt, size=2 * MiB, backing=None)
        assert holds(storage, target.location, fmt, 0x11)
        assert holds(storage, target.location, fmt, 0x44, MiB)
        # The temporaries are gone; the disk and the template are as they were.
        assert not any(o.exists for o in backend.probe(temps))
        new = storage.existing() - before
        assert self.names([target]) <= new
        assert all(name.startswith(target.location) for name in new), new
        assert storage.existing() >= before
        assert backend.probe([disk.artifact])[0].backing == disk.backing
        assert holds(storage, location, fmt, 0x44, MiB)
        # Run again (a retry after the outcome was lost): the published copy is returned as is.
        after = storage.existing()
        assert backend.direct_snapshot(location, fmt, "handoff", "img1", "op-ds") == url
        assert storage.existing() == after
        assert not temporaries(storage)
