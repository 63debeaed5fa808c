"""RBD disks: images in a Ceph pool, cloned copy-on-write from a protected template snapshot
(see ``images.py`` for the names, ``cluster.py`` for retries and errors).

Members of a shared ledger fence each other here (``FencesMembers``): ``set_registrar`` puts the
connection in member mode (each new client registered before use, a blocklisted one final),
``fence_member`` blocklists another member's clients, ``unfence_member`` lifts that when its host
comes back with a new boot id.
"""

from __future__ import annotations

import base64
import binascii
import errno
import ipaddress
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

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
from diskledger.backends.rbd.cluster import Cluster, FenceHandler, Registrar
from diskledger.backends.rbd.config import CephConfig, client_key
from diskledger.backends.rbd.images import (
    TEMPLATE_SNAPSHOT,
    Images,
    image_name,
    refuse_clones,
    snapshot_names,
    split,
    temporary,
)
from diskledger.backends.staging import stage
from diskledger.errors import CephError, InvalidInput, InvalidSize, StorageIOError

__all__ = ["RbdBackend"]

IMAGE = ArtifactKind.RBD_IMAGE
CLONE = ArtifactKind.RBD_CLONE
SNAPSHOT = ArtifactKind.RBD_SNAPSHOT
FILE = ArtifactKind.FILE


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
            Capability.DURABLE_EFFECTS,  # an OSD acknowledges a write once it is persisted
        }
    )
    preallocates = False  # RBD images are thin; space is the cluster's to manage

    def __init__(
        self,
        root: str,
        config: CephConfig,
        cluster: Cluster | None = None,
        *,
        on_connect: Registrar | None = None,
        on_fenced: FenceHandler | None = None,
    ) -> None:
        """``on_connect``/``on_fenced``: member mode from the start (see ``set_registrar``);
        they are ignored when a ``cluster`` is given (it has its own)."""
        self.root = root
        self.config = config
        self.cluster = cluster or Cluster(config, on_connect=on_connect, on_fenced=on_fenced)
        self.rbd = Images(self.cluster)

    def close(self) -> None:
        self.cluster.close()

    # -- fencing members (FencesMembers) ---------------------------------------------------------

    def set_registrar(
        self, on_connect: Registrar, *, on_fenced: FenceHandler | None = None
    ) -> None:
        """Member mode: every new Ceph connection's addresses go to ``on_connect`` before the
        connection serves any request; a blocklisted connection is never replaced, and every
        call raises ``Fenced`` from then on (``on_fenced`` is told once). The connection open
        now, made before registration, is retired."""
        self.cluster.set_registrar(on_connect, on_fenced=on_fenced)

    def client_addresses(self) -> list[str]:
        """The addresses of this process's Ceph client (``ip:port/nonce``), connecting (and
        registering, in member mode) when no connection is open. Not the clients of the tools
        it runs (``qemu-img`` on an ``rbd:`` spec connects on its own): those are fenced as
        watchers of the operation's temporary images (``fence``)."""
        return self.cluster.client_addresses()

    def fence_member(
        self,
        clients: Sequence[str],
        *,
        expire_seconds: int = 24 * 3600,
        scope: Literal["client", "host-ip"] = "client",
    ) -> dict[str, Any]:
        """Blocklist each of ``clients`` for ``expire_seconds``, wait for the OSD map that
        holds the blocklist, and return ``{"blocklisted": [...], "osdmap_epoch": N}``.

        First one OSD round trip proves this process is not fenced itself (a blocklisted
        zombie gets ``Fenced`` here and fences nobody: the monitors would still take its
        blocklist commands). Blocklisting an address already blocklisted renews it, so a fence
        can be repeated. ``scope="client"`` (the default) takes client addresses only, with a
        nonce (``10.0.0.5:0/3719287140``): an address without one (``10.0.0.5:0/0``, or a bare
        IP) would cut off every client of that host, its VMs included, and is refused.
        ``scope="host-ip"`` blocklists the whole IP of each address given (``10.0.0.5:0/0``),
        which is what fencing a host means, VMs and all. This process's own addresses, or its
        own IP with ``host-ip``, are refused (``InvalidInput``).
        """
        if expire_seconds <= 0:
            raise InvalidInput(f"a fence must last some time, not {expire_seconds} s")
        targets = _blocklist_targets(clients, scope)
        own = [_blocklist_target(a, "client") for a in self.client_addresses()]
        for target in targets:
            if target in own or (scope == "host-ip" and _ip(target) in map(_ip, own)):
                raise InvalidInput(f"refusing to fence {target}: it is this process's own")
        self.cluster.prove_unfenced(self.config.pool)
        for target in targets:
            self.cluster.mon_command(
                {
                    "prefix": "osd blocklist",
                    "blocklistop": "add",
                    "addr": target,
                    "expire": float(expire_seconds),
                }
            )
        return {"blocklisted": targets, "osdmap_epoch": self.cluster.latest_osdmap()}

    def unfence_member(
        self, clients: Sequence[str], *, scope: Literal["client", "host-ip"] = "client"
    ) -> dict[str, Any]:
        """Take ``clients`` off the blocklist (addresses as ``fence_member`` takes them; one
        not blocklisted is fine) and return ``{"unblocklisted": [...], "osdmap_epoch": N}``.
        For a member whose host came back with a new boot id: its old processes are gone.

        Needs more than ``mon 'profile rbd'``, which may only add to the blocklist: the client
        also needs ``allow command "osd blocklist" with blocklistop=rm`` (else ``CephError``,
        permission denied). A blocklisted process gets ``Fenced``: it cannot unfence itself.
        """
        targets = _blocklist_targets(clients, scope)
        self.cluster.prove_unfenced(self.config.pool)
        for target in targets:
            self.cluster.mon_command(
                {"prefix": "osd blocklist", "blocklistop": "rm", "addr": target}
            )
        return {"unblocklisted": targets, "osdmap_epoch": self.cluster.latest_osdmap()}

    def set_aside(self, temporaries: Sequence[Artifact], tag: str) -> list[str]:
        """Rename this backend's temporary *files* aside (``SetsAside``): the staging copies of
        imports and template fetches, and export files, which a blocklist does not stop (a
        zombie that has read the image publishes its export without another Ceph request).
        Temporary images are not touched: ``fence_member`` covers them, since every request a
        fenced client makes to rename or write one is refused. See ``files.set_aside``."""
        return files.set_aside_all(
            self.root, [a.location for a in temporaries if a.kind is FILE and a.temporary], tag
        )

    @property
    def client_user(self) -> str | None:
        """The configured cephx user (``Authenticates``), None for the cluster's default."""
        return self.config.user or None

    def client_credentials(self) -> tuple[str, bytes] | None:
        """The cephx user and its key (``Authenticates``): None without a configured user (the
        cluster's default client); ``InvalidInput`` when its keyring is not configured, cannot
        be read, holds no key for it, or a key that is not base64."""
        if not self.config.user:
            return None
        try:
            key = base64.b64decode(client_key(self.config), validate=True)
        except binascii.Error as exc:
            raise InvalidInput(
                f"the key of client.{self.config.user} in {self.config.keyring} is not base64: "
                f"{exc}"
            ) from exc
        return self.config.user, key

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
        temp = temporary(location, token)
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

    def clone_artifacts(
        self, location: str, token: str, template: TemplateSource
    ) -> tuple[Artifact, ...]:
        """``ClonesInPlace``: the clone while it may be cut short, then the disk."""
        parent = f"{template.location}@{TEMPLATE_SNAPSHOT}"
        return (Artifact(CLONE, location, name=parent, temporary=True), Artifact(IMAGE, location))

    def clone_template(self, location: str, token: str, template: TemplateSource) -> Observation:
        """Clone the template's protected ``snap`` under the disk's final name, in one librbd
        call: no temporary name, no rename, no fresh look (``ClonesInPlace``).

        The engine probed the final name free just before the intent, and the intent reserves
        it; the clone's own ``EEXIST`` answers "is it still free?" without another lookup. An
        image already there is this operation's when it is a whole clone of the template (a
        retried call whose first attempt went through): it is observed and returned. Anything
        else there is an error, and recovery, probing the intent's ``RBD_CLONE``, removes it as
        a clone cut short. The observation is what librbd was asked for and answered: a clone
        has its parent snapshot's size (the template's recorded virtual size), its parent, no
        snapshots, and is raw."""
        parent = f"{template.location}@{TEMPLATE_SNAPSHOT}"
        # A one-step effect: its mid-effect point is just before the step. Between the clone
        # and the outcome (after-effect) the disk is whole under its final name, unrecorded.
        faults.reach("mid-effect", "create")
        try:
            self.rbd.clone(template.location, TEMPLATE_SNAPSHOT, location)
        except CephError as exc:
            if exc.errno != errno.EEXIST or self.rbd.clone_state(location, parent) != "whole":
                raise
            return self.rbd.observe(Artifact(IMAGE, location))
        return Observation(
            Artifact(IMAGE, location),
            exists=True,
            format=self.disk_format,
            size=template.virtual_size,
            backing=parent,
        )

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
        temp = temporary(location, token)
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
            if snapshot not in snapshot_names(image):
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
            unknown = sorted(set(snapshot_names(image)) - set(snapshots))
            clones = self.rbd.clones(location, image)
        if unknown:
            raise CephError(
                f"{location} has snapshots the ledger does not know: {', '.join(unknown)}",
                errno=errno.ENOTEMPTY,
            )
        refuse_clones(location, clones)
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
            Artifact(IMAGE, temporary(target, token), temporary=True),
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
            if artifact.kind in (IMAGE, CLONE, SNAPSHOT):
                # A clone in place is under the final name, which nobody is given before the
                # outcome: its watchers are the writer's, or a tool's it ran.
                temporary = artifact.temporary and artifact.kind in (IMAGE, CLONE)
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
        temp = temporary(target, token)
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
        """Each artifact as it is; but an image probed beside an ``RBD_CLONE`` of the same name
        (a clone in place: recovery probes the intent's artifacts together) exists only once
        the clone is whole, and the ``RBD_CLONE`` exists while it is cut short. Probed alone (the
        engine's check before an intent, ``verify``), an image exists whatever it holds."""
        clones = {a.location: a.name for a in artifacts if a.kind is CLONE}
        states = {
            location: self.rbd.clone_state(location, parent)
            for location, parent in clones.items()
            if parent is not None
        }
        seen: list[Observation] = []
        for artifact in artifacts:
            state = states.get(artifact.location)
            if artifact.kind is CLONE:
                seen.append(Observation(artifact, exists=state == "cut-short"))
            elif artifact.kind is IMAGE and state is not None and state != "whole":
                seen.append(Observation(artifact, exists=False))
            else:
                seen.append(self._probe(artifact))
        return tuple(seen)

    def remove(self, artifacts: Sequence[Artifact]) -> None:
        for artifact in artifacts:
            if artifact.kind is CLONE:
                assert artifact.name is not None
                self.rbd.remove_cut_short(artifact.location, artifact.name)
            elif artifact.kind is FILE:
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
                    found.extend(Artifact(SNAPSHOT, location, s) for s in snapshot_names(image))
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


