"""What the file backends (raw, qcow2, parallels) share: disks as files under ``<root>/disks``,
made under a temporary name and published by rename; import, resize, export, probe and remove;
snapshots as full copies beside the disk for the formats without internal ones
(``CopySnapshots``); and, for a member taking over another's operation on a shared directory,
``set_aside`` (``SetsAside``)."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

from diskledger import faults
from diskledger.backends import files, qemu
from diskledger.backends.contract import (
    Artifact,
    ArtifactKind,
    Backend,
    Capability,
    DiskSource,
    Observation,
    SourceKind,
    TemplateSource,
    TemplateStore,
)
from diskledger.backends.files import check_component, temporary_path
from diskledger.backends.registry import BackendSpec
from diskledger.backends.staging import stage
from diskledger.backends.templates import TemplateCache
from diskledger.errors import BackendError, InvalidInput, InvalidSize

__all__ = ["CopySnapshots", "FileBackend", "FileSettings", "file_pair", "file_spec"]

FILE = ArtifactKind.FILE


@dataclass(frozen=True, slots=True)
class FileSettings:
    """The settings of the file backends."""

    preallocate: bool = False
    """Disks get their whole virtual size allocated when made and grown (Nova's
    ``preallocate_images``)."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> FileSettings:
        """``DISKLEDGER_PREALLOCATE``: ``none`` (the default) or ``space``."""
        raw = environ.get("DISKLEDGER_PREALLOCATE") or "none"
        if raw not in ("none", "space"):
            raise InvalidInput(f"DISKLEDGER_PREALLOCATE={raw!r} is not one of none, space")
        return cls(preallocate=raw == "space")


class _FileBackendClass(Protocol):
    name: str

    def __call__(self, root: str, *, preallocate: bool = False) -> Backend: ...


def file_spec(backend: _FileBackendClass) -> BackendSpec:
    """The declaration of a file backend: ``FileSettings``, disks under the root, templates in
    the local ``TemplateCache``."""

    def make(root: str, settings: object) -> Backend:
        if not isinstance(settings, FileSettings):
            raise TypeError(
                f"the {backend.name} backend is made with FileSettings, not {settings!r}"
            )
        return backend(root, preallocate=settings.preallocate)

    return BackendSpec(
        name=backend.name,
        load_settings=FileSettings.from_environ,
        make=make,
        templates=_template_cache,
    )


def _template_cache(backend: Backend, root: str, max_virtual_size: int) -> TemplateStore:
    return TemplateCache(root, max_virtual_size=max_virtual_size)


class FileBackend:
    """What the file backends share: the layout under ``root``, export, probe and remove."""

    name: str
    disk_format: str
    capabilities: frozenset[Capability]
    encrypts: ClassVar[bool] = False
    """Can make LUKS-encrypted disks (``create``/``import_file`` with ``luks``): qcow2 only."""
    _luks: qemu.Luks | None = None
    """The key of the one encrypted disk this copy works on (``with_key``)."""

    def __init__(self, root: str, *, preallocate: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.preallocates = preallocate
        self._disks = os.path.join(self.root, "disks")

    def disk_location(self, instance: str, disk: str) -> str:
        return os.path.join(
            self._disks, check_component(instance, "instance"), check_component(disk, "disk")
        )

    def create_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]:
        return file_pair(location, token)

    def with_key(self, luks: qemu.Luks) -> Self:
        """This backend, for one disk encrypted with ``luks``: every ``qemu-img`` call that must
        open the disk (resize, internal snapshots) gets the key as a secret file."""
        if not self.encrypts:
            raise InvalidInput(f"the {self.name} backend cannot encrypt a disk")
        keyed = copy.copy(self)
        keyed._luks = luks
        return keyed

    def create(
        self,
        location: str,
        token: str,
        *,
        size: int | None,
        template: TemplateSource | None,
        luks: qemu.Luks | None = None,
    ) -> Observation:
        """``luks``: encrypt the new disk with that key (``encrypts`` backends only); a
        template's data is then copied into it, never shared as a backing file."""
        if files.stat(location) is not None:
            return self._observe(location)
        if template is None and size is None:
            raise InvalidSize("a blank disk needs a size")
        if luks is not None and not self.encrypts:
            raise InvalidInput(f"the {self.name} backend cannot encrypt a disk")
        files.ensure_dir_under(self.root, os.path.dirname(location), files.IMAGE_DIR_MODE)
        temp = temporary_path(location, token)
        if luks is not None:
            self._write_encrypted(temp, size, template, luks)
        else:
            self._write_new(temp, size, template)
        self._reserve(temp)
        faults.reach("mid-effect", "create")
        files.publish(temp, location)
        return self._observe(location)

    def import_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]:
        copy = Artifact(FILE, temporary_path(f"{location}.import", token), temporary=True)
        return (copy, *file_pair(location, token))

    def import_file(
        self,
        location: str,
        token: str,
        source: str,
        fmt: str,
        *,
        max_virtual_size: int,
        luks: qemu.Luks | None = None,
    ) -> Observation:
        """``luks``: the inspected copy is converted into a new disk encrypted with that key."""
        if files.stat(location) is not None:
            return self._observe(location)
        if luks is not None and not self.encrypts:
            raise InvalidInput(f"the {self.name} backend cannot encrypt a disk")
        files.ensure_dir_under(self.root, os.path.dirname(location), files.IMAGE_DIR_MODE)
        copy = temporary_path(f"{location}.import", token)
        virtual_size = stage(source, fmt, copy, op="import", max_virtual_size=max_virtual_size)
        temp = temporary_path(location, token)
        if luks is not None:
            self._write_encrypted(temp, virtual_size, TemplateSource(copy, fmt, virtual_size), luks)
            files.remove_file(copy)
        elif fmt == self.disk_format:
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
            qemu.resize(location, fmt, size, luks=self._luks)
            self._reserve(location)
        return self._observe(location)

    def export_artifacts(self, target: str, token: str) -> tuple[Artifact, ...]:
        return file_pair(target, token)

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

    def set_aside(self, temporaries: Sequence[Artifact], tag: str) -> list[str]:
        """Rename each temporary file of ``temporaries`` to ``<path>.fenced-<tag>`` and return
        those names (``SetsAside``); final artifacts, and artifacts that are not files, are left
        alone. A temporary not there gets a tombstone under that name instead, so that it can
        never be published either. Files on a shared directory have no fence but this one;
        operations that change a disk in place (resize, qcow2 snapshots and rollback, delete)
        are not covered by it. See ``files.set_aside``."""
        return files.set_aside_all(
            self.root, [a.location for a in temporaries if a.kind is FILE and a.temporary], tag
        )

    # -- per backend -------------------------------------------------------------------------

    def _write_new(self, temp: str, size: int | None, template: TemplateSource | None) -> None:
        raise NotImplementedError

    def _write_encrypted(
        self, temp: str, size: int | None, template: TemplateSource | None, luks: qemu.Luks
    ) -> None:
        raise InvalidInput(f"the {self.name} backend cannot encrypt a disk")

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


