"""Raw disks: plain sparse files; snapshots are full sparse copies beside the disk."""

from __future__ import annotations

from diskledger.backends import files, qemu
from diskledger.backends.contract import Capability, TemplateSource
from diskledger.backends.file_backend import CopySnapshots, file_spec
from diskledger.errors import BackendError

__all__ = ["SPEC", "RawBackend"]


class RawBackend(CopySnapshots):
    """Disks at ``<root>/disks/<instance>/<disk>``, snapshots in ``<disk>.snapshots/``."""

    name = "raw"
    disk_format = "raw"
    capabilities: frozenset[Capability] = frozenset({Capability.DURABLE_EFFECTS})

    def _restore(self, snapshot: str, temp: str, size: int) -> None:
        files.sparse_copy(snapshot, temp)
        if self._virtual_size(temp) < size:
            qemu.resize(temp, self.disk_format, size)

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
