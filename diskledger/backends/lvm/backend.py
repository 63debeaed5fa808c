"""LVM disks: logical volumes in one volume group, thick or thin (see ``docs/backends/lvm.md``).

Every volume is made under a temporary name and renamed onto its final one when whole, and is
tagged as diskledger's with the id of the operation that made it. Snapshots are thin snapshots
of a thin disk, and full copies of a thick one (classic copy-on-write snapshots slow every write
to the disk, overflow and turn invalid when too small, and keep the disk from being extended
while active). Volumes holding guest data are cleared per ``volume_clear`` before removal.

An encrypted disk (``create``/``import_file`` with ``luks``) is dm-crypt LUKS2 on its volume
(``crypt.py``): the volume is a header larger than the disk (1 MiB, or one extent when extents
are larger), tagged ``crypt.LUKS_TAG`` and with the header's size; its data is written through
a mapping opened for the copy and closed before the volume is published. Snapshots and rollbacks
copy ciphertext and need no key; resize and rollback open a mapping to zero the plaintext of
what they add.
"""

from __future__ import annotations

import copy
import logging
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
from diskledger.backends.files import temporary_path
from diskledger.backends.lvm import crypt, names
from diskledger.backends.lvm.crypt import LUKS_TAG
from diskledger.backends.lvm.settings import LvmSettings
from diskledger.backends.lvm.volumes import Volume, Volumes, size_of, zero
from diskledger.backends.staging import stage
from diskledger.errors import BackendError, InvalidInput, InvalidSize

__all__ = ["LvmBackend"]

LV = ArtifactKind.LVM_VOLUME
SNAPSHOT = ArtifactKind.LVM_SNAPSHOT
FILE = ArtifactKind.FILE
MiB = 1 << 20

log = logging.getLogger(__name__)


