"""The LVM commands the backend is made of, each through the one runner, and their reports.

Every command names the volume group; reports are ``--reportformat json`` in bytes, parsed here.
LVM's failures leave as the error tree's: a volume group that is not there is ``InvalidInput``
(bad configuration, refused before anything changes), the rest ``CommandFailed`` and friends
from the runner, with LVM's last stderr line as the message.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diskledger.backends import runner
from diskledger.backends.lvm.crypt import LUKS_TAG, header_of
from diskledger.backends.lvm.names import OWNER_TAG, op_tag
from diskledger.errors import BackendError, CommandFailed, InvalidInput, StorageIOError

__all__ = ["Volume", "Volumes", "size_of", "zero"]

_TIMEOUT = 120.0
"""Seconds an LVM command may take: a metadata change takes well under one, but it waits for
the volume group's lock, which another diskledger process may hold."""
_LV_FIELDS = "lv_name,lv_size,lv_tags,pool_lv,origin,data_percent,segtype"


@dataclass(frozen=True, slots=True)
class Volume:
    """One logical volume as ``lvs`` reports it."""

    name: str
    size: int
    tags: frozenset[str]
    pool: str | None
    origin: str | None
    data_percent: float | None
    segtype: str

    @property
    def ours(self) -> bool:
        return OWNER_TAG in self.tags

    @property
    def thin(self) -> bool:
        return self.segtype == "thin"

    @property
    def encrypted(self) -> bool:
        """Holds a LUKS2 header diskledger wrote (its tag says so; its data is never read)."""
        return LUKS_TAG in self.tags

    @property
    def header(self) -> int:
        """The bytes before an encrypted volume's data (its tags say how many); 0 for others."""
        return header_of(self.tags) if self.encrypted else 0

    @property
    def payload(self) -> int:
        """The size of the disk the volume holds: all of it, less an encrypted one's header."""
        return self.size - self.header

    @property
    def allocated(self) -> int:
        if self.thin and self.data_percent is not None:
            return int(self.size * self.data_percent / 100)
        return self.size


@dataclass(frozen=True, slots=True)
class Group:
    """The volume group as ``vgs`` reports it; sizes in bytes."""

    size: int
    free: int
    extent: int

    def rounded(self, size: int) -> int:
        """``size`` rounded up to whole extents, as LVM allocates it."""
        return math.ceil(size / self.extent) * self.extent


