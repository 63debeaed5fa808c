"""Images in a Ceph pool, through librbd: how they are named, and the primitives disks and
templates are made of (``Images``).

Names (``location`` is ``pool/image``):

- a disk ``INSTANCE/NAME`` is the image ``INSTANCE~NAME`` (``~`` cannot occur in a name, so two
  disks never share an image); a template is ``_base~TEMPLATE`` (no instance name starts with
  ``_``), with the protected snapshot ``snap`` that disks clone from;
- while an operation writes, the image is ``<image>.tmp-<op id>``; it is renamed when whole. A
  disk cloned from a template at the template's size is cloned under its final name instead
  (``RbdBackend.clone_template``); ``clone_state`` tells such a clone whole or cut short.

Every call goes through ``Cluster.call`` (bounded retries, translated errors; see ``cluster.py``).
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from diskledger.backends.contract import Artifact, ArtifactKind, Observation
from diskledger.backends.files import check_component
from diskledger.backends.rbd.cluster import Cluster
from diskledger.errors import CephError, InvalidInput, StorageIOError

__all__ = [
    "TEMPLATE_SNAPSHOT",
    "Images",
    "image_name",
    "refuse_clones",
    "snapshot_names",
    "split",
    "temporary",
]

SNAPSHOT = ArtifactKind.RBD_SNAPSHOT

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


def temporary(location: str, token: str) -> str:
    return f"{location}.tmp-{check_component(token, 'token')}"


class Images:
    """Image-level primitives shared by disks and templates; each is idempotent."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @contextmanager
    def image(
        self, location: str, *, snapshot: str | None = None, read_only: bool = False
    ) -> Iterator[Any]:
        """The image ``location`` (at ``snapshot``), opened; closed afterwards (in the
        background when the cluster fell silent: ``Cluster.opened``)."""
        import rbd

        pool, name = split(location)
        what = location if snapshot is None else f"{location}@{snapshot}"
        with self.cluster.opened(
            pool, what, lambda ioctx: rbd.Image(ioctx, name, snapshot=snapshot, read_only=read_only)
        ) as handle:
            yield handle

    def exists(self, location: str) -> bool:
        """Whether an image opens under ``location``. A name with neither ``rbd_id.<name>``
        (format 2) nor ``<name>.rbd`` (format 1) cannot open: two object lookups answer that,
        without the image context librbd builds to find out the same (0.5 ms instead of 2.3 on
        the test cluster). Otherwise the image is opened."""
        import rbd

        pool, name = split(location)
        with self.cluster.ioctx(pool) as ioctx:
            if not self.cluster.call(f"look up {location}", lambda: _named(ioctx, name)):
                return False
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
        what = f"clone {parent}@{snapshot} to {child}"
        if parent_pool == child_pool:  # one I/O context serves both
            with self.cluster.ioctx(parent_pool) as ioctx:
                self.cluster.call(
                    what, lambda: rbd.RBD().clone(ioctx, parent_name, snapshot, ioctx, child_name)
                )
            return
        with self.cluster.ioctx(parent_pool) as p_ioctx, self.cluster.ioctx(child_pool) as c_ioctx:
            self.cluster.call(
                what, lambda: rbd.RBD().clone(p_ioctx, parent_name, snapshot, c_ioctx, child_name)
            )

    def clone_state(self, location: str, parent: str) -> str:
        """What is under ``location``, which an operation clones in place from ``parent``
        (``pool/image@snap``): ``"absent"`` (nothing: no name in the pool's directory, no
        ``rbd_id`` object), ``"whole"``, or ``"cut-short"``.

        librbd clones in steps (Pacific's ``CloneRequest``): it creates the child image
        (``rbd_id.<name>``, the directory entry, the header: the name now opens an image with
        the parent's size and no parent), attaches the parent to the child's header, then
        attaches the child to the parent (v1: ``rbd_children``; v2: the parent snapshot's child
        list), then copies the parent's image-meta and closes the child. A clone is *whole*
        once the last of the steps that matter is done, the one that makes the parent's
        snapshot list it among its clones: a single object operation, atomic on the OSD, that
        comes after the child's header has its parent. Until then the template's snapshot could
        be unprotected and removed under it, and its data would not be the template's: it is
        cut short."""
        pool, name = split(location)
        parent_image, _, snapshot = parent.partition("@")
        if not self.exists(location):
            if name in self.list_pool(pool) or self._id_object(location):
                return "cut-short"
            return "absent"
        with self.image(location, read_only=True) as image:
            attached = _parent(image)
        if attached != parent:
            return "cut-short"
        with self.image(parent_image, read_only=True) as template:
            clones = self.clones(parent_image, template, snapshot)
        return "whole" if location in clones else "cut-short"

    def remove_cut_short(self, location: str, parent: str) -> None:
        """Remove what is under ``location`` unless it is a whole clone of ``parent``, with the
        ``rbd_id`` object a clone killed before its directory entry leaves behind (it would
        keep the name taken: librbd creates an image's id object exclusively)."""
        if self.clone_state(location, parent) != "cut-short":
            return
        self.remove_image(location)
        if not self.exists(location) and self._id_object(location):
            pool, name = split(location)
            if name not in self.list_pool(pool):
                with self.cluster.ioctx(pool) as ioctx:
                    self.cluster.call(
                        f"remove the stray rbd_id.{name} of a clone cut short",
                        lambda: ioctx.remove_object(f"rbd_id.{name}"),
                    )

    def _id_object(self, location: str) -> bool:
        """Whether the pool holds ``rbd_id.<image>``, the first object librbd writes for a new
        image (and the first of a rename)."""
        pool, name = split(location)
        with self.cluster.ioctx(pool) as ioctx:
            try:
                self.cluster.call(f"look up rbd_id.{name}", lambda: ioctx.stat(f"rbd_id.{name}"))
            except CephError as exc:
                if exc.errno == errno.ENOENT:
                    return False
                raise
        return True

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
            if name not in snapshot_names(image):
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
            if name not in snapshot_names(image):
                self._purge_trashed(location, image, name)
                return
            refuse_clones(f"{location}@{name}", self.clones(location, image, name))
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
            snapshots = snapshot_names(image)
            refuse_clones(location, self.clones(location, image))
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
        """Copy the parent's data into the clone ``location`` (a flat image is left alone),
        reporting librbd's progress (from librbd's threads) while a callback listens."""
        import threading

        from diskledger import progress

        with self.image(location) as image:
            if _parent(image) is None:
                return
            if not progress.active():
                self.cluster.call(f"flatten {location}", image.flatten)
                return
            # librbd counts objects (of the parent overlap): reported as bytes of the image.
            size, unit = self.cluster.call(
                f"look at {location}", lambda: (image.size(), image.stat()["obj_size"])
            )
            meter = progress.meter("flatten", None)
            lock = threading.Lock()
            raised: list[BaseException] = []

            def seen(offset: int, total: int) -> int:
                with lock:
                    if raised:
                        return 0
                    try:
                        meter.total = min(size, int(total) * unit)
                        meter.update(min(size, int(offset) * unit))
                    except BaseException as exc:  # librbd cannot carry it: raised after
                        raised.append(exc)
                return 0

            self.cluster.call(f"flatten {location}", lambda: image.flatten(on_progress=seen))
            if raised:
                raise raised[0]
            meter.finish(meter.total if meter.total is not None else meter.done)

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
                snapshots=snapshot_names(image),
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


def _named(ioctx: Any, name: str) -> bool:
    """Whether the pool holds an image's first object under ``name`` (format 2, then 1)."""
    import rados

    for obj in (f"rbd_id.{name}", f"{name}.rbd"):
        try:
            ioctx.stat(obj)
        except rados.ObjectNotFound:
            continue
        return True
    return False


def _user_namespace() -> int:
    import rbd

    namespace: int = rbd.RBD_SNAP_NAMESPACE_TYPE_USER
    return namespace


def snapshot_names(image: Any) -> tuple[str, ...]:
    """The image's own snapshots: those in the user namespace. A trashed snapshot (removed
    while a v2 clone depends on it) has a generated name nobody can ask for."""
    user = _user_namespace()
    return tuple(s["name"] for s in image.list_snaps() if s["namespace"] == user)


def refuse_clones(what: str, clones: Sequence[str]) -> None:
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
