"""Raw disks: plain sparse files; snapshots are full sparse copies beside the disk."""

from __future__ import annotations

import os
from collections.abc import Sequence

from diskledger import faults
from diskledger.backends import files, qemu
from diskledger.backends.contract import (
    Artifact,
    ArtifactKind,
    Capability,
    DiskSource,
    Observation,
    SourceKind,
    TemplateSource,
)
from diskledger.backends.files import check_component, temporary_path
from diskledger.backends.staging import stage
from diskledger.errors import BackendError, InvalidInput, InvalidSize

__all__ = ["FileBackend", "RawBackend"]

FILE = ArtifactKind.FILE


class FileBackend:
    """What the file backends share: the layout under ``root``, export, probe and remove."""

    name: str
    disk_format: str
    capabilities: frozenset[Capability]

    def __init__(self, root: str, *, preallocate: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.preallocates = preallocate
        self._disks = os.path.join(self.root, "disks")

    def disk_location(self, instance: str, disk: str) -> str:
        return os.path.join(
            self._disks, check_component(instance, "instance"), check_component(disk, "disk")
        )

    def create_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]:
        return _file_pair(location, token)

    def create(
        self, location: str, token: str, *, size: int | None, template: TemplateSource | None
    ) -> Observation:
        if files.stat(location) is not None:
            return self._observe(location)
        if template is None and size is None:
            raise InvalidSize("a blank disk needs a size")
        files.ensure_dir_under(self.root, os.path.dirname(location), files.IMAGE_DIR_MODE)
        temp = temporary_path(location, token)
        self._write_new(temp, size, template)
        self._reserve(temp)
        faults.reach("mid-effect", "create")
        files.publish(temp, location)
        return self._observe(location)

    def import_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]:
        copy = Artifact(FILE, temporary_path(f"{location}.import", token), temporary=True)
        return (copy, *_file_pair(location, token))

    def import_file(
        self, location: str, token: str, source: str, fmt: str, *, max_virtual_size: int
    ) -> Observation:
        if files.stat(location) is not None:
            return self._observe(location)
        files.ensure_dir_under(self.root, os.path.dirname(location), files.IMAGE_DIR_MODE)
        copy = temporary_path(f"{location}.import", token)
        stage(source, fmt, copy, op="import", max_virtual_size=max_virtual_size)
        temp = temporary_path(location, token)
        if fmt == self.disk_format:
            files.publish(copy, temp)
        else:
            qemu.convert(copy, fmt, temp, self.disk_format)
            files.remove_file(copy)
        self._reserve(temp)
        files.publish(temp, location)
        return self._observe(location)

    def resize(self, location: str, fmt: str, size: int) -> Observation:
        self._check_format(fmt)
        if self._virtual_size(location) < size:
            faults.reach("mid-effect", "resize")
            qemu.resize(location, fmt, size)
            self._reserve(location)
        return self._observe(location)

    def export_artifacts(self, target: str, token: str) -> tuple[Artifact, ...]:
        return _file_pair(target, token)

    def export(
        self, location: str, fmt: str, target: str, target_format: str, token: str
    ) -> Observation:
        self._check_format(fmt)
        temp = temporary_path(target, token)
        if fmt == target_format == "raw":
            files.sparse_copy(location, temp)
        else:
            # convert writes the whole guest view, so the result never has a backing file.
            qemu.convert(location, fmt, temp, target_format)
        faults.reach("mid-effect", "export")
        files.publish(temp, target)
        return qemu.observe(Artifact(FILE, target), target_format)

    def disk_artifacts(self, location: str, snapshots: Sequence[str]) -> tuple[Artifact, ...]:
        return (
            Artifact(FILE, location),
            *(self._snapshot_artifact(location, s) for s in snapshots),
        )

    def _snapshot_artifact(self, location: str, snapshot: str) -> Artifact:
        raise NotImplementedError

    def probe(self, artifacts: Sequence[Artifact]) -> tuple[Observation, ...]:
        return tuple(self._probe(artifact) for artifact in artifacts)

    def close(self) -> None:
        pass  # nothing held open

    def inventory(self) -> tuple[Artifact, ...]:
        return ()  # everything is a file under the root, which verify walks

    def disk_source(self, location: str, *, addresses: bool = True) -> DiskSource:
        return DiskSource(SourceKind.FILE, path=location)

    def _reserve(self, path: str) -> None:
        if self.preallocates:
            files.reserve(path, self._virtual_size(path))

    def remove(self, artifacts: Sequence[Artifact]) -> None:
        for artifact in artifacts:
            if artifact.kind is FILE:
                files.remove_file(artifact.location)
            else:
                self._remove_other(artifact)

    # -- per backend -------------------------------------------------------------------------

    def _write_new(self, temp: str, size: int | None, template: TemplateSource | None) -> None:
        raise NotImplementedError

    def _virtual_size(self, location: str) -> int:
        raise NotImplementedError

    def _probe_other(self, artifact: Artifact) -> Observation:
        raise BackendError(f"the {self.name} backend has no {artifact.kind} artifacts")

    def _remove_other(self, artifact: Artifact) -> None:
        raise BackendError(f"the {self.name} backend has no {artifact.kind} artifacts")

    # -- shared helpers ----------------------------------------------------------------------

    def _probe(self, artifact: Artifact) -> Observation:
        if artifact.kind is not FILE:
            return self._probe_other(artifact)
        # Only finished files this backend wrote under its own root have a format it knows;
        # a temporary file is never trusted to be whole, and an export target or a template
        # is not ours to decide.
        ours = not artifact.temporary and artifact.location.startswith(self._disks + os.sep)
        try:
            return qemu.observe(artifact, self.disk_format if ours else None)
        except BackendError:
            # It is there, but not readable as what we would have written: evidence, not a crash.
            return Observation(artifact, exists=True)

    def _observe(self, location: str) -> Observation:
        return qemu.observe(Artifact(FILE, location), self.disk_format)

    def _check_format(self, fmt: str) -> None:
        if fmt != self.disk_format:
            raise InvalidInput(f"the {self.name} backend keeps {self.disk_format} disks, not {fmt}")

    def _remove_instance_dir(self, location: str) -> None:
        # Other disks of the instance may still live there.
        files.remove_dir(os.path.dirname(location), only_if_empty=True)


