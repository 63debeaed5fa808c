"""Templates in the pool: raw images with the protected snapshot disks are cloned from."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from diskledger import faults
from diskledger.backends import files, qemu
from diskledger.backends.contract import Artifact, ArtifactKind, Observation
from diskledger.backends.files import check_component, temporary_path
from diskledger.backends.inspection import inspect_image
from diskledger.backends.rbd.backend import RbdBackend
from diskledger.backends.rbd.images import TEMPLATE_SNAPSHOT, temporary
from diskledger.backends.sources import ImageSource
from diskledger.backends.staging import stage
from diskledger.errors import CephError, StorageIOError, UnsafeImage

__all__ = ["RbdTemplateStore", "rbd_url"]

IMAGE = ArtifactKind.RBD_IMAGE
SNAPSHOT = ArtifactKind.RBD_SNAPSHOT

HEAD = 1 << 20
"""How much of an image cloned from is read to inspect it: every header the format inspector
recognises a non-raw image by lies well inside it, and reading it costs milliseconds."""


def rbd_url(url: str) -> tuple[str, str, str, str] | None:
    """``(fsid, pool, image, snapshot)`` of an image service's RBD location,
    ``rbd://<fsid>/<pool>/<image>/<snapshot>`` with each part URL-quoted (glance_store's form);
    None for any other URL, and for the older ``rbd://<image>`` that names no cluster."""
    parts = urlsplit(url)
    if parts.scheme != "rbd":
        return None
    pieces = [unquote(p) for p in f"{parts.netloc}{parts.path}".split("/")]
    if len(pieces) != 4 or not all(pieces):
        return None
    fsid, pool, image, snapshot = pieces
    return fsid, pool, image, snapshot


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

    def clone_choice(self, locations: Sequence[str], fmt: str) -> tuple[str | None, str | None]:
        offered = [(url, where) for url in locations if (where := rbd_url(url)) is not None]
        if not offered:
            return None, None
        if fmt != "raw":
            # Cloned, its bytes would stay qcow2 under a template the pool keeps as raw.
            return None, f"the image is {fmt}; only raw images are cloned"
        reasons = []
        for url, (fsid, pool, image, snapshot) in offered:
            ours = self.backend.cluster.fsid()
            if fsid != ours:
                reasons.append(f"{url} is in another Ceph cluster (this one is {ours})")
                continue
            try:
                seen = self.backend.rbd.observe(Artifact(SNAPSHOT, f"{pool}/{image}", snapshot))
            except CephError as exc:
                reasons.append(_unreadable(url, pool, exc))
                continue
            if not seen.exists:
                reasons.append(f"{url}: no such snapshot in this cluster")
            elif not seen.protected:
                reasons.append(f"{url}: the snapshot is not protected, so it could change")
            else:
                return url, None
        return None, "; ".join(reasons)

    def clone_from(self, location: str, template_id: str, token: str) -> Observation:
        rbd = self.backend.rbd
        final = self.location(template_id)
        if rbd.exists(final):
            return rbd.observe(Artifact(IMAGE, final))
        where = rbd_url(location)
        assert where is not None, location
        _, pool, image, snapshot = where
        parent = f"{pool}/{image}"
        copy = temporary_path(self.backend._staging(final), token)
        files.ensure_dir_under(self.root, self.backend._staging_dir(), files.IMAGE_DIR_MODE)
        self._inspect_head(parent, snapshot, copy)
        temp = temporary(final, token)
        rbd.remove_image(temp)
        rbd.clone(parent, snapshot, temp)
        faults.reach("mid-effect", "fetch")
        rbd.snapshot(temp, TEMPLATE_SNAPSHOT, protect=True)
        files.remove_file(copy)
        rbd.rename(temp, final)
        return rbd.observe(Artifact(IMAGE, final))

    def _inspect_head(self, parent: str, snapshot: str, copy: str) -> None:
        """Refuse, as an import's copy would be, a "raw" image that is something else or larger
        than the ceiling: its first ``HEAD`` bytes are written to ``copy`` and inspected."""
        cluster = self.backend.cluster
        what = f"{parent}@{snapshot}"
        with self.backend.rbd.image(parent, snapshot=snapshot, read_only=True) as image:
            size: int = cluster.call(f"size of {what}", image.size)
            head: bytes = cluster.call(f"read {what}", lambda: image.read(0, min(size, HEAD)))
        if size > self.max_virtual_size:
            raise UnsafeImage(
                f"the image is {size} bytes, above the {self.max_virtual_size} byte ceiling"
            )
        try:
            with open(copy, "wb") as out:
                out.write(head)
        except OSError as exc:
            raise StorageIOError(f"cannot write {copy}: {exc.strerror}", errno=exc.errno) from exc
        inspect_image(copy, "raw", max_virtual_size=self.max_virtual_size)

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


def _unreadable(url: str, pool: str, exc: CephError) -> str:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return (
            f"{url}: this client may not read pool {pool} (grant it "
            f"'profile rbd-read-only pool={pool}', as Nova's is)"
        )
    if exc.errno == errno.ENOENT:
        return f"{url}: no pool {pool} in this cluster"
    return f"{url}: cannot be read ({exc})"
