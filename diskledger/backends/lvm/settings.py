"""The lvm backend's settings, from ``DISKLEDGER_LVM_*`` variables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from diskledger.errors import InvalidInput

__all__ = ["CLEAR_METHODS", "LvmSettings", "check_lvm_name"]

CLEAR_METHODS: Final = ("zero", "shred", "none")
_LVM_NAME = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*")
MAX_LVM_NAME: Final = 127

ClearMethod = Literal["zero", "shred", "none"]


def check_lvm_name(value: str, variable: str) -> str:
    """A volume group or thin pool name LVM accepts (``[A-Za-z0-9+_.-]``, not starting with
    ``-``, not ``.``/``..``, at most 127 characters), or one ``InvalidInput`` line."""
    if (
        not _LVM_NAME.fullmatch(value)
        or value in (".", "..")
        or len(value) > MAX_LVM_NAME
        or value.startswith(("snapshot", "pvmove"))
    ):
        raise InvalidInput(
            f"{variable}={value!r} is not an LVM name ([A-Za-z0-9+_.-], not starting with '-', "
            f"at most {MAX_LVM_NAME} characters)"
        )
    return value


@dataclass(frozen=True, slots=True)
class LvmSettings:
    """Where the lvm backend keeps disks and how it clears them (Nova's ``images_volume_group``,
    ``sparse_logical_volumes``, ``volume_clear``, ``volume_clear_size``)."""

    vg: str
    """The volume group disks are logical volumes in (``DISKLEDGER_LVM_VG``, required)."""
    thin_pool: str | None = None
    """The thin pool in ``vg`` sparse disks are thin volumes of; None: thick volumes."""
    volume_clear: ClearMethod = "zero"
    """How a thick volume is cleared before it is removed."""
    volume_clear_size: int = 0
    """MiB to clear from the start of a volume; 0 clears all of it."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> LvmSettings | None:
        """``DISKLEDGER_LVM_VG`` (None when unset: the backend then refuses to be made),
        ``DISKLEDGER_LVM_SPARSE`` (a thin pool's name), ``DISKLEDGER_LVM_VOLUME_CLEAR``
        (zero|shred|none, default zero), ``DISKLEDGER_LVM_VOLUME_CLEAR_SIZE`` (MiB, 0 = all)."""
        vg = environ.get("DISKLEDGER_LVM_VG") or None
        pool = environ.get("DISKLEDGER_LVM_SPARSE") or None
        clear = environ.get("DISKLEDGER_LVM_VOLUME_CLEAR") or "zero"
        clear_size = environ.get("DISKLEDGER_LVM_VOLUME_CLEAR_SIZE") or "0"
        if clear not in CLEAR_METHODS:
            raise InvalidInput(
                f"DISKLEDGER_LVM_VOLUME_CLEAR={clear!r} is not one of {', '.join(CLEAR_METHODS)}"
            )
        if not (clear_size.isascii() and clear_size.isdigit()):
            raise InvalidInput(
                f"DISKLEDGER_LVM_VOLUME_CLEAR_SIZE={clear_size!r} is not a number of MiB "
                "(0 clears the whole volume)"
            )
        if pool is not None:
            check_lvm_name(pool, "DISKLEDGER_LVM_SPARSE")
        if vg is None:
            return None
        method: ClearMethod = "zero" if clear == "zero" else "shred" if clear == "shred" else "none"
        return cls(check_lvm_name(vg, "DISKLEDGER_LVM_VG"), pool, method, int(clear_size))

    @property
    def sparse(self) -> bool:
        return self.thin_pool is not None