class Volumes:
    """The logical volumes of one volume group."""

    def __init__(self, vg: str) -> None:
        self.vg = vg

    def device(self, lv: str) -> str:
        return f"/dev/{self.vg}/{lv}"

    def size(self, lv: str) -> int:
        """The active volume's size in bytes, as the kernel has it: no LVM command (each costs
        a device scan)."""
        return size_of(self.device(lv))

    def report(self) -> dict[str, Volume]:
        """Every visible volume of the group, by name (one ``lvs``)."""
        report = self._report(["lvs", "-o", _LV_FIELDS, self.vg], "lv")
        return {row["lv_name"]: _volume(row) for row in report}

    def group(self) -> Group:
        (row,) = self._report(["vgs", "-o", "vg_size,vg_free,vg_extent_size", self.vg], "vg")
        return Group(int(row["vg_size"]), int(row["vg_free"]), int(row["vg_extent_size"]))

    def pool_zeroes(self, pool: str) -> bool:
        """Whether the thin pool zeroes the blocks it provisions (its ``zero`` flag);
        ``InvalidInput`` when there is no such thin pool."""
        try:
            rows = self._report(["lvs", "-o", "lv_name,zero,segtype", f"{self.vg}/{pool}"], "lv")
        except CommandFailed as exc:
            if "Failed to find logical volume" not in (exc.stderr or ""):
                raise
            rows = []
        if not rows or rows[0].get("segtype") != "thin-pool":
            raise InvalidInput(
                f"volume group {self.vg!r} has no thin pool {pool!r} (DISKLEDGER_LVM_SPARSE)"
            )
        return rows[0].get("zero") in ("zero", "1")

    def create(
        self,
        lv: str,
        size: int,
        token: str | None,
        *,
        pool: str | None,
        tags: Sequence[str] = (),
    ) -> None:
        """A new volume of ``size`` bytes (rounded up to extents), thin in ``pool`` when given,
        tagged as diskledger's and with the operation that made it (when it is known), and with
        ``tags``."""
        if pool is None:
            where = ["-L", f"{size}b", self.vg]
        else:
            where = ["-V", f"{size}b", "--thin", f"{self.vg}/{pool}"]
        self._lvm(["lvcreate", "--yes", "-W", "y", "-n", lv, *self._tags(token, tags), *where])

    def thin_snapshot(self, origin: str, lv: str, token: str, *, tags: Sequence[str] = ()) -> None:
        """A thin snapshot ``lv`` of the thin volume ``origin``, activated like any volume (LVM
        marks thin snapshots to be skipped at activation unless told otherwise)."""
        self._lvm(
            ["lvcreate", "--yes", "-s", "-k", "n", "-a", "y", "-n", lv, *self._tags(token, tags),
             f"{self.vg}/{origin}"]
        )  # fmt: skip

    def rename(self, old: str, new: str) -> None:
        self._lvm(["lvrename", self.vg, old, new])

    def extend(self, lv: str, size: int, onto: Sequence[str] = ()) -> None:
        """Grow ``lv`` to ``size`` bytes; ``onto``: physical extent ranges (``PV:FIRST-LAST``)
        to take the new extents from, and no others."""
        self._lvm(["lvextend", "-L", f"{size}b", f"{self.vg}/{lv}", *onto])

    def extent_ranges(self, lv: str) -> list[str]:
        """Where ``lv``'s extents are, as ``PV:FIRST-LAST`` ranges in order (what ``extend``
        takes as ``onto``)."""
        rows = self._report(["lvs", "-o", "seg_pe_ranges", f"{self.vg}/{lv}"], "lv")
        ranges = [part for row in rows for part in str(row.get("seg_pe_ranges", "")).split()]
        if not ranges:
            raise BackendError(f"lvs reported no extents for {self.vg}/{lv}")
        return ranges

    def remove(self, lv: str) -> None:
        self._lvm(["lvremove", "--yes", "-f", f"{self.vg}/{lv}"])

    def zero(self, lv: str, offset: int, length: int) -> None:
        """Write zeroes over ``length`` bytes of ``lv`` from ``offset`` (both multiples of 512),
        bypassing the page cache and flushed before it returns."""
        zero(self.device(lv), offset, length)

    def shred(self, lv: str, length: int) -> None:
        """Overwrite the first ``length`` bytes of ``lv`` three times with random data."""
        runner.run(["shred", "-n", "3", f"-s{length}", self.device(lv)], timeout=3600.0)

    def _tags(self, token: str | None, more: Sequence[str] = ()) -> list[str]:
        tags = ["--addtag", OWNER_TAG]
        if token is not None:
            tags += ["--addtag", op_tag(token)]
        for tag in more:
            tags += ["--addtag", tag]
        return tags

    def _report(self, argv: Sequence[str], kind: str) -> list[dict[str, Any]]:
        out = self._lvm([argv[0], "--reportformat", "json", "--units", "b", "--nosuffix",
                         *argv[1:]])  # fmt: skip
        try:
            rows = json.loads(out)["report"][0][kind]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"{argv[0]} printed no report", command=list(argv)) from exc
        if not isinstance(rows, list):
            raise BackendError(f"{argv[0]} printed no list of {kind}s", command=list(argv))
        return rows

    def _lvm(self, argv: Sequence[str]) -> str:
        try:
            return runner.run(argv, timeout=_TIMEOUT, lock_wait=0.0)
        except CommandFailed as exc:
            if f'Volume group "{self.vg}" not found' in (exc.stderr or ""):
                raise InvalidInput(
                    f"volume group {self.vg!r} does not exist (DISKLEDGER_LVM_VG)"
                ) from exc
            raise


def size_of(path: str) -> int:
    """The size in bytes of the block device ``path``, as the kernel has it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageIOError(f"cannot open {path}: {exc.strerror}", errno=exc.errno) from exc
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def zero(path: str, offset: int, length: int) -> None:
    """Write zeroes over ``length`` bytes of the block device ``path`` from ``offset`` (both
    multiples of 512), bypassing the page cache and flushed before it returns."""
    if length <= 0:
        return
    block = math.gcd(offset, length, 1 << 20)
    runner.run(
        ["dd", "if=/dev/zero", f"of={path}", f"bs={block}", f"seek={offset // block}",
         f"count={length // block}", "oflag=direct", "conv=notrunc,fsync"],
        timeout=3600.0,
    )  # fmt: skip


def _volume(row: dict[str, Any]) -> Volume:
    percent = row.get("data_percent") or None
    return Volume(
        name=row["lv_name"],
        size=int(row["lv_size"]),
        tags=frozenset(t for t in str(row.get("lv_tags", "")).split(",") if t),
        pool=row.get("pool_lv") or None,
        origin=row.get("origin") or None,
        data_percent=float(percent) if percent is not None else None,
        segtype=str(row.get("segtype", "")),
    )