def _blocklist_targets(clients: Sequence[str], scope: str) -> list[str]:
    """The blocklist entries for ``clients`` under ``scope``, each once, in the order given."""
    targets: list[str] = []
    for client in clients:
        target = _blocklist_target(client, scope)
        if target not in targets:
            targets.append(target)
    return targets


def _blocklist_target(address: str, scope: str) -> str:
    """``address`` as a blocklist entry: ``ip:port/nonce`` for one client (scope ``client``),
    ``ip:0/0`` for every client of that IP (scope ``host-ip``). A messenger type prefix
    (``v1:``, ``v2:``, ``any:``) is dropped: Pacific blocklists an address whatever its type."""
    if scope not in ("client", "host-ip"):
        raise InvalidInput(f"a fence scope is 'client' or 'host-ip', not {scope!r}")
    text = address.strip()
    kind, sep, rest = text.partition(":")
    if sep and kind in ("v1", "v2", "any"):
        text = rest
    where, slash, nonce_text = text.rpartition("/")
    if not slash:
        where, nonce_text = text, ""
    host, port_text = _split_host_port(where)
    malformed = f"{address!r} is not a Ceph client address (ip:port/nonce, [ipv6]:port/nonce)"
    if slash and ":" in host and not where.startswith("["):
        raise InvalidInput(malformed)
    if not all(part.isascii() and part.isdigit() for part in (port_text, nonce_text) if part):
        raise InvalidInput(malformed)
    port, nonce = int(port_text or "0"), int(nonce_text or "0")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise InvalidInput(malformed) from exc
    if port > 65535 or nonce > 0xFFFFFFFF:
        raise InvalidInput(malformed)
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    if scope == "host-ip":
        return f"{shown}:0/0"
    if nonce == 0:
        raise InvalidInput(
            f"{address!r} names no one client (it has no nonce): blocklisted, it would cut off "
            f"every client on {ip}, the VMs there included; fence it with scope='host-ip' if "
            "that is meant"
        )
    return f"{shown}:{port}/{nonce}"


def _split_host_port(where: str) -> tuple[str, str]:
    """``1.2.3.4:0`` / ``[::1]:0`` / a bare IP → (host, port text, empty when none)."""
    if where.startswith("["):
        host, _, after = where[1:].partition("]")
        return host, after.removeprefix(":")
    if where.count(":") == 1:
        host, _, port = where.partition(":")
        return host, port
    # An IPv4 address alone, or an IPv6 address alone; Ceph writes an IPv6 address with a port
    # in brackets, and ``fe80::1:0`` would be ambiguous without them.
    return where, ""


def _ip(target: str) -> str:
    """The IP of a blocklist entry made by ``_blocklist_target``."""
    return _split_host_port(target.rpartition("/")[0])[0]


def _image_pair(location: str, token: str) -> tuple[Artifact, ...]:
    return (
        Artifact(IMAGE, temporary(location, token), temporary=True),
        Artifact(IMAGE, location),
    )
