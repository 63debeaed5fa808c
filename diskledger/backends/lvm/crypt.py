"""dm-crypt LUKS2 on a logical volume: the format, the tag that says a volume has it, and the
mapping its plaintext is read and written through (see ``docs/backends/lvm.md``).

- A volume is encrypted when it carries ``LUKS_TAG``, set when it is made: what a volume holds
  is guest data, never read to decide anything.
- Its LUKS2 header takes a fixed number of bytes at its start, ``header_size``: 1 MiB, or one
  extent when the volume group's extents are larger, so that a disk of whole extents has a
  volume of whole extents (16 KiB of metadata twice, the key slots in the rest); the disk is
  that much smaller than its volume, and a second tag says how much (``header_tag``).
- Its plaintext is ``/dev/mapper/<mapping(vg, lv)>``, a name that follows from the volume's,
  open only while diskledger writes through it (create, import, resize, rollback) or a guest
  uses it (attach to detach). The key reaches ``cryptsetup`` only as a key file.
"""

from __future__ import annotations

import hashlib
import os
from typing import Final

from diskledger.backends import runner
from diskledger.errors import CommandFailed

__all__ = [
    "HEADER",
    "LUKS_TAG",
    "close",
    "device",
    "format_volume",
    "header_of",
    "header_size",
    "header_tag",
    "is_open",
    "mapping",
    "open_mapping",
    "resize",
]

MiB: Final = 1 << 20
HEADER: Final = MiB
"""The smallest header: what a volume group of extents up to 1 MiB gets."""
LUKS_TAG: Final = "diskledger-luks2"
"""The LVM tag on every volume holding a LUKS2 header diskledger wrote (disks, their temporaries
and snapshots)."""
_HEADER_TAG = f"{LUKS_TAG}-header-"
_METADATA = 16 << 10  # each of the two copies of the JSON metadata
_MAX_KEYSLOTS = 16 * MiB  # LUKS2's default area; the rest of a larger header is unused
_PREFIX = "luks-"
_MAX_NAME = 127  # device-mapper's limit (DM_NAME_LEN less its terminating NUL)
_TIMEOUT = 300.0


def header_size(extent: int) -> int:
    """The header of a volume in a group of ``extent``-byte extents: 1 MiB, or one extent
    (extents are powers of two: either way a whole number of extents)."""
    return max(HEADER, extent)


def header_tag(header: int) -> str:
    """The tag saying a volume's header is ``header`` bytes (whole MiB)."""
    return f"{_HEADER_TAG}{header // MiB}m"


def header_of(tags: frozenset[str]) -> int:
    """The header a volume tagged ``tags`` has (``LUKS_TAG`` alone: 1 MiB)."""
    for tag in tags:
        if tag.startswith(_HEADER_TAG) and tag.endswith("m"):
            digits = tag[len(_HEADER_TAG) : -1]
            if digits.isascii() and digits.isdigit() and int(digits) > 0:
                return int(digits) * MiB
    return HEADER


def mapping(vg: str, lv: str) -> str:
    """The device-mapper name the plaintext of ``vg/lv`` is opened as: ``luks-VG-LV``, with each
    ``-`` inside a name doubled as LVM does (so that no two volumes share one); a digest when
    that would be longer than device-mapper allows. LVM's alphabet (``[A-Za-z0-9+_.-]``) is
    within device-mapper's, so the name needs no mangling."""
    name = f"{_PREFIX}{vg.replace('-', '--')}-{lv.replace('-', '--')}"
    if len(name) <= _MAX_NAME:
        return name
    return f"{_PREFIX}{hashlib.sha256(f'{vg}/{lv}'.encode()).hexdigest()}"


def device(name: str) -> str:
    """The plaintext's block device while the mapping ``name`` is open."""
    return f"/dev/mapper/{name}"


def is_open(name: str) -> bool:
    """Whether the mapping ``name`` is open (on this host: mappings are kernel state)."""
    return os.path.exists(device(name))


def format_volume(path: str, key_file: str, iter_time_ms: int, header: int) -> None:
    """Write a LUKS2 header for the key in ``key_file`` onto the volume at ``path``: pbkdf2 (the
    key is 256 random bits: a memory-hard PBKDF buys nothing and costs seconds under emulation),
    the data from ``header`` bytes on (1 MiB: room for three 252 KiB pbkdf2 key slots)."""
    keyslots = min(header, _MAX_KEYSLOTS) - 2 * _METADATA
    runner.run(
        ["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--key-file", key_file,
         "--pbkdf", "pbkdf2", "--iter-time", str(max(1, int(iter_time_ms))),
         "--luks2-metadata-size", f"{_METADATA // 1024}k",
         "--luks2-keyslots-size", f"{keyslots // 1024}k",
         "--offset", str(header // 512), path],
        timeout=_TIMEOUT,
    )  # fmt: skip


def open_mapping(path: str, name: str, key_file: str) -> str:
    """Open the plaintext of the volume at ``path`` as ``name`` (already open: left as it is);
    its device path. A key that does not open the header fails here."""
    if not is_open(name):
        runner.run(["cryptsetup", "open", "--key-file", key_file, path, name], timeout=_TIMEOUT)
    return device(name)


def resize(name: str, key_file: str) -> None:
    """Make the open mapping ``name`` as large as its volume is now."""
    runner.run(["cryptsetup", "resize", "--key-file", key_file, name], timeout=_TIMEOUT)


def close(name: str) -> bool:
    """Close the mapping ``name``; idempotent. Whether it was open."""
    if not is_open(name):
        return False
    try:
        runner.run(["cryptsetup", "close", name], timeout=_TIMEOUT)
    except CommandFailed:
        if is_open(name):
            raise
    return True
