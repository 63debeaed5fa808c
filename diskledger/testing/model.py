"""The harness's model of what storage should hold, down to the bytes: each disk's content
(the image it was made from, markers written on top, zeros elsewhere), its snapshots' and
exports' content, and the source images with known sectors that templates and disks are made
from."""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from diskledger.states import DiskState

__all__ = [
    "SECTOR",
    "ZEROS",
    "Apply",
    "Content",
    "Copy",
    "Image",
    "Model",
    "ModelDisk",
    "Source",
    "Unresolved",
    "sector_of",
    "show",
    "source_image",
]

SECTOR = 512
"""The granularity of every size the harness asks for and of every guest write."""

ZEROS = bytes(SECTOR)


def sector_of(label: str) -> bytes:
    """512 bytes that start with ``label`` (each marker's is unique) and go on with a byte
    drawn from it, so that no two labels' sectors are alike."""
    text = f"{label}|".encode()
    return text.ljust(SECTOR, bytes([0x41 + zlib.crc32(text) % 26]))


def show(data: bytes) -> str:
    if not any(data):
        return "zeros"
    label, bar, _ = data.partition(b"|")
    return repr(label.decode(errors="replace")) if bar else repr(data[:24]) + "..."


@dataclass(frozen=True)
class Image:
    """The guest bytes of a source file the harness made: a few known sectors, zeros elsewhere."""

    size: int
    sectors: Mapping[int, bytes]


@dataclass(frozen=True)
class Content:
    """What a disk (or a snapshot or an export of it) holds: the bytes of the image it was made
    from (none: a blank disk), the markers written into it on top, zeros everywhere else (also
    where it grew)."""

    base: Image | None = None
    marks: Mapping[int, bytes] = field(default_factory=dict)

    def at(self, offset: int) -> bytes:
        if offset in self.marks:
            return self.marks[offset]
        if self.base is not None:
            return self.base.sectors.get(offset, ZEROS)
        return ZEROS

    def marked(self, offset: int, data: bytes) -> Content:
        return Content(self.base, {**self.marks, offset: data})

    def offsets(self, size: int) -> list[int]:
        """Where to look: every marker, the source's known sectors, the first and last sector."""
        return sorted({*self.marks, *self.unmarked(size)})

    def unmarked(self, size: int) -> list[int]:
        """The source's known sectors, then the first and last sector, that hold no marker."""
        known = [*(sorted(self.base.sectors) if self.base else ()), 0, size - SECTOR]
        seen = [o for o in dict.fromkeys(known) if o not in self.marks]
        return [o for o in seen if 0 <= o <= size - SECTOR]


@dataclass
class ModelDisk:
    state: DiskState
    size: int
    format: str
    template: str | None
    content: Content = field(default_factory=Content)
    snapshots: dict[str, int] = field(default_factory=dict)
    saved: dict[str, Content] = field(default_factory=dict)
    """What each snapshot holds."""
    recheck: set[int] = field(default_factory=set)
    """Offsets to read at the next check besides the markers: after a rollback, every offset
    where another version of the disk (its bytes before, any snapshot) had a marker, which is
    where a rollback that restored nothing, or the wrong snapshot, shows."""
    resized: bool = False
    attached: str | None = None
    """The target device a domain has the disk at."""


@dataclass
class Copy:
    """An export file, or a direct snapshot's image, and what it holds."""

    location: str
    format: str
    size: int
    content: Content
    checked: bool = False


@dataclass
class Model:
    disks: dict[str, ModelDisk] = field(default_factory=dict)
    templates: dict[str, int] = field(default_factory=dict)
    """Cached templates and their virtual sizes."""
    exports: dict[str, Copy] = field(default_factory=dict)
    """Finished exports by name (``export-3.qcow2``)."""
    copies: dict[str, Copy] = field(default_factory=dict)
    """Finished direct snapshots by image id."""


Apply = Callable[[Model], None]


@dataclass
class Unresolved:
    """An operation that crashed: the model applies it once the ledger shows it completed."""

    stream: str
    apply: Apply


@dataclass(frozen=True)
class Source:
    """An image file with known bytes, to make templates and disks from."""

    path: Path
    format: str
    image: Image


_SOURCES: dict[tuple[str, int], Source] = {}


def source_image(name: str, fmt: str, size: int) -> Source:
    """A ``fmt`` image file of ``size`` bytes with three known sectors (first, middle, last),
    each naming ``name``; made once per process, removed when it exits."""
    key = (name, size)
    if key not in _SOURCES:
        directory = Path(tempfile.mkdtemp(prefix="diskledger-harness-sources-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        middle = size // 2 // SECTOR * SECTOR
        sectors = {
            offset: sector_of(f"{name} {where}")
            for offset, where in ((0, "first"), (middle, "middle"), (size - SECTOR, "last"))
        }
        raw = directory / f"{name}.raw"
        with raw.open("wb") as handle:
            for offset, data in sectors.items():
                handle.seek(offset)
                handle.write(data)
            handle.truncate(size)
        path = raw
        if fmt != "raw":
            path = directory / f"{name}.{fmt}"
            subprocess.run(
                ["qemu-img", "convert", "-f", "raw", "-O", fmt, str(raw), str(path)],
                check=True,
                capture_output=True,
            )
            raw.unlink()
        _SOURCES[key] = Source(path, fmt, Image(size, sectors))
    return _SOURCES[key]
