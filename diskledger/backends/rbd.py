"""RBD disks: images in a Ceph pool, cloned copy-on-write from a protected template snapshot.

Names (``location`` is ``pool/image``):

- a disk ``INSTANCE/NAME`` is the image ``INSTANCE~NAME`` (``~`` cannot occur in a name, so two
  disks never share an image); a template is ``_base~TEMPLATE`` (no instance name starts with
  ``_``), with the protected snapshot ``snap`` that disks clone from;
- while an operation writes, the image is ``<image>.tmp-<op id>``; it is renamed when whole.

Every call goes through ``Cluster.call`` (bounded retries, translated errors; see ``ceph.py``).
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from diskledger import faults
from diskledger.backends import files, qemu
from diskledger.backends.ceph import CephConfig, Cluster
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
from diskledger.errors import CephError, InvalidInput, InvalidSize, StorageIOError

__all__ = ["TEMPLATE_SNAPSHOT", "RbdBackend", "RbdTemplateStore", "image_name", "split"]

IMAGE = ArtifactKind.RBD_IMAGE
SNAPSHOT = ArtifactKind.RBD_SNAPSHOT
FILE = ArtifactKind.FILE

TEMPLATE_SNAPSHOT = "snap"
"""The protected snapshot of a template image that disks are cloned from (Glance's convention)."""


def image_name(instance: str, disk: str) -> str:
    return f"{check_component(instance, 'instance')}~{check_component(disk, 'disk')}"


def split(location: str) -> tuple[str, str]:
    """``pool/image`` → (pool, image)."""
    pool, sep, image = location.partition("/")
    if not sep or not pool or not image or "/" in image or "@" in image:
        raise InvalidInput(f"{location!r} is not an RBD location (pool/image)")
    return pool, image


def _temporary(location: str, token: str) -> str:
    return f"{location}.tmp-{check_component(token, 'token')}"


class _Rbd:
    """Image-level primitives shared by disks and templates; each is idempotent."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @contextmanager
    def image(self, location: str, *, read_only: bool = False) -> Iterator[Any]:
        import rbd

        pool, name = split(location)
        with self.cluster.ioctx(pool) as ioctx:
            handle = self.cluster.call(
                f"open {location}", lambda: rbd.Image(ioctx, name, read_only=read_only)
            )
            try:
                yield handle
            finally:
                handle.close()

    def exists(self, location: str) -> bool:
        import rbd

        pool, name = split(location)
        with self.cluster.ioctx(pool) as ioctx:
            try:
                self.cluster.call(
                    f"look up {location}", lambda: rbd.Image(ioctx, name, read_only=True).close()
                )
            except CephError as exc:
                if exc.errno == errno.ENOENT:
                    return False
                raise
        return True

    def create(self, location: str, size: int) -> None:
        import rbd

        pool, name = split(location)
        with self.cluster.ioctx(pool) as ioctx:
            self.cluster.call(
                f"create {location}", lambda: rbd.RBD().create(ioctx, name, size, old_format=False)
            )

    def clone(self, parent: str, snapshot: str, child: str) -> None:
        import rbd

        parent_pool, parent_name = split(parent)
        child_pool, child_name = split(child)
        with self.cluster.ioctx(parent_pool) as p_ioctx, self.cluster.ioctx(child_pool) as c_ioctx:
            self.cluster.call(
                f"clone {parent}@{snapshot} to {child}",
                lambda: rbd.RBD().clone(p_ioctx, parent_name, snapshot, c_ioctx, child_name),
            )

    def rename(self, source: str, target: str) -> None:
        """Publish ``source`` as ``target``; done already when only ``target`` exists."""
        import rbd

        pool, name = split(source)
        target_pool, target_name = split(target)
        assert pool == target_pool, "RBD renames stay within a pool"
        with self.cluster.ioctx(pool) as ioctx:
            try:
                self.cluster.call(
                    f"rename {source} to {target}",
                    lambda: rbd.RBD().rename(ioctx, name, target_name),
                )
            except CephError as exc:
                # A retried rename whose first attempt went through finds its source gone.
                if exc.errno != errno.ENOENT or not self.exists(target) or self.exists(source):
                    raise

    def grow(self, location: str, size: int) -> None:
        with self.image(location) as image:
            if self.cluster.call(f"size of {location}", image.size) < size:
                self.cluster.call(f"resize {location}", lambda: image.resize(size))

    def snapshot(self, location: str, name: str, *, protect: bool = False) -> None:
        with self.image(location) as image:
            if name not in _snapshot_names(image):
                self.cluster.call(f"snapshot {location}@{name}", lambda: image.create_snap(name))
            if protect and not image.is_protected_snap(name):
                self.cluster.call(f"protect {location}@{name}", lambda: image.protect_snap(name))

    def clones(self, location: str, image: Any, snapshot: str | None = None) -> list[str]:
        """The images cloned from ``snapshot`` of the open ``image`` (``pool/image``), or from
        any of its snapshots when None, also those in the trash namespace: a snapshot removed
        while a v2 clone still depends on it lives on there, and so does the dependency."""

        def listed() -> list[str]:
            found: list[str] = []
            for snap in image.list_snaps():
                if snapshot is not None and (
                    snap["namespace"] != _user_namespace() or snap["name"] != snapshot
                ):
                    continue
                image.set_snap_by_id(snap["id"])
                try:
                    found.extend(f"{c['pool']}/{c['image']}" for c in image.list_children2())
                finally:
                    image.set_snap(None)
            return found

        which = location if snapshot is None else f"{location}@{snapshot}"
        return self.cluster.call(f"list the clones of {which}", listed)

    def remove_snapshot(self, location: str, name: str) -> None:
        """Unprotect and remove; gone already is fine. Refused while clones depend on it,
        protected or not: librbd would move a snapshot with v2 clones to the trash instead of
        removing it, and the image could then never be removed."""
        if not self.exists(location):
            return
        with self.image(location) as image:
            if name not in _snapshot_names(image):
                self._purge_trashed(location, image, name)
                return
            _refuse_clones(f"{location}@{name}", self.clones(location, image, name))
            if self.cluster.call(
                f"look at {location}@{name}", lambda: image.is_protected_snap(name)
            ):
                self.cluster.call(
                    f"unprotect {location}@{name}",
                    lambda: image.unprotect_snap(name),
                    policy=self.cluster.config.busy,
                )
            self.cluster.call(
                f"remove snapshot {location}@{name}",
                lambda: image.remove_snap(name),
                policy=self.cluster.config.busy,
            )

    def _purge_trashed(self, location: str, image: Any, name: str) -> None:
        """Finish a removal of the snapshot ``name`` that was cut short. librbd first moves a
        snapshot it removes to the trash namespace (under a generated name), then removes it: a
        process killed in between leaves it there, holding its data, invisible to every lookup
        by name. A trashed snapshot that clones still depend on stays (librbd removes it with
        its last clone)."""
        import rbd

        def purge() -> None:
            for snap in image.list_snaps():
                if snap["namespace"] != rbd.RBD_SNAP_NAMESPACE_TYPE_TRASH:
                    continue
                if snap.get("trash", {}).get("original_name") != name:
                    continue
                image.set_snap_by_id(snap["id"])
                try:
                    children = list(image.list_children2())
                finally:
                    image.set_snap(None)
                if not children:
                    image.remove_snap_by_id(snap["id"])

        self.cluster.call(
            f"finish removing snapshot {location}@{name}", purge, policy=self.cluster.config.busy
        )

    def wait_unwatched(self, location: str) -> None:
        """Wait, under the busy policy, until no other client watches the image (a VM shutting
        down, a crashed client whose watch has not expired), then return; past the budget raise
        ``ImageBusy``. Checked before anything is removed, so a refused delete leaves the disk
        whole rather than stripped of its snapshots. A read-only open registers no watch of its
        own, so every watcher listed is another client."""
        with self.image(location, read_only=True) as image:

            def unwatched() -> None:
                watchers = list(image.watchers_list())
                if watchers:
                    raise OSError(errno.EBUSY, f"{len(watchers)} client(s) watch {location}")

            self.cluster.call(
                f"remove {location}, which another client has open",
                unwatched,
                policy=self.cluster.config.busy,
            )

    def remove_image(self, location: str) -> None:
        """Remove the image and its snapshots; gone already is fine. An image a client still
        watches (a running VM) is retried under the busy policy, then refused: never leaked
        silently, never removed under a user. An image with clones is refused at once: they
        are not ours to flatten or remove."""

        if not self.exists(location):
            self._remove_half_made(location)
            return
        if self._finish_cut_short_rename(location):
            return
        with self.image(location, read_only=True) as image:
            snapshots = _snapshot_names(image)
            _refuse_clones(location, self.clones(location, image))
        self.wait_unwatched(location)
        for snapshot in snapshots:
            self.remove_snapshot(location, snapshot)
        self._remove_name(location, f"remove {location}")

    def _remove_name(self, location: str, what: str) -> None:
        """librbd's remove of the name, under the busy policy; gone already is fine."""
        import rbd

        pool, name = split(location)
        with self.cluster.ioctx(pool) as ioctx:
            try:
                self.cluster.call(
                    what, lambda: rbd.RBD().remove(ioctx, name), policy=self.cluster.config.busy
                )
            except CephError as exc:
                if exc.errno != errno.ENOENT:
                    raise

    def _remove_half_made(self, location: str) -> None:
        """Remove what a create or clone killed part way left: a name the pool lists whose
        image does not open (no header yet). librbd's remove takes such a name out of the pool
        directory; opening it never could, so without this it would stay listed for good."""

        pool, name = split(location)
        if name in self.list_pool(pool):
            self._remove_name(location, f"remove the half-made {location}")

    def flatten(self, location: str) -> None:
        with self.image(location) as image:
            if _parent(image) is not None:
                self.cluster.call(f"flatten {location}", image.flatten)

    def observe(self, artifact: Artifact) -> Observation:
        if artifact.kind is SNAPSHOT:
            assert artifact.name is not None
            if not self.exists(artifact.location):
                return Observation(artifact, exists=False)
            name, what = artifact.name, f"{artifact.location}@{artifact.name}"
            with self.image(artifact.location, read_only=True) as image:
                user = _user_namespace()
                found = self.cluster.call(
                    f"list the snapshots of {artifact.location}",
                    lambda: [
                        s
                        for s in image.list_snaps()
                        if s["namespace"] == user and s["name"] == name
                    ],
                )
                if not found:
                    return Observation(artifact, exists=False)
                protected = self.cluster.call(
                    f"look at {what}", lambda: image.is_protected_snap(name)
                )
                # The size the snapshot was taken at, which a later resize of the image does
                # not change (a rollback restores it).
                return Observation(
                    artifact,
                    exists=True,
                    format="raw",
                    size=int(found[0]["size"]),
                    protected=bool(protected),
                )
        if not self.exists(artifact.location):
            return Observation(artifact, exists=False)
        with self.image(artifact.location, read_only=True) as image:
            return Observation(
                artifact,
                exists=True,
                format="raw",
                size=self.cluster.call(f"size of {artifact.location}", image.size),
                backing=_parent(image),
                snapshots=_snapshot_names(image),
            )

    def read_into(self, location: str, fd: int, path: str) -> None:
        """Copy the image's data into the empty file open as ``fd`` (``path`` names it in
        errors), the image opened read-only (no watch); holes stay holes."""
        chunk = 4 << 20
        with self.image(location, read_only=True) as image:
            size: int = self.cluster.call(f"size of {location}", image.size)
            extents: list[tuple[int, int]] = []

            def allocated(offset: int, length: int, exists: bool) -> int:
                if exists:
                    extents.append((offset, length))
                return 0

            self.cluster.call(
                f"list the data of {location}",
                lambda: image.diff_iterate(0, size, None, allocated, include_parent=True),
            )
            try:
                os.ftruncate(fd, size)
                for offset, length in extents:
                    for at in range(offset, offset + length, chunk):
                        n = min(chunk, offset + length - at)
                        data: bytes = self.cluster.call(
                            f"read {location}", functools.partial(image.read, at, n)
                        )
                        os.pwrite(fd, data, at)
                os.fsync(fd)
            except OSError as exc:
                raise StorageIOError(
                    f"cannot write {path}: {exc.strerror or exc}", errno=exc.errno
                ) from exc

    def _finish_cut_short_rename(self, location: str) -> bool:
        """Whether the temporary name ``location`` is one of two names of a rename cut short,
        which is then finished: nothing is left to remove under ``location``.

        librbd renames in steps: it writes ``rbd_id.<new>`` (the new name now opens the image),
        renames the pool directory's entry, removes ``rbd_id.<old>``. Killed between two steps,
        the temporary and the final name open the same image, and librbd's remove of the
        temporary name would remove the published image with it. When both open the same
        image: if the directory lists the final name, only the temporary's ``rbd_id`` object is
        left over and goes; if it still lists the temporary, the final's ``rbd_id`` object goes
        and the rename is run again. Either way the image is then the final name's alone, as
        the recovery that found the final name whole decided.
        """
        final, sep, _ = location.partition(".tmp-")
        if not sep or not self.exists(final) or self._image_id(location) != self._image_id(final):
            return False
        pool, name = split(location)
        final_name = split(final)[1]
        stale = name if final_name in self.list_pool(pool) else final_name
        with self.cluster.ioctx(pool) as ioctx:
            self.cluster.call(
                f"remove the stale rbd_id.{stale} of a rename cut short",
                lambda: ioctx.remove_object(f"rbd_id.{stale}"),
            )
        if stale == final_name:
            self.rename(location, final)
        return True

    def _image_id(self, location: str) -> str:
        with self.image(location, read_only=True) as image:
            image_id: str = self.cluster.call(f"the id of {location}", image.id)
        return image_id

    def watchers(self, location: str) -> list[dict[str, Any]]:
        """The clients watching the image (``addr``, ``id``); none when it does not exist. A
        read-only open registers no watch: every watcher listed is another client. An image
        whose removal was cut short may no longer open by its name while its header, and the
        watch of the client that was removing it, remain: it is opened by the id the pool's
        directory lists for the name."""
        import rbd

        pool, name = split(location)

        def listed(ioctx: Any) -> list[dict[str, Any]]:
            try:
                with rbd.Image(ioctx, name, read_only=True) as image:
                    return list(image.watchers_list())
            except rbd.ImageNotFound:
                pass
            for entry in rbd.RBD().list2(ioctx):
                if entry["name"] == name:
                    try:
                        with rbd.Image(ioctx, image_id=entry["id"], read_only=True) as image:
                            return list(image.watchers_list())
                    except rbd.ImageNotFound:
                        pass
            return []

        with self.cluster.ioctx(pool) as ioctx:
            found: list[dict[str, Any]] = self.cluster.call(
                f"list the watchers of {location}", lambda: listed(ioctx)
            )
        return found

    def list_pool(self, pool: str) -> list[str]:
        import rbd

        with self.cluster.ioctx(pool) as ioctx:
            names: list[str] = self.cluster.call(f"list pool {pool}", lambda: rbd.RBD().list(ioctx))
        return names

    def spec(self, location: str) -> str:
        """The image as ``qemu-img`` names it: ``rbd:pool/image:id=...:conf=...:keyring=...``."""
        config = self.cluster.config
        spec = f"rbd:{location}"
        for key, value in (("id", config.user), ("conf", config.conf), ("keyring", config.keyring)):
            if value:
                if ":" in value or "@" in value:
                    raise InvalidInput(f"the Ceph {key} {value!r} cannot contain ':' or '@'")
                spec += f":{key}={value}"
        return spec


def _user_namespace() -> int:
    import rbd

    namespace: int = rbd.RBD_SNAP_NAMESPACE_TYPE_USER
    return namespace


def _snapshot_names(image: Any) -> tuple[str, ...]:
    """The image's own snapshots: those in the user namespace. A trashed snapshot (removed
    while a v2 clone depends on it) has a generated name nobody can ask for."""
    user = _user_namespace()
    return tuple(s["name"] for s in image.list_snaps() if s["namespace"] == user)


def _refuse_clones(what: str, clones: Sequence[str]) -> None:
    if clones:
        raise CephError(
            f"{what} has clones that depend on it: {', '.join(sorted(clones))}",
            errno=errno.EBUSY,
        )


def _parent(image: Any) -> str | None:
    import rbd

    try:
        pool, name, snapshot = image.parent_info()
    except rbd.ImageNotFound:
        return None
    return f"{pool}/{name}@{snapshot}"


class RbdBackend:
    """Disks as images in ``config.pool``; snapshots are RBD snapshots of the image."""

    name = "rbd"
    disk_format = "raw"
    capabilities = frozenset(
        {
            Capability.INTERNAL_SNAPSHOTS,
            Capability.BACKING_OVERLAY,
            Capability.FLATTEN,
            Capability.DIRECT_SNAPSHOT,
            Capability.SNAPSHOT_IN_USE,
        }
    )
    preallocates = False  # RBD images are thin; space is the cluster's to manage

    def __init__(self, root: str, config: CephConfig, cluster: Cluster | None = None) -> None:
        self.root = root
        self.config = config
        self.cluster = cluster or Cluster(config)
        self.rbd = _Rbd(self.cluster)

    def close(self) -> None:
        self.cluster.close()

    def disk_location(self, instance: str, disk: str) -> str:
        return f"{self.config.pool}/{image_name(instance, disk)}"

    def create_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]:
        return _image_pair(location, token)

    def create(
        self, location: str, token: str, *, size: int | None, template: TemplateSource | None
    ) -> Observation:
        if self.rbd.exists(location):
            return self.rbd.observe(Artifact(IMAGE, location))
        if template is None and size is None:
            raise InvalidSize("a blank disk needs a size")
        temp = _temporary(location, token)
        self.rbd.remove_image(temp)  # a retry after a partial clone starts afresh
        if template is None:
            assert size is not None
            self.rbd.create(temp, size)
        else:
            self.rbd.clone(template.location, TEMPLATE_SNAPSHOT, temp)
            if size is not None and size > template.virtual_size:
                self.rbd.grow(temp, size)
        faults.reach("mid-effect", "create")
        self.rbd.rename(temp, location)
        return self.rbd.observe(Artifact(IMAGE, location))

    def import_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]:
        copy = temporary_path(self._staging(location), token)
        return (Artifact(FILE, copy, temporary=True), *_image_pair(location, token))

    def import_file(
        self, location: str, token: str, source: str, fmt: str, *, max_virtual_size: int
    ) -> Observation:
        """Make the disk from the local image ``source`` declared as ``fmt`` (converted to raw)."""
        if self.rbd.exists(location):
            return self.rbd.observe(Artifact(IMAGE, location))
        copy = temporary_path(self._staging(location), token)
        files.ensure_dir_under(self.root, self._staging_dir(), files.IMAGE_DIR_MODE)
        size = stage(source, fmt, copy, op="import", max_virtual_size=max_virtual_size)
        temp = _temporary(location, token)
        self.rbd.remove_image(temp)
        self.rbd.create(temp, size)
        qemu.convert_spec(copy, fmt, self.rbd.spec(temp), "raw", target_exists=True)
        files.remove_file(copy)
        self.rbd.rename(temp, location)
        return self.rbd.observe(Artifact(IMAGE, location))

    def resize(self, location: str, fmt: str, size: int) -> Observation:
        self._check_format(fmt)
        faults.reach("mid-effect", "resize")
        self.rbd.grow(location, size)
        return self.rbd.observe(Artifact(IMAGE, location))

    def snapshot_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        # One librbd call makes the snapshot or not: nothing temporary.
        return (Artifact(SNAPSHOT, location, name=check_component(snapshot, "snapshot")),)

    def snapshot(self, location: str, fmt: str, snapshot: str, token: str) -> Observation:
        self._check_format(fmt)
        faults.reach("mid-effect", "snapshot")
        self.rbd.snapshot(location, snapshot)
        return self.rbd.observe(Artifact(SNAPSHOT, location, name=snapshot))

    def rollback_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        return ()

    def rollback(
        self, location: str, fmt: str, snapshot: str, token: str, *, size: int
    ) -> Observation:
        self._check_format(fmt)
        with self.rbd.image(location) as image:
            if snapshot not in _snapshot_names(image):
                raise CephError(f"{location} has no snapshot {snapshot!r}", errno=errno.ENOENT)
            # Rolling back also restores the size the snapshot was taken at.
            self.rbd.cluster.call(
                f"roll {location} back to {snapshot}", lambda: image.rollback_to_snap(snapshot)
            )
        faults.reach("mid-effect", "rollback")
        self.rbd.grow(location, size)
        return self.rbd.observe(Artifact(IMAGE, location))

    def remove_snapshot(self, location: str, fmt: str, snapshot: str) -> None:
        self._check_format(fmt)
        faults.reach("mid-effect", "remove-snapshot")
        self.rbd.remove_snapshot(location, snapshot)

    def delete(self, location: str, fmt: str, snapshots: Sequence[str]) -> None:
        """Remove the image and its snapshots. Refused while another image is a clone of one of
        its snapshots (diskledger never flattens or removes what it does not own) or while it
        holds snapshots the ledger does not know."""
        self._check_format(fmt)
        if not self.rbd.exists(location):
            # Gone, or half gone: a removal killed part way leaves the name listed in the pool
            # without an image that opens; librbd's remove takes that out too.
            self.rbd.remove_image(location)
            return
        # Every refusal comes before the first removal, so a refused delete leaves the disk
        # whole: recovery then sees nothing removed and rolls back, not half a delete.
        with self.rbd.image(location, read_only=True) as image:
            unknown = sorted(set(_snapshot_names(image)) - set(snapshots))
            clones = self.rbd.clones(location, image)
        if unknown:
            raise CephError(
                f"{location} has snapshots the ledger does not know: {', '.join(unknown)}",
                errno=errno.ENOTEMPTY,
            )
        _refuse_clones(location, clones)
        self.rbd.wait_unwatched(location)
        for i, snapshot in enumerate(snapshots):
            self.rbd.remove_snapshot(location, snapshot)
            if i == 0:
                faults.reach("mid-effect", "delete")
        if not snapshots:
            faults.reach("mid-effect", "delete")
        self.rbd.remove_image(location)

    def flatten(self, location: str, fmt: str) -> Observation:
        """Copy the data the disk shares with its template into it; a flat disk is left alone."""
        self._check_format(fmt)
        faults.reach("mid-effect", "flatten")
        self.rbd.flatten(location)
        return self.rbd.observe(Artifact(IMAGE, location))

    def direct_snapshot_artifacts(
        self, location: str, snapshot: str, image_id: str, token: str
    ) -> tuple[Artifact, ...]:
        target = self._snapshot_target(image_id)
        # Compensation removes them in this order: the clone before the snapshot it came from.
        return (
            Artifact(IMAGE, _temporary(target, token), temporary=True),
            Artifact(
                SNAPSHOT, location, name=check_component(snapshot, "snapshot"), temporary=True
            ),
            Artifact(IMAGE, target),
        )

    def writer(self) -> dict[str, Any]:
        """Who this process is to the cluster, recorded in each intent (see ``fence``)."""
        return {"ceph_client": self.cluster.instance_id()}

    def fence(self, writer: Mapping[str, Any] | None, artifacts: Sequence[Artifact]) -> list[str]:
        """Cut off the clients of a dead writer that still hold the images its unfinished
        operation touched; returns the addresses blocklisted.

        A client killed with an image open keeps its watch, and its exclusive lock, until the
        OSD expires the watch (``osd_client_watch_timeout``, 30 s): until then the image cannot
        be removed and librbd will not break the lock, so recovery could neither undo nor finish
        the operation. Blocklisted (what ``rbd lock break`` does), the watch goes at once. Fenced
        are the watchers whose id is the writer's (as recorded in its intent) and any watcher of
        a temporary image (its name is the operation's alone: the writer, or a tool it ran such
        as qemu-img); never this process's own client, nor a stranger on a final image (a VM).
        """
        dead = (writer or {}).get("ceph_client")
        me = self.cluster.instance_id()
        images: dict[str, bool] = {}
        for artifact in artifacts:
            if artifact.kind in (IMAGE, SNAPSHOT):
                temporary = artifact.temporary and artifact.kind is IMAGE
                images[artifact.location] = images.get(artifact.location, False) or temporary
        addresses = sorted(
            {
                str(watcher["addr"])
                for location, temporary in images.items()
                for watcher in self.rbd.watchers(location)
                if watcher["id"] != me and (temporary or watcher["id"] == dead)
            }
        )
        for address in addresses:
            self.cluster.mon_command(
                {"prefix": "osd blocklist", "blocklistop": "add", "addr": address, "expire": 3600.0}
            )
        return addresses

    def direct_snapshot_url(self, image_id: str) -> str:
        target = self._snapshot_target(image_id)
        return f"rbd://{self.cluster.fsid()}/{target}/{TEMPLATE_SNAPSHOT}"

    def direct_snapshot(
        self, location: str, fmt: str, snapshot: str, image_id: str, token: str
    ) -> str:
        """Clone the disk's current data into the snapshot pool as a standalone image with a
        protected ``snap``, and return its ``rbd://fsid/pool/image/snap`` URL.

        Protected snapshot → clone into a temporary name in the image pool → flatten → remove the
        source snapshot → protected ``snap`` on the clone → rename. The source snapshot is
        removed on failure too (compensation removes it: it is a named temporary artifact).
        """
        self._check_format(fmt)
        target = self._snapshot_target(image_id)
        url = self.direct_snapshot_url(image_id)
        if self.rbd.exists(target):
            return url
        temp = _temporary(target, token)
        self.rbd.snapshot(location, snapshot, protect=True)
        self.rbd.remove_image(temp)
        self.rbd.clone(location, snapshot, temp)
        faults.reach("mid-effect", "direct-snapshot")
        self.rbd.flatten(temp)
        self.rbd.remove_snapshot(location, snapshot)
        self.rbd.snapshot(temp, TEMPLATE_SNAPSHOT, protect=True)
        self.rbd.rename(temp, target)
        return url

    def export_artifacts(self, target: str, token: str) -> tuple[Artifact, ...]:
        return (
            Artifact(FILE, temporary_path(target, token), temporary=True),
            Artifact(FILE, target),
        )

    def export(
        self, location: str, fmt: str, target: str, target_format: str, token: str
    ) -> Observation:
        """Read the disk through librbd, opened read-only, never through qemu-img: qemu's rbd
        driver opens every image read-write, and the watch that registers outlives a killed
        export for the OSD's watch timeout (30 s), keeping the disk from being deleted. A client
        that only reads registers none. A qcow2 target is converted from a raw copy in an
        unnamed file beside it (nothing to leak when the process dies)."""
        self._check_format(fmt)
        temp = temporary_path(target, token)
        if target_format == "raw":
            with _new_file(temp) as fd:
                self.rbd.read_into(location, fd, temp)
        else:
            with _unnamed_file(os.path.dirname(temp)) as fd:
                self.rbd.read_into(location, fd, temp)
                qemu.convert(f"/proc/{os.getpid()}/fd/{fd}", "raw", temp, target_format)
        faults.reach("mid-effect", "export")
        files.publish(temp, target)
        return qemu.observe(Artifact(FILE, target), target_format)

    def disk_artifacts(self, location: str, snapshots: Sequence[str]) -> tuple[Artifact, ...]:
        return (Artifact(IMAGE, location), *(Artifact(SNAPSHOT, location, s) for s in snapshots))

    def probe(self, artifacts: Sequence[Artifact]) -> tuple[Observation, ...]:
        return tuple(self._probe(a) for a in artifacts)

    def remove(self, artifacts: Sequence[Artifact]) -> None:
        for artifact in artifacts:
            if artifact.kind is FILE:
                files.remove_file(artifact.location)
            elif artifact.kind is SNAPSHOT:
                assert artifact.name is not None
                self.rbd.remove_snapshot(artifact.location, artifact.name)
            else:
                self.rbd.remove_image(artifact.location)

    def disk_source(self, location: str, *, addresses: bool = True) -> DiskSource:
        return DiskSource(
            SourceKind.NETWORK,
            protocol="rbd",
            name=location,
            hosts=self.cluster.monitors() if addresses else (),
            user=self.config.user,
        )

    def inventory(self) -> tuple[Artifact, ...]:
        found: list[Artifact] = []
        for name in self.rbd.list_pool(self.config.pool):
            location = f"{self.config.pool}/{name}"
            found.append(Artifact(IMAGE, location))
            try:
                with self.rbd.image(location, read_only=True) as image:
                    found.extend(Artifact(SNAPSHOT, location, s) for s in _snapshot_names(image))
            except CephError as exc:
                if exc.errno != errno.ENOENT:  # removed while we looked
                    raise
        return tuple(found)

    def _probe(self, artifact: Artifact) -> Observation:
        if artifact.kind is FILE:
            try:
                return qemu.observe(artifact, None)
            except CephError:
                return Observation(artifact, exists=True)
        return self.rbd.observe(artifact)

    def _snapshot_target(self, image_id: str) -> str:
        pool = self.config.snapshot_pool
        if not pool:
            raise InvalidInput(
                "direct snapshots need a snapshot pool (DISKLEDGER_RBD_SNAPSHOT_POOL)"
            )
        return f"{pool}/{check_component(image_id, 'image id')}"

    def _staging_dir(self) -> str:
        return f"{self.root}/staging"

    def _staging(self, location: str) -> str:
        return f"{self._staging_dir()}/{split(location)[1]}"

    def _check_format(self, fmt: str) -> None:
        if fmt != self.disk_format:
            raise InvalidInput(f"RBD disks are raw, not {fmt}")


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

    def import_file(self, source: str, fmt: str, template_id: str, token: str) -> Observation:
        rbd = self.backend.rbd
        final = self.location(template_id)
        if rbd.exists(final):
            return rbd.observe(Artifact(IMAGE, final))
        copy = temporary_path(self.backend._staging(final), token)
        files.ensure_dir_under(self.root, self.backend._staging_dir(), files.IMAGE_DIR_MODE)
        size = stage(source, fmt, copy, op="fetch", max_virtual_size=self.max_virtual_size)
        temp = _temporary(final, token)
        rbd.remove_image(temp)
        rbd.create(temp, size)
        qemu.convert_spec(copy, fmt, rbd.spec(temp), "raw", target_exists=True)
        rbd.snapshot(temp, TEMPLATE_SNAPSHOT, protect=True)
        files.remove_file(copy)
        rbd.rename(temp, final)
        return rbd.observe(Artifact(IMAGE, final))


@contextmanager
def _new_file(path: str) -> Iterator[int]:
    """A new file at ``path`` (never an existing one, never through a symbolic link)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise StorageIOError(
            f"cannot create {path}: {exc.strerror or exc}", errno=exc.errno
        ) from exc
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _unnamed_file(directory: str) -> Iterator[int]:
    """A file in ``directory`` with no name (``O_TMPFILE``): it is gone when closed, also when
    the process dies. Where the file system has no ``O_TMPFILE``, a file unlinked at once."""
    try:
        try:
            fd = os.open(directory, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            import tempfile

            fd, name = tempfile.mkstemp(dir=directory, prefix=".export-")
            os.unlink(name)
    except OSError as exc:
        raise StorageIOError(
            f"cannot create a file in {directory}: {exc.strerror or exc}", errno=exc.errno
        ) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def _image_pair(location: str, token: str) -> tuple[Artifact, ...]:
    return (
        Artifact(IMAGE, _temporary(location, token), temporary=True),
        Artifact(IMAGE, location),
    )