class RawBackend(FileBackend):
    """Disks at ``<root>/disks/<instance>/<disk>``, snapshots in ``<disk>.snapshots/``."""

    name = "raw"
    disk_format = "raw"
    capabilities: frozenset[Capability] = frozenset()

    def snapshot_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        return _file_pair(_snapshot_path(location, snapshot), token)

    def snapshot(self, location: str, fmt: str, snapshot: str, token: str) -> Observation:
        self._check_format(fmt)
        path = _snapshot_path(location, snapshot)
        if files.stat(path) is None:
            files.ensure_dir_under(self.root, os.path.dirname(path), files.IMAGE_DIR_MODE)
            temp = temporary_path(path, token)
            files.sparse_copy(location, temp)
            faults.reach("mid-effect", "snapshot")
            files.publish(temp, path)
        return self._observe(path)

    def _snapshot_artifact(self, location: str, snapshot: str) -> Artifact:
        return Artifact(FILE, _snapshot_path(location, snapshot))

    def rollback_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        # The disk itself is not named: it existed before, and compensation must not remove it.
        return (Artifact(FILE, temporary_path(location, token), temporary=True),)

    def rollback(
        self, location: str, fmt: str, snapshot: str, token: str, *, size: int
    ) -> Observation:
        self._check_format(fmt)
        temp = temporary_path(location, token)
        files.sparse_copy(_snapshot_path(location, snapshot), temp)
        if self._virtual_size(temp) < size:
            qemu.resize(temp, fmt, size)
        faults.reach("mid-effect", "rollback")
        files.publish(temp, location)
        return self._observe(location)

    def remove_snapshot(self, location: str, fmt: str, snapshot: str) -> None:
        self._check_format(fmt)
        path = _snapshot_path(location, snapshot)
        faults.reach("mid-effect", "remove-snapshot")
        files.remove_file(path)
        files.remove_dir(os.path.dirname(path), only_if_empty=True)

    def delete(self, location: str, fmt: str, snapshots: Sequence[str]) -> None:
        self._check_format(fmt)
        faults.reach("mid-effect", "delete")
        # The disk goes first: a delete that fails before it changed nothing and is recorded as
        # failed; one that dies after it is finished by recovery (its snapshots are named).
        files.remove_file(location)
        for snapshot in snapshots:
            files.remove_file(_snapshot_path(location, snapshot))
        # Not lenient: a file left in there is one the ledger does not know, i.e. a leak.
        files.remove_dir(f"{location}.snapshots")
        self._remove_instance_dir(location)

    def _write_new(self, temp: str, size: int | None, template: TemplateSource | None) -> None:
        if template is None:
            qemu.create(temp, "raw", size)
            return
        if template.format == "raw":
            files.sparse_copy(template.location, temp)
        else:
            qemu.convert(template.location, template.format, temp, "raw")
        if size is not None and size > template.virtual_size:
            qemu.resize(temp, "raw", size)

    def _virtual_size(self, location: str) -> int:
        st = files.stat(location)
        if st is None:
            raise BackendError(f"no disk at {location}")
        return st.st_size


def _snapshot_path(location: str, snapshot: str) -> str:
    return os.path.join(f"{location}.snapshots", check_component(snapshot, "snapshot"))


def _file_pair(final: str, token: str) -> tuple[Artifact, ...]:
    return (
        Artifact(FILE, temporary_path(final, token), temporary=True),
        Artifact(FILE, final),
    )