class LvmBackend:
    """Disks as logical volumes ``VG/INSTANCE+DISK``, raw, reached as ``/dev/VG/LV``."""

    name = "lvm"
    disk_format = "raw"
    capabilities: frozenset[Capability] = frozenset()
    encrypts = True
    """Makes encrypted disks (``create``/``import_file`` with ``luks``): dm-crypt LUKS2."""
    encryption_format = "luks2"
    """What an encrypted disk's intent records as its format."""
    _luks: qemu.Luks | None = None
    """The key of the one encrypted disk this copy works on (``with_key``)."""

    def __init__(self, root: str, settings: LvmSettings) -> None:
        self.root = os.path.abspath(root)
        self.settings = settings
        self.lvm = Volumes(settings.vg)
        # Thick volumes are allocated whole when made and grown.
        self.preallocates = not settings.sparse
        self._pool_zeroes: bool | None = None

    # -- names ---------------------------------------------------------------------------------

    def disk_location(self, instance: str, disk: str) -> str:
        return self._location(names.disk_lv(instance, disk))

    def create_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]:
        return self._pair(location, token)

    def import_artifacts(self, location: str, token: str) -> tuple[Artifact, ...]:
        copy = Artifact(FILE, temporary_path(self._staging(location), token), temporary=True)
        return (copy, *self._pair(location, token))

    def snapshot_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        lv = names.snapshot_lv(self._lv(location), snapshot)
        return (
            Artifact(LV, self._location(names.temporary(lv, token)), temporary=True),
            Artifact(SNAPSHOT, location, name=snapshot),
        )

    def rollback_artifacts(self, location: str, snapshot: str, token: str) -> tuple[Artifact, ...]:
        return ()  # data is copied back in place: a rollback cut short is run again to the end

    def export_artifacts(self, target: str, token: str) -> tuple[Artifact, ...]:
        return (
            Artifact(FILE, temporary_path(target, token), temporary=True),
            Artifact(FILE, target),
        )

    def disk_artifacts(self, location: str, snapshots: Sequence[str]) -> tuple[Artifact, ...]:
        return (Artifact(LV, location), *(Artifact(SNAPSHOT, location, s) for s in snapshots))

    def disk_source(self, location: str, *, addresses: bool = True) -> DiskSource:
        return DiskSource(
            SourceKind.BLOCK,
            path=self.lvm.device(self._lv(location)),
            preallocated=self.preallocates,
        )

    # -- encrypted disks (Encrypting, OpensMappings) -------------------------------------------

    def with_key(self, luks: qemu.Luks) -> LvmBackend:
        """This backend, for one encrypted disk: what must write its plaintext (resize,
        rollback) opens a mapping with ``luks``."""
        keyed = copy.copy(self)
        keyed._luks = luks
        return keyed

    def mapping(self, location: str) -> str:
        """The device-mapper name the encrypted disk at ``location`` is opened as."""
        return crypt.mapping(self.lvm.vg, self._lv(location))

    def mapped_source(self, location: str) -> DiskSource:
        """What a guest uses of the encrypted disk at ``location``: its open mapping."""
        return DiskSource(
            SourceKind.BLOCK,
            path=crypt.device(self.mapping(location)),
            preallocated=self.preallocates,
        )

    def open_mapping(self, location: str, luks: qemu.Luks) -> str:
        """Open the encrypted disk at ``location`` for a guest (idempotent); its device."""
        lv = self._lv(location)
        return crypt.open_mapping(self.lvm.device(lv), self.mapping(location), luks.secret_file)

    def close_mapping(self, location: str) -> bool:
        """Close the mapping of the disk at ``location`` (idempotent); whether it was open."""
        return crypt.close(self.mapping(location))

    # -- capacity (ChecksCapacity) -------------------------------------------------------------

    def check_capacity(self, size: int, *, grow: str | None = None) -> None:
        """Refuse a disk the volume group cannot hold: a thick one beyond its free extents, a
        thin one larger than the whole group (the pool itself may be overcommitted)."""
        group = self.lvm.group()
        needed = group.rounded(size)
        if self.settings.sparse:
            self._reads_zeroes()  # the pool is there
            if needed > group.size:
                raise InvalidSize(
                    f"size {size} is larger than volume group {self.lvm.vg!r} ({group.size} bytes)"
                )
            return
        have = 0
        if grow is not None and os.path.exists(self.lvm.device(self._lv(grow))):
            have = self._size(self._lv(grow))
        if needed - have > group.free:
            raise InvalidSize(
                f"size {size} needs {needed - have} bytes; volume group {self.lvm.vg!r} has "
                f"{group.free} free"
            )

    # -- effects -------------------------------------------------------------------------------

    def create(
        self,
        location: str,
        token: str,
        *,
        size: int | None,
        template: TemplateSource | None,
        luks: qemu.Luks | None = None,
    ) -> Observation:
        """``luks``: the disk is dm-crypt LUKS2 with that key (see the module doc)."""
        volumes = self.lvm.report()
        final = self._lv(location)
        if final in volumes:
            return self._observe(location, volumes[final])
        if template is None and size is None:
            raise InvalidSize("a blank disk needs a size")
        wanted = max(size or 0, template.virtual_size if template else 0)
        temp = names.temporary(final, token)
        self._remove_lv(temp, volumes)  # a retry after a partial create starts afresh
        header = self._new_volume(temp, wanted, token, luks)
        self._fill(temp, template, luks, header, "create")
        self.lvm.rename(temp, final)
        return self._observe(location)

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
        """``luks``: the inspected copy is written into a new encrypted disk with that key."""
        volumes = self.lvm.report()
        final = self._lv(location)
        if final in volumes:
            return self._observe(location, volumes[final])
        copy = temporary_path(self._staging(location), token)
        files.ensure_dir_under(self.root, os.path.dirname(copy), files.IMAGE_DIR_MODE)
        size = stage(source, fmt, copy, op="import", max_virtual_size=max_virtual_size)
        self.check_capacity(size + (self._header() if luks is not None else 0))
        temp = names.temporary(final, token)
        self._remove_lv(temp, volumes)
        header = self._new_volume(temp, size, token, luks)
        self._fill(temp, TemplateSource(copy, fmt, size), luks, header, None)
        files.remove_file(copy)
        self.lvm.rename(temp, final)
        return self._observe(location)

    def _new_volume(self, lv: str, size: int, token: str, luks: qemu.Luks | None) -> int:
        """The volume a disk of ``size`` is written in: with room and tags for the LUKS2
        header when encrypted. The header's size (0: not encrypted)."""
        if luks is None:
            self.lvm.create(lv, size, token, pool=self.settings.thin_pool)
            return 0
        header = self._header()
        tags = (LUKS_TAG, crypt.header_tag(header))
        self.lvm.create(lv, size + header, token, pool=self.settings.thin_pool, tags=tags)
        return header

    def _header(self) -> int:
        """The header a new encrypted volume of this group gets."""
        return crypt.header_size(self.lvm.group().extent)

    def _fill(
        self,
        lv: str,
        source: TemplateSource | None,
        luks: qemu.Luks | None,
        header: int,
        op: str | None,
    ) -> None:
        """Write ``source`` (None: nothing) into the new volume ``lv`` and zero the rest, so
        that nothing a freed extent held is ever read; encrypted, through a mapping opened for
        it (``mid-effect`` is reached while it is open) and closed again."""
        written = source.virtual_size if source is not None else 0
        if luks is None:
            zeroed = self._reads_zeroes()
            if source is not None:
                qemu.convert_spec(
                    source.location, source.format, self.lvm.device(lv), "raw",
                    target_exists=True, target_is_zero=zeroed,
                )  # fmt: skip
            if not zeroed:
                # Freed extents hold what their last volume held: a guest must never read it.
                self.lvm.zero(lv, written, self._size(lv) - written)
            if op is not None:
                faults.reach("mid-effect", op)
            return
        device = self.lvm.device(lv)
        crypt.format_volume(device, luks.secret_file, luks.iter_time_ms, header)
        name = crypt.mapping(self.lvm.vg, lv)
        plain = crypt.open_mapping(device, name, luks.secret_file)
        try:
            # Zeroed ciphertext is not zeroed plaintext: every byte is written through it.
            if source is not None:
                qemu.convert_spec(source.location, source.format, plain, "raw", target_exists=True)
            zero(plain, written, size_of(plain) - written)
            if op is not None:
                faults.reach("mid-effect", op)
        finally:
            crypt.close(name)

    def resize(self, location: str, fmt: str, size: int) -> Observation:
        """Grow the disk to ``size``. A thick disk's new extents held another volume's data:
        they are zeroed *before* the disk takes them (in ``<disk>+.grow``, a volume of the
        added size, removed just before ``lvextend`` takes exactly its extents), so the disk is
        never at its new size with a stale region a guest could read, whenever the process
        dies; recovery's rule for resize (new size: forward, old size: back) needs nothing
        more. A ``+.grow`` left by a kill is removed when the disk is next probed (recovery
        probes it first) or resized."""
        self._check_format(fmt)
        lv = self._lv(location)
        if not os.path.exists(self.lvm.device(lv)):
            raise BackendError(f"no disk at {location}")
        header = self.lvm.report()[lv].header if self._luks is not None else 0
        before = self._size(lv)
        if before - header >= size:
            return self._observe(location)
        if self.settings.sparse:
            faults.reach("mid-effect", "resize")
            self.lvm.extend(lv, size + header)
            if not header and not self._reads_zeroes():
                # A pool that does not zero what it provisions: provision it zeroed here.
                self.lvm.zero(lv, before, self._size(lv) - before)
        else:
            grow = names.growing(lv)
            if os.path.exists(self.lvm.device(grow)):
                self.lvm.remove(grow)  # left by a resize cut short
            self.lvm.create(grow, size + header - before, None, pool=None)
            self.lvm.zero(grow, 0, self._size(grow))
            onto = self.lvm.extent_ranges(grow)
            faults.reach("mid-effect", "resize")
            self.lvm.remove(grow)  # its extents are free, zeroed, and named in onto
            self.lvm.extend(lv, size + header, onto)
        if header:
            self._zero_plaintext(lv, before - header)
        return self._observe(location)

    def _zero_plaintext(self, lv: str, offset: int) -> None:
        """Zero the encrypted disk ``lv``'s plaintext from ``offset`` to its end (zeroed
        ciphertext reads as noise): through its mapping, resized first when open (a guest's),
        or opened for this and closed again."""
        if self._luks is None:
            raise BackendError(f"{self._location(lv)} is encrypted: its key is needed here")
        key = self._luks.secret_file
        name = crypt.mapping(self.lvm.vg, lv)
        was_open = crypt.is_open(name)
        if was_open:
            crypt.resize(name, key)
        plain = crypt.open_mapping(self.lvm.device(lv), name, key)
        try:
            zero(plain, offset, size_of(plain) - offset)
        finally:
            if not was_open:
                crypt.close(name)

    def snapshot(self, location: str, fmt: str, snapshot: str, token: str) -> Observation:
        self._check_format(fmt)
        artifact = Artifact(SNAPSHOT, location, name=snapshot)
        disk = self._lv(location)
        final = names.snapshot_lv(disk, snapshot)
        volumes = self.lvm.report()
        if final in volumes:
            return self._observe_snapshot(artifact, volumes[final])
        if disk not in volumes:
            raise BackendError(f"no disk at {location}")
        temp = names.temporary(final, token)
        self._remove_lv(temp, volumes)
        tags = tuple(t for t in volumes[disk].tags if t.startswith(LUKS_TAG))  # the ciphertext
        if self.settings.sparse:
            self.lvm.thin_snapshot(disk, temp, token, tags=tags)
        else:
            # A full copy, as the raw backend keeps snapshots (see the module doc).
            self.lvm.create(temp, volumes[disk].size, token, pool=None, tags=tags)
            self._copy(disk, temp)
        faults.reach("mid-effect", "snapshot")
        self.lvm.rename(temp, final)
        return self._observe_snapshot(artifact, self.lvm.report()[final])

    def rollback(
        self, location: str, fmt: str, snapshot: str, token: str, *, size: int
    ) -> Observation:
        """Copy the snapshot's data back over the disk, zero what lies past the snapshot's end,
        and grow the disk back to ``size``. In place, and idempotent: a rollback cut short is
        run again to the end (recovery's rule for rollback)."""
        self._check_format(fmt)
        disk = self._lv(location)
        source = names.snapshot_lv(disk, snapshot)
        volumes = self.lvm.report()
        if source not in volumes:
            raise BackendError(f"{location} has no snapshot {snapshot!r}")
        if disk not in volumes:
            raise BackendError(f"no disk at {location}")
        header = volumes[disk].header
        if volumes[disk].payload < size:
            self.lvm.extend(disk, size + header)
        self._copy(source, disk)  # the ciphertext, header and all: the same key opens it
        faults.reach("mid-effect", "rollback")
        if header:
            self._zero_plaintext(disk, volumes[source].payload)
        else:
            self.lvm.zero(disk, volumes[source].size, self._size(disk) - volumes[source].size)
        return self._observe(location)

    def remove_snapshot(self, location: str, fmt: str, snapshot: str) -> None:
        self._check_format(fmt)
        faults.reach("mid-effect", "remove-snapshot")
        self._discard(names.snapshot_lv(self._lv(location), snapshot), self.lvm.report())

    def delete(self, location: str, fmt: str, snapshots: Sequence[str]) -> None:
        """Clear and remove the disk and its snapshots. The disk is renamed aside first: from
        then on it is gone, so a delete cut short while clearing is finished by recovery, never
        rolled back onto half-cleared data."""
        self._check_format(fmt)
        disk = self._lv(location)
        crypt.close(crypt.mapping(self.lvm.vg, disk))  # a guest's, left open: no longer used
        volumes = self._remove_lv(names.growing(disk), self.lvm.report())
        if disk in volumes and self._clears(volumes[disk]):
            self.lvm.rename(disk, names.deleting(disk))
            volumes = {names.deleting(disk) if k == disk else k: v for k, v in volumes.items()}
        faults.reach("mid-effect", "delete")
        for snapshot in snapshots:
            self._discard(names.snapshot_lv(disk, snapshot), volumes)
        self._discard(disk, volumes)

    def export(
        self, location: str, fmt: str, target: str, target_format: str, token: str
    ) -> Observation:
        self._check_format(fmt)
        temp = temporary_path(target, token)
        qemu.convert(self.lvm.device(self._lv(location)), "raw", temp, target_format)
        faults.reach("mid-effect", "export")
        files.publish(temp, target)
        return qemu.observe(Artifact(FILE, target), target_format)

    # -- recovery ------------------------------------------------------------------------------

    def probe(self, artifacts: Sequence[Artifact]) -> tuple[Observation, ...]:
        volumes = self.lvm.report() if any(a.kind is not FILE for a in artifacts) else {}
        for artifact in artifacts:
            if artifact.kind is LV and not artifact.temporary:
                # Probed for a decision: the disk's operation is not running. A resize killed
                # before it took its zeroed extents left them as <disk>+.grow: not the disk's,
                # never its evidence, and named by no intent (resize names none), so it goes.
                grow = names.growing(self._lv(artifact.location))
                if grow in volumes and volumes[grow].ours:
                    try:
                        volumes = self._remove_lv(grow, volumes)
                    except BackendError as exc:  # in use: verify met a resize running
                        log.warning("%s left in place: %s", grow, exc)
        return tuple(self._probe(a, volumes) for a in artifacts)

    def remove(self, artifacts: Sequence[Artifact]) -> None:
        volumes = self.lvm.report() if any(a.kind is not FILE for a in artifacts) else {}
        for artifact in artifacts:
            if artifact.kind is FILE:
                files.remove_file(artifact.location)
            elif artifact.kind is SNAPSHOT:
                assert artifact.name is not None
                lv = names.snapshot_lv(self._lv(artifact.location), artifact.name)
                volumes = self._discard(lv, volumes)
            elif artifact.temporary:
                volumes = self._remove_lv(self._lv(artifact.location), volumes)
            else:
                volumes = self._discard(self._lv(artifact.location), volumes)

    def inventory(self) -> tuple[Artifact, ...]:
        """Every volume of the group tagged as diskledger's; an operator's are not listed."""
        found: list[Artifact] = []
        for volume in self.lvm.report().values():
            parsed = names.parse(volume.name) if volume.ours else None
            if parsed is None:
                continue
            if parsed.snapshot is not None and parsed.marker is None:
                found.append(Artifact(SNAPSHOT, self._location(parsed.disk), parsed.snapshot))
            else:
                found.append(
                    Artifact(LV, self._location(volume.name), temporary=bool(parsed.marker))
                )
        return tuple(found)

    def set_aside_from(self, artifact: Artifact) -> str | None:
        """The location of the disk an inventory volume was set aside from or works for (a
        ``+.deleting`` volume being cleared and removed, a ``+.grow`` volume of new extents
        being zeroed): while that disk has an operation pending, the volume is that operation's,
        not an orphan (``verify``). None for any other volume."""
        if artifact.kind is not LV:
            return None
        vg, _, lv = artifact.location.partition("/")
        disk = names.set_aside_from(lv) if vg == self.lvm.vg else None
        return None if disk is None else self._location(disk)

    def close(self) -> None:
        pass  # every call is a command of its own

    # -- helpers -------------------------------------------------------------------------------

    def _probe(self, artifact: Artifact, volumes: dict[str, Volume]) -> Observation:
        if artifact.kind is FILE:
            try:
                return qemu.observe(artifact, None)
            except BackendError:
                return Observation(artifact, exists=True)
        if artifact.kind is SNAPSHOT:
            assert artifact.name is not None
            found = volumes.get(names.snapshot_lv(self._lv(artifact.location), artifact.name))
            if found is None:
                return Observation(artifact, exists=False)
            return self._observe_snapshot(artifact, found)
        found = volumes.get(self._lv(artifact.location))
        if found is None:
            return Observation(artifact, exists=False)
        if artifact.temporary:  # never trusted to be whole
            return Observation(artifact, exists=True, allocated=found.allocated)
        return Observation(artifact, True, "raw", found.payload, found.allocated)

    def _observe(self, location: str, volume: Volume | None = None) -> Observation:
        found = volume or self.lvm.report().get(self._lv(location))
        if found is None:
            raise BackendError(f"no disk at {location}")
        return Observation(Artifact(LV, location), True, "raw", found.payload, found.allocated)

    def _observe_snapshot(self, artifact: Artifact, volume: Volume) -> Observation:
        return Observation(artifact, True, "raw", volume.payload, volume.allocated)

    def _discard(self, lv: str, volumes: dict[str, Volume]) -> dict[str, Volume]:
        """Clear ``lv`` (or what was renamed aside from it) per ``volume_clear``, and remove it.
        Idempotent; returns the volumes left."""
        aside = names.deleting(lv)
        crypt.close(crypt.mapping(self.lvm.vg, lv))  # lvremove refuses a volume in use
        if lv in volumes and not self._clears(volumes[lv]):
            self.lvm.remove(lv)  # one command: removed whole, or not at all
            return {k: v for k, v in volumes.items() if k != lv}
        if lv in volumes:
            self.lvm.rename(lv, aside)
            volumes = {**volumes, aside: volumes[lv]}
            del volumes[lv]
        if aside in volumes:
            self._clear(aside, volumes[aside])
            self.lvm.remove(aside)
            volumes = {k: v for k, v in volumes.items() if k != aside}
        return volumes

    def _clears(self, volume: Volume) -> bool:
        """Whether ``volume`` is cleared before it is removed (Nova's ``volume_clear``). A thin
        volume is not: writing over it would allocate it whole only to free it, and the pool
        zeroes every block it hands out again (``docs/backends/lvm.md``)."""
        return self.settings.volume_clear != "none" and not volume.thin

    def _clear(self, lv: str, volume: Volume) -> None:
        if not self._clears(volume):
            return
        method, limit = self.settings.volume_clear, self.settings.volume_clear_size * MiB
        length = min(volume.size, limit) if limit else volume.size
        if method == "zero":
            self.lvm.zero(lv, 0, length)
        else:
            self.lvm.shred(lv, length)

    def _remove_lv(self, lv: str, volumes: dict[str, Volume]) -> dict[str, Volume]:
        if lv not in volumes:
            return volumes
        crypt.close(crypt.mapping(self.lvm.vg, lv))  # of a copy cut short: lvremove refuses it
        self.lvm.remove(lv)
        return {k: v for k, v in volumes.items() if k != lv}

    def _copy(self, source: str, target: str) -> None:
        qemu.convert_spec(
            self.lvm.device(source), "raw", self.lvm.device(target), "raw", target_exists=True
        )

    def _reads_zeroes(self) -> bool:
        """Whether a new volume reads as zeroes: a thin one from a pool that zeroes what it
        provisions. A thick one holds whatever its extents last held."""
        pool = self.settings.thin_pool
        if pool is None:
            return False
        if self._pool_zeroes is None:
            self._pool_zeroes = self.lvm.pool_zeroes(pool)
        return self._pool_zeroes

    def _size(self, lv: str) -> int:
        return self.lvm.size(lv)

    def _lv(self, location: str) -> str:
        vg, _, lv = location.partition("/")
        if vg != self.lvm.vg or not lv or "/" in lv:
            raise InvalidInput(f"{location} is not a volume of volume group {self.lvm.vg!r}")
        return lv

    def _location(self, lv: str) -> str:
        return f"{self.lvm.vg}/{lv}"

    def _pair(self, location: str, token: str) -> tuple[Artifact, ...]:
        temp = names.temporary(self._lv(location), token)
        return (Artifact(LV, self._location(temp), temporary=True), Artifact(LV, location))

    def _staging(self, location: str) -> str:
        return os.path.join(self.root, "staging", self._lv(location))

    def _check_format(self, fmt: str) -> None:
        if fmt != self.disk_format:
            raise InvalidInput(f"LVM disks are raw, not {fmt}")