class CopySnapshots(FileBackend):
    """A file backend whose snapshots are full sparse copies of the disk in
    ``<disk>.snapshots/<name>`` (raw, parallels: formats without internal snapshots). A rollback
    copies the snapshot back under a temporary name and publishes it over the disk, grown back
    to the disk's size by ``_restore``."""

    def snapshot_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        return file_pair(snapshot_path(location, snapshot), token)

    def snapshot(self, location: str, fmt: str, snapshot: str, token: str) -> Observation:
        self._check_format(fmt)
        path = snapshot_path(location, snapshot)
        if files.stat(path) is None:
            files.ensure_dir_under(self.root, os.path.dirname(path), files.IMAGE_DIR_MODE)
            temp = temporary_path(path, token)
            # The image names no other file: a copy of it is a whole image.
            files.sparse_copy(location, temp)
            faults.reach("mid-effect", "snapshot")
            files.publish(temp, path)
        return self._observe(path)

    def _snapshot_artifact(self, location: str, snapshot: str) -> Artifact:
        return Artifact(FILE, snapshot_path(location, snapshot))

    def rollback_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        # The disk itself is not named: it existed before, and compensation must not remove it.
        return (Artifact(FILE, temporary_path(location, token), temporary=True),)

    def rollback(
        self, location: str, fmt: str, snapshot: str, token: str, *, size: int
    ) -> Observation:
        self._check_format(fmt)
        path = snapshot_path(location, snapshot)
        if files.stat(path) is None:
            raise BackendError(f"{location} has no snapshot {snapshot!r}")
        temp = temporary_path(location, token)
        self._restore(path, temp, size)
        faults.reach("mid-effect", "rollback")
        files.publish(temp, location)
        return self._observe(location)

    def remove_snapshot(self, location: str, fmt: str, snapshot: str) -> None:
        self._check_format(fmt)
        path = snapshot_path(location, snapshot)
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
            files.remove_file(snapshot_path(location, snapshot))
        # Not lenient: a file left in there is one the ledger does not know, i.e. a leak.
        files.remove_dir(f"{location}.snapshots")
        self._remove_instance_dir(location)

    def _restore(self, snapshot: str, temp: str, size: int) -> None:
        """Write the snapshot's image to ``temp``, at least ``size`` bytes large."""
        raise NotImplementedError


def snapshot_path(location: str, snapshot: str) -> str:
    """Where a ``CopySnapshots`` backend keeps ``location``'s snapshot ``snapshot``."""
    return os.path.join(f"{location}.snapshots", check_component(snapshot, "snapshot"))


def file_pair(final: str, token: str) -> tuple[Artifact, ...]:
    """The temporary name ``final`` is written under, and ``final`` itself."""
    return (
        Artifact(FILE, temporary_path(final, token), temporary=True),
        Artifact(FILE, final),
    )
