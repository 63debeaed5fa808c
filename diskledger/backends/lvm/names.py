"""How disks, snapshots and temporaries are named as logical volumes, reversibly.

An instance, disk or snapshot name is encoded into LVM's alphabet ``[A-Za-z0-9+_.-]``: letters,
digits, ``.`` and ``-`` are kept, anything else (``_`` included) becomes ``_XX`` per UTF-8 byte,
in upper-case hex; a leading ``.`` or ``-``, and the first letter of a name that would start
with LVM's reserved ``snapshot`` or ``pvmove``, are escaped the same way. ``+`` joins the parts,
so it never occurs inside one:

- disk ``INSTANCE/DISK``: ``INSTANCE+DISK``
- its snapshot ``SNAP``: ``INSTANCE+DISK+SNAP``
- a temporary, written until it is renamed onto its final name: ``<final>+.tmp-<op id>``
- a volume being cleared and removed: ``<final>+.deleting``
- the new extents of a thick disk being grown, zeroed before the disk takes them:
  ``<disk>+.grow``

``_`` is always followed by upper-case hex, so no name contains LVM's reserved lower-case
suffixes (``_mlog``, ``_tdata``, ``_rimage``...); no encoded part starts with ``.``, so a marker
is never a name.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from diskledger.backends.files import check_component
from diskledger.errors import InvalidName

__all__ = [
    "MAX_LV_NAME",
    "OWNER_TAG",
    "LvName",
    "decode",
    "deleting",
    "disk_lv",
    "encode",
    "growing",
    "op_tag",
    "parse",
    "set_aside_from",
    "snapshot_lv",
    "temporary",
]

MAX_LV_NAME: Final = 127
"""LVM's limit on a logical volume's name."""
TOKEN_RESERVE: Final = 32
"""Room kept for the operation id in a temporary name (a uuid4 in hex)."""
OWNER_TAG: Final = "diskledger"
"""The tag on every volume diskledger makes: what ``inventory`` lists, and what tells its own
volumes from an operator's."""
_TEMP: Final = "+.tmp-"
_DELETING: Final = "+.deleting"
_GROWING: Final = "+.grow"
_KEEP = re.compile(r"[A-Za-z0-9.-]")
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ESCAPE = re.compile(r"_([0-9A-F]{2})")


def encode(name: str) -> str:
    """``name`` in LVM's alphabet (see the module doc)."""
    out = []
    for i, char in enumerate(name):
        keep = _KEEP.fullmatch(char) and not (i == 0 and char in ".-")
        out.append(char if keep else "".join(f"_{b:02X}" for b in char.encode()))
    encoded = "".join(out)
    if encoded.startswith(("snapshot", "pvmove")):
        encoded = f"_{ord(encoded[0]):02X}{encoded[1:]}"
    return encoded


def decode(part: str) -> str:
    """The name ``encode`` made ``part`` from."""
    raw = bytearray()
    pos = 0
    for found in _ESCAPE.finditer(part):
        raw += part[pos : found.start()].encode()
        raw.append(int(found.group(1), 16))
        pos = found.end()
    raw += part[pos:].encode()
    return raw.decode()


def disk_lv(instance: str, disk: str) -> str:
    """The volume of disk ``instance/disk``; ``InvalidName`` when it would be too long."""
    check_component(instance, "instance")
    check_component(disk, "disk")
    return _fits(f"{encode(instance)}+{encode(disk)}")


def snapshot_lv(disk: str, snapshot: str) -> str:
    """The volume holding ``snapshot`` of the disk whose volume is ``disk``."""
    check_component(snapshot, "snapshot")
    return _fits(f"{disk}+{encode(snapshot)}")


def temporary(final: str, token: str) -> str:
    """The volume ``final`` is written under until it is renamed (the one spelling)."""
    if not _TOKEN.fullmatch(token) or len(token) > TOKEN_RESERVE:
        raise InvalidName(f"invalid operation id for an LVM name: {token!r}")
    return f"{final}{_TEMP}{token}"


def deleting(final: str) -> str:
    """What ``final`` is renamed to before it is cleared: from then on it is gone as a disk or
    snapshot, so a delete cut short while clearing is finished, never rolled back onto half
    cleared data."""
    return f"{final}{_DELETING}"


def growing(disk: str) -> str:
    """The volume a thick disk's new extents are zeroed in before the disk is extended onto
    them (one at a time: a disk has one operation at a time)."""
    return f"{disk}{_GROWING}"


def set_aside_from(lv: str) -> str | None:
    """The disk's volume that ``lv`` was set aside from or works for: a ``+.deleting`` volume
    (a disk or one of its snapshots being cleared and removed) or a ``+.grow`` one (a disk's new
    extents being zeroed); None for any other name."""
    parsed = parse(lv)
    if parsed is None or parsed.marker not in (_DELETING[2:], _GROWING[2:]):
        return None
    return parsed.disk


def op_tag(token: str) -> str:
    """The tag naming the operation that made a volume."""
    return f"{OWNER_TAG}-op-{token}"


class LvName(NamedTuple):
    """What a volume's name says: the disk's volume it belongs to, the snapshot (None for the
    disk itself), and a marker (``tmp-<op id>``, ``deleting``; None for a final volume)."""

    disk: str
    snapshot: str | None
    marker: str | None


def parse(lv: str) -> LvName | None:
    """Read a volume name made here; None for any other name (an operator's volume)."""
    parts = lv.split("+")
    marker = None
    if len(parts) > 2 and parts[-1].startswith("."):
        marker = parts.pop()[1:]
    if len(parts) not in (2, 3) or not all(parts) or any(p.startswith(".") for p in parts):
        return None
    try:
        snapshot = decode(parts[2]) if len(parts) == 3 else None
    except UnicodeDecodeError:
        return None
    return LvName("+".join(parts[:2]), snapshot, marker)


def _fits(lv: str) -> str:
    # Room for the longest temporary made from it.
    if len(lv) + len(_TEMP) + TOKEN_RESERVE > MAX_LV_NAME:
        raise InvalidName(
            f"logical volume name {lv!r} would be longer than LVM allows "
            f"({MAX_LV_NAME} characters, {len(_TEMP) + TOKEN_RESERVE} kept for temporaries)"
        )
    return lv
