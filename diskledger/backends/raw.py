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
    Observation,
    TemplateSource,
)
from diskledger.backends.file_backend import FileBackend, file_pair, file_spec
from diskledger.backends.files import check_component, temporary_path
from diskledger.errors import BackendError

__all__ = ["SPEC", "RawBackend"]

FILE = ArtifactKind.FILE


class RawBackend(FileBackend):
    """Disks at ``<root>/disks/<instance>/<disk>``, snapshots in ``<disk>.snapshots/``."""

    name = "raw"
    disk_format = "raw"
    capabilities: frozenset[Capability] = frozenset()

    def snapshot_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        return file_pair(_snapshot_path(location, snapshot), token)

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


SPEC = file_spec(RawBackend)
"""The ``raw`` backend, as the registry finds it."""


def _snapshot_path(location: str, snapshot: str) -> str:
    return os.path.join(f"{location}.snapshots", check_component(snapshot, "snapshot"))
