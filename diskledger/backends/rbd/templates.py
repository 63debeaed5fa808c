"""Templates in the pool: raw images with the protected snapshot disks are cloned from."""

from __future__ import annotations

from diskledger.backends import files, qemu
from diskledger.backends.contract import Artifact, ArtifactKind, Observation
from diskledger.backends.files import check_component, temporary_path
from diskledger.backends.rbd.backend import RbdBackend
from diskledger.backends.rbd.images import TEMPLATE_SNAPSHOT, temporary
from diskledger.backends.sources import ImageSource
from diskledger.backends.staging import stage

__all__ = ["RbdTemplateStore"]

IMAGE = ArtifactKind.RBD_IMAGE


class RbdTemplateStore:
    """Templates imported into the pool once, as raw images with a protected ``snap``.

    The source is copied to a local staging file and inspected there (``staging.stage``), then
    written into ``<pool>/_base~<id>.tmp-<op id>``, snapshotted and protected, and renamed: the
    final name only ever holds a whole template ready to clone from.
    """

    def __init__(self, root: str, backend: RbdBackend, *, max_virtual_size: int = 16 << 40) -> None:
        self.root = root
        self.backend = backend
        self.max_virtual_size = max_virtual_size
        self._scope: str | None = None

    @property
    def scope(self) -> str | None:
        """``ceph-<fsid>.<pool>``: the pool is shared by every host of the cluster."""
        if self._scope is None:
            self._scope = f"ceph-{self.backend.cluster.fsid()}.{self.backend.config.pool}"
        return self._scope

    def cached_format(self, declared: str) -> str:
        return "raw"

    def location(self, template_id: str) -> str:
        return f"{self.backend.config.pool}/_base~{check_component(template_id, 'template')}"

    def observe(self, template_id: str, fmt: str) -> Observation:
        return self.backend.rbd.observe(Artifact(IMAGE, self.location(template_id)))

    def import_artifacts(self, template_id: str, token: str) -> tuple[Artifact, ...]:
        return self.backend.import_artifacts(self.location(template_id), token)

    def import_file(
        self, source: str | ImageSource, fmt: str, template_id: str, token: str
    ) -> Observation:
        rbd = self.backend.rbd
        final = self.location(template_id)
        if rbd.exists(final):
            return rbd.observe(Artifact(IMAGE, final))
        copy = temporary_path(self.backend._staging(final), token)
        files.ensure_dir_under(self.root, self.backend._staging_dir(), files.IMAGE_DIR_MODE)
        size = stage(source, fmt, copy, op="fetch", max_virtual_size=self.max_virtual_size)
        temp = temporary(final, token)
        rbd.remove_image(temp)
        rbd.create(temp, size)
        qemu.convert_spec(copy, fmt, rbd.spec(temp), "raw", target_exists=True)
        rbd.snapshot(temp, TEMPLATE_SNAPSHOT, protect=True)
        files.remove_file(copy)
        rbd.rename(temp, final)
        return rbd.observe(Artifact(IMAGE, final))

    def removal_artifacts(self, template_id: str, token: str) -> tuple[Artifact, Artifact]:
        final = self.location(template_id)
        return Artifact(IMAGE, temporary(final, token), temporary=True), Artifact(IMAGE, final)

    def set_aside(self, template_id: str, token: str) -> None:
        """Rename the image (clones keep their parent by id, so a clone that exists despite the
        ledger still reads it; removing the image then refuses, see ``Rbd.remove_image``)."""
        final = self.location(template_id)
        self.backend.rbd.rename(final, temporary(final, token))

    def restore(self, template_id: str, token: str) -> None:
        final = self.location(template_id)
        self.backend.rbd.rename(temporary(final, token), final)
