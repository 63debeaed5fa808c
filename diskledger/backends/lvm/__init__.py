"""The lvm backend: disks as logical volumes in one volume group, thick or thin (Nova's ``Lvm``
image backend, with every step in the ledger). See ``docs/backends/lvm.md``.

- ``settings.py``: ``LvmSettings`` from ``DISKLEDGER_LVM_*``;
- ``names.py``: how disks, snapshots and temporaries are named as volumes, reversibly;
- ``volumes.py``: ``Volumes``, the LVM commands (through the one runner) and their reports;
- ``crypt.py``: dm-crypt LUKS2 on a volume (encrypted disks): its header, tag and mapping;
- ``backend.py``: ``LvmBackend``.

Templates are the local ``TemplateCache``'s files; a disk is made by ``qemu-img convert`` from
one into a new volume.
"""

from __future__ import annotations

from diskledger.backends.contract import Backend, TemplateStore
from diskledger.backends.lvm.backend import LvmBackend
from diskledger.backends.lvm.crypt import HEADER, LUKS_TAG, mapping
from diskledger.backends.lvm.names import OWNER_TAG, disk_lv, parse, snapshot_lv
from diskledger.backends.lvm.settings import LvmSettings
from diskledger.backends.lvm.volumes import Volume, Volumes
from diskledger.backends.registry import BackendSpec
from diskledger.backends.templates import TemplateCache
from diskledger.errors import InvalidInput

__all__ = [
    "HEADER",
    "LUKS_TAG",
    "OWNER_TAG",
    "SPEC",
    "LvmBackend",
    "LvmSettings",
    "Volume",
    "Volumes",
    "disk_lv",
    "mapping",
    "parse",
    "snapshot_lv",
]


def _make(root: str, settings: object) -> LvmBackend:
    if not isinstance(settings, LvmSettings):
        raise InvalidInput("the lvm backend needs a volume group: set DISKLEDGER_LVM_VG")
    return LvmBackend(root, settings)


def _templates(backend: Backend, root: str, max_virtual_size: int) -> TemplateStore:
    return TemplateCache(root, max_virtual_size=max_virtual_size)


SPEC = BackendSpec(
    name=LvmBackend.name,
    load_settings=LvmSettings.from_environ,
    make=_make,
    templates=_templates,
)
"""The ``lvm`` backend, as the registry finds it."""
