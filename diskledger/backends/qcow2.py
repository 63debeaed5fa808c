"""qcow2 disks: copy-on-write overlays on the cached template, with internal snapshots."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from diskledger import faults
from diskledger.backends import files, qemu
from diskledger.backends.contract import (
    Artifact,
    ArtifactKind,
    Capability,
    Observation,
    TemplateSource,
)
from diskledger.backends.file_backend import FileBackend, file_spec
from diskledger.errors import BackendError

__all__ = ["SPEC", "Qcow2Backend"]

INTERNAL_SNAPSHOT = ArtifactKind.INTERNAL_SNAPSHOT


class Qcow2Backend(FileBackend):
    """Disks at ``<root>/disks/<instance>/<disk>``; snapshots live inside the image."""

    name = "qcow2"
    disk_format = "qcow2"
    capabilities = frozenset(
        {Capability.INTERNAL_SNAPSHOTS, Capability.BACKING_OVERLAY, Capability.DURABLE_EFFECTS}
    )
    encrypts = True

    def snapshot_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        # One `qemu-img snapshot -c` either makes the snapshot or not: nothing temporary.
        return (Artifact(INTERNAL_SNAPSHOT, location, name=snapshot),)

    def snapshot(self, location: str, fmt: str, snapshot: str, token: str) -> Observation:
        self._check_format(fmt)
        if not _has_snapshot(location, snapshot):
            faults.reach("mid-effect", "snapshot")
            qemu.snapshot_create(location, snapshot, luks=self._luks)
        disk = self._observe(location)
        return dataclasses.replace(disk, artifact=Artifact(INTERNAL_SNAPSHOT, location, snapshot))

    def _snapshot_artifact(self, location: str, snapshot: str) -> Artifact:
        return Artifact(INTERNAL_SNAPSHOT, location, name=snapshot)

    def rollback_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        return ()

    def rollback(
        self, location: str, fmt: str, snapshot: str, token: str, *, size: int
    ) -> Observation:
        self._check_format(fmt)
        if not _has_snapshot(location, snapshot):
            raise BackendError(f"{location} has no internal snapshot {snapshot!r}")
        # Applying a snapshot also restores the virtual size it was taken at.
        qemu.snapshot_apply(location, snapshot, luks=self._luks)
        faults.reach("mid-effect", "rollback")
        if self._virtual_size(location) < size:
            qemu.resize(location, fmt, size, luks=self._luks)
        return self._observe(location)

    def remove_snapshot(self, location: str, fmt: str, snapshot: str) -> None:
        self._check_format(fmt)
        if files.stat(location) is not None and _has_snapshot(location, snapshot):
            faults.reach("mid-effect", "remove-snapshot")
            qemu.snapshot_delete(location, snapshot, luks=self._luks)

    def delete(self, location: str, fmt: str, snapshots: Sequence[str]) -> None:
        self._check_format(fmt)
        faults.reach("mid-effect", "delete")
        files.remove_file(location)  # internal snapshots go with the file
        self._remove_instance_dir(location)

    def _write_new(self, temp: str, size: int | None, template: TemplateSource | None) -> None:
        if template is None:
            qemu.create(temp, "qcow2", size)
            return
        grow = size if size is not None and size > template.virtual_size else None
        qemu.create(temp, "qcow2", grow, backing=template.location, backing_fmt=template.format)

    def _write_encrypted(
        self, temp: str, size: int | None, template: TemplateSource | None, luks: qemu.Luks
    ) -> None:
        # qemu's LUKS inside qcow2: the clusters are encrypted, the qcow2 metadata is not. A
        # template's data is copied in (encrypted on the way), never shared as a backing file.
        wanted = max(size or 0, template.virtual_size if template is not None else 0)
        qemu.create(temp, "qcow2", wanted, luks=luks)
        if template is not None:
            qemu.convert_into_luks(template.location, template.format, temp, luks)

    def _virtual_size(self, location: str) -> int:
        return qemu.read_qcow2_header(location)[0]

    def _probe_other(self, artifact: Artifact) -> Observation:
        if artifact.kind is not INTERNAL_SNAPSHOT or artifact.name is None:
            return super()._probe_other(artifact)
        exists = files.stat(artifact.location) is not None and _has_snapshot(
            artifact.location, artifact.name
        )
        return Observation(artifact, exists=exists, format="qcow2" if exists else None)

    def _remove_other(self, artifact: Artifact) -> None:
        if artifact.kind is not INTERNAL_SNAPSHOT or artifact.name is None:
            super()._remove_other(artifact)
            return
        self.remove_snapshot(artifact.location, self.disk_format, artifact.name)


SPEC = file_spec(Qcow2Backend)
"""The ``qcow2`` backend, as the registry finds it."""


def _has_snapshot(location: str, name: str) -> bool:
    """Whether the image has a snapshot called ``name``.

    ``qemu-img snapshot -a/-d`` look a name up as a snapshot *id* first, so a name that is also
    another snapshot's id would silently pick that other snapshot: refused instead.
    """
    snapshots = qemu.snapshot_list(location)
    if not any(s.name == name for s in snapshots):
        return False
    if any(s.id == name and s.name != name for s in snapshots):
        raise BackendError(
            f"{location}: snapshot name {name!r} is also another snapshot's id; "
            "qemu-img would act on that one"
        )
    return True
