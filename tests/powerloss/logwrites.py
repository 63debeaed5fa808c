"""A reader and replayer of the kernel's dm-log-writes log, and the crash states it allows.

dm-log-writes (``drivers/md/dm-log-writes.c``, Documentation/admin-guide/device-mapper/
log-writes.rst) passes writes to the data device and records each one on the log device once
it is *flushed*: writes that completed before a flush are logged, in completion order, just
before that flush's own entry; a FUA write is logged when it completes. Marks
(``dmsetup message DEV 0 mark LABEL``) go in between as they are sent.

The log, in the data device's logical sectors (``sectorsize``, 512 on virtio):

- block 0: ``struct log_write_super {le64 magic, version, nr_entries; le32 sectorsize}``
- then each entry: one block holding ``struct log_write_entry {le64 sector, nr_sectors,
  flags, data_len}`` (a mark's label follows it in the same block), then, for a write,
  ``nr_sectors`` blocks of its data. Discards carry no data.

No Debian package ships xfstests' ``replay-log``; this is the same reading, small enough to
check against the kernel's source line by line.

Crash states (CrashMonkey's idea, on xfstests' log): a power cut keeps every write logged
before some flush or FUA entry -- those are the states ``prefix`` replays -- plus any subset of
the writes logged after the last flush before the cut (a volatile cache may have written some
and not others); ``subsets`` draws such states.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

__all__ = ["CrashState", "Entry", "Log", "crash_states", "read_log"]

MAGIC = 0x6A736677736872
VERSION = 1
FLUSH, FUA, DISCARD, MARK, METADATA = 1, 2, 4, 8, 16
SUPER = struct.Struct("<QQQI")
ENTRY = struct.Struct("<QQQQ")


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    sector: int
    """In the data device's logical sectors."""
    nr_sectors: int
    flags: int
    data_offset: int
    """Where its data starts in the log file (bytes)."""
    mark: str | None = None

    @property
    def is_write(self) -> bool:
        return not self.flags & (MARK | DISCARD) and self.nr_sectors > 0

    @property
    def is_barrier(self) -> bool:
        """A flush or FUA: a power cut may fall just after it with everything before it kept."""
        return bool(self.flags & (FLUSH | FUA))


@dataclass(frozen=True)
class Log:
    path: str
    offset: int
    """Where the log starts in ``path`` (bytes): it may be a region of a larger disk image."""
    sectorsize: int
    entries: tuple[Entry, ...]

    def marks(self) -> dict[str, int]:
        return {e.mark: e.index for e in self.entries if e.mark is not None}

    def apply(self, image: int, entries: Sequence[Entry]) -> None:
        """Write ``entries`` (writes and discards; others are skipped) to the open ``image``."""
        with open(self.path, "rb") as log:
            for entry in entries:
                at = entry.sector * self.sectorsize
                length = entry.nr_sectors * self.sectorsize
                if entry.flags & DISCARD:
                    os.pwrite(image, bytes(length), at)
                elif entry.is_write:
                    log.seek(self.offset + entry.data_offset)
                    data = log.read(length)
                    if len(data) != length:
                        raise ValueError(f"log entry {entry.index}: data cut short")
                    os.pwrite(image, data, at)


def read_log(path: str, offset: int = 0) -> Log:
    """The entries of the log at ``offset`` in ``path``; refuses anything but a whole log."""
    with open(path, "rb") as log:
        log.seek(offset)
        magic, version, count, sectorsize = SUPER.unpack(log.read(SUPER.size))
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"{path}@{offset}: not a dm-log-writes log (magic {magic:#x})")
        entries = []
        position = sectorsize  # the super takes one block
        for index in range(count):
            log.seek(offset + position)
            block = log.read(sectorsize)
            if len(block) != sectorsize:
                raise ValueError(f"log entry {index}: cut short at byte {position}")
            sector, nr_sectors, flags, data_len = ENTRY.unpack_from(block)
            mark = None
            if flags & MARK:
                mark = block[ENTRY.size : ENTRY.size + data_len].decode(errors="replace")
            position += sectorsize
            entries.append(Entry(index, sector, nr_sectors, flags, position, mark))
            if not flags & (DISCARD | MARK):
                position += nr_sectors * sectorsize
    return Log(path, offset, sectorsize, tuple(entries))


@dataclass(frozen=True)
class CrashState:
    """The device after a power cut: every entry before ``barrier`` (inclusive) applied, then
    ``extra`` of those after it (a subset of one flush group), nothing else."""

    barrier: int
    extra: tuple[int, ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"@{self.barrier}"


def crash_states(
    log: Log, *, start: int, subsets_per_group: int, rng: random.Random
) -> Iterator[CrashState]:
    """Every barrier from entry ``start`` on; and after each, ``subsets_per_group`` random
    subsets of the plain writes logged before the next flush, with every FUA write of that group
    kept (only where there are two plain writes or more, so that a subset is a new state).

    Why the FUA writes stay: dm-log-writes logs a FUA write when it completes, but a plain write
    only at the next flush, so the log cannot tell whether a plain write of the group was issued
    before or after a FUA write completed. One issued after (the next step of a program whose
    fsync had returned) can never be on the device without it; keeping the FUA writes makes
    every drawn state one a power cut can leave."""
    entries = log.entries
    for entry in entries[start:]:
        if not entry.is_barrier:
            continue
        yield CrashState(entry.index)
        fua, plain = [], []
        for later in entries[entry.index + 1 :]:
            if later.flags & FLUSH:
                break
            if later.flags & FUA:
                fua.append(later.index)
            elif later.is_write or later.flags & DISCARD:
                plain.append(later.index)
        if len(plain) < 2:
            continue
        for k in range(subsets_per_group):
            chosen = [i for i in plain if rng.random() < 0.5]
            if 0 < len(chosen) < len(plain):
                label = f"@{entry.index}+{len(chosen)}/{len(plain)}#{k}"
                yield CrashState(entry.index, tuple(sorted(fua + chosen)), label)
