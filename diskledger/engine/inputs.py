"""Parsing and checking what callers hand the engine, before anything is touched."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from diskledger.backends.glance import glance_source, is_glance
from diskledger.backends.sources import ImageSource, LocalFile, source_from
from diskledger.errors import InvalidInput, InvalidName, InvalidSize, InvalidSource

__all__ = [
    "MAX_NAME",
    "MAX_SIZE",
    "check_disk",
    "check_name",
    "check_snapshot",
    "human_size",
    "parse_size",
    "readable_file",
    "template_source",
]

MAX_NAME: Final = 64
MAX_SIZE: Final = 1 << 50
"""1 PiB: far above any real disk, far below where qemu-img's arithmetic or ours could overflow."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SIZE = re.compile(r"(?P<number>\d+)\s*(?P<unit>[KMGT]?)(?:i?B)?", re.IGNORECASE)
_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def check_name(name: str, what: str) -> str:
    """``name`` if it is ``[A-Za-z0-9][A-Za-z0-9._-]*``, at most 64 characters, and not ``..``."""
    if not name:
        raise InvalidName(f"{what} name is empty")
    if len(name) > MAX_NAME:
        raise InvalidName(f"{what} name is longer than {MAX_NAME} characters")
    if not _NAME.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"{what} name {name!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, and no '..'"
        )
    return name


def check_disk(disk: str) -> str:
    """``INSTANCE/NAME``, each part a valid name."""
    instance, sep, name = disk.partition("/")
    if not sep:
        raise InvalidName(f"disk {disk!r} is not INSTANCE/NAME")
    check_name(instance, "instance")
    check_name(name, "disk")
    return disk


def check_snapshot(snapshot: str) -> str:
    """A snapshot name: a valid name that is not all digits, because ``qemu-img snapshot`` looks
    a name up as a snapshot id first, and ``2`` would then act on whichever snapshot has id 2."""
    check_name(snapshot, "snapshot")
    if snapshot.isdigit():
        raise InvalidName(f"snapshot name {snapshot!r} is all digits: qcow2 reads it as an id")
    return snapshot


def human_size(size: int | None) -> str:
    """``1.0 GiB`` for 1073741824, ``512 B``, ``-`` for None: a size as a person reads it."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Bytes from ``10737418240``, ``10G``, ``512M``, ``1TiB``; binary units; a positive multiple
    of 512 (qemu-img rounds anything else, and then the disk would not be the size recorded).

    Args:
        text: Bytes as an int, or a string with an optional ``K``/``M``/``G``/``T`` suffix.
        what: What the size is, for the error message.

    Returns:
        The size in bytes.

    Raises:
        InvalidSize: Unparsable, a bool, not positive, above 1 PiB, or not a multiple of 512.
    """
    if isinstance(text, bool):
        raise InvalidSize(f"{what} must be a number of bytes, not {text!r}")
    if isinstance(text, int):
        size = text
    else:
        if text.strip().startswith("-"):
            raise InvalidSize(
                f"{what} {text.strip()} is negative: a size is a positive number of bytes, "
                "or with a K/M/G/T suffix"
            )
        match = _SIZE.fullmatch(text.strip())
        if match is None:
            raise InvalidSize(f"{what} {text!r} is not a size: use bytes or a K/M/G/T suffix")
        size = int(match["number"]) * _UNITS[match["unit"].upper()]
    if size <= 0:
        raise InvalidSize(
            f"{what} must be greater than zero, got {text}: a size is a positive number of "
            "bytes, or with a K/M/G/T suffix"
        )
    if size > MAX_SIZE:
        raise InvalidSize(
            f"{what} {text} is larger than the ceiling of {human_size(MAX_SIZE)} ({MAX_SIZE} bytes)"
        )
    if size % 512:
        raise InvalidSize(f"{what} {text} is not a multiple of 512 bytes")
    return size


def readable_file(path: Path) -> Path:
    """The absolute path of ``path`` if it exists and, when a regular file, can be read.

    A missing or unreadable source is a typo and changes nothing. Anything else that is not a
    plain regular file (a symlink, a directory, a FIFO) is a hostile source: it goes on to the
    effect, which refuses it there, so that the refusal is recorded for the audit trail.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError as exc:
        raise InvalidSource(f"source file {str(path)!r} does not exist") from exc
    except OSError as exc:
        raise InvalidSource(f"source file {str(path)!r} cannot be read: {exc.strerror}") from exc
    if stat.S_ISREG(mode):
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise InvalidSource(
                f"source file {str(path)!r} cannot be read: {exc.strerror}"
            ) from exc
    return path.absolute()


def template_source(
    source: str | os.PathLike[str],
    *,
    sha256: str | None,
    protected: Iterable[str],
    fmt: str | None = None,
) -> ImageSource:
    """The ``ImageSource`` a caller's ``source`` names: an ``http(s)://`` URL (other schemes
    and credentials refused), ``glance://IMAGE_ID`` (an image service's image, checked against
    ``fmt``), or a local file checked as ``readable_file`` checks it and refused when it lies
    inside one of the ``protected`` paths (the engine's root: the ledger, the templates, the
    disks), which only the ledger may name.

    Raises:
        InvalidSource: As ``source_from`` and ``readable_file`` refuse, or a protected path.
        InvalidInput: ``sha256`` is not 64 hex digits, or a download setting is out of range.
    """
    if is_glance(os.fspath(source)):
        if sha256 is not None:
            raise InvalidInput(
                f"source {os.fspath(source)}: --sha256 is for files and URLs; an image service's "
                "image is verified against the hash the service recorded"
            )
        return glance_source(os.fspath(source), fmt=fmt)
    chosen = source_from(source, sha256=sha256)
    if not isinstance(chosen, LocalFile):
        return chosen
    path = readable_file(Path(chosen.path))
    real = os.path.realpath(path)
    for place in protected:
        inside = os.path.realpath(place)
        if real == inside or real.startswith(inside.rstrip(os.sep) + os.sep):
            raise InvalidSource(
                f"source file {str(path)!r} is inside {inside}, which holds the ledger's own "
                "files (the ledger, templates, disks); copy the image elsewhere first"
            )
    return LocalFile(str(path), chosen.checksum)
