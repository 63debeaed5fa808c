"""Storage drivers for disks, behind one contract (``contract.py``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from diskledger import lazy
from diskledger.backends import registry
from diskledger.backends.contract import (
    Artifact,
    ArtifactKind,
    Backend,
    Capability,
    ChecksCapacity,
    DirectSnapshots,
    DiskSource,
    Fences,
    FencesMembers,
    Flattens,
    Observation,
    SetAsideVolumes,
    SetsAside,
    SourceKind,
    TemplateSource,
    TemplateStore,
)
from diskledger.backends.registry import BackendSpec

if TYPE_CHECKING:
    from diskledger.backends.file_backend import FileSettings
    from diskledger.backends.lvm import LvmBackend, LvmSettings
    from diskledger.backends.parallels import ParallelsBackend
    from diskledger.backends.qcow2 import Qcow2Backend
    from diskledger.backends.raw import RawBackend
    from diskledger.backends.rbd import RbdBackend, RbdTemplateStore
    from diskledger.backends.rbd.config import CephConfig
    from diskledger.backends.templates import DEFAULT_MAX_VIRTUAL_SIZE as DEFAULT_MAX_VIRTUAL_SIZE
    from diskledger.backends.templates import TemplateCache

_LAZY: dict[str, str] = {
    "FileSettings": "diskledger.backends.file_backend",
    "LvmBackend": "diskledger.backends.lvm",
    "LvmSettings": "diskledger.backends.lvm",
    "ParallelsBackend": "diskledger.backends.parallels",
    "Qcow2Backend": "diskledger.backends.qcow2",
    "RawBackend": "diskledger.backends.raw",
    "RbdBackend": "diskledger.backends.rbd",
    "RbdTemplateStore": "diskledger.backends.rbd",
    "CephConfig": "diskledger.backends.rbd.config",
    "DEFAULT_MAX_VIRTUAL_SIZE": "diskledger.backends.templates",
    "TemplateCache": "diskledger.backends.templates",
}
"""The names whose modules are imported when first asked for: a command that never touches
storage (``disk show``) pays for neither the backends' modules nor what they import (oslo.utils'
format inspector, the Ceph and LVM drivers)."""

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy.exports(globals(), _LAZY)


__all__ = [
    "BACKENDS",
    "Artifact",
    "ArtifactKind",
    "Backend",
    "BackendSpec",
    "Capability",
    "CephConfig",
    "ChecksCapacity",
    "DirectSnapshots",
    "DiskSource",
    "Fences",
    "FencesMembers",
    "FileSettings",
    "Flattens",
    "LvmBackend",
    "LvmSettings",
    "Observation",
    "ParallelsBackend",
    "Qcow2Backend",
    "RawBackend",
    "RbdBackend",
    "RbdTemplateStore",
    "SetAsideVolumes",
    "SetsAside",
    "SourceKind",
    "TemplateCache",
    "TemplateSource",
    "TemplateStore",
    "backend_for",
    "template_store_for",
]

BACKENDS = ("raw", "qcow2", "rbd", "lvm", "parallels")
"""The built-in backends (``registry.names()`` lists every backend known)."""


def backend_for(
    name: str, root: str, *, ceph: CephConfig | None = None, preallocate: bool = False
) -> Backend:
    """The backend configured as ``name``; file backends keep their files under ``root`` (and
    ``preallocate`` their space), the ``rbd`` backend needs ``ceph``. Any other backend the
    registry knows is made with its settings from the environment.

    Kept while callers move to ``registry.spec(name)``."""
    from diskledger.backends.file_backend import FileSettings

    found = registry.spec(name)
    settings: object
    if name == "rbd":
        settings = ceph
    elif name in ("raw", "qcow2", "parallels"):
        settings = FileSettings(preallocate=preallocate)
    else:
        settings = found.load_settings(os.environ)
    return found.make(root, settings)


def template_store_for(
    backend: Backend,
    root: str,
    *,
    max_virtual_size: int = 16 << 40,  # templates.DEFAULT_MAX_VIRTUAL_SIZE, not imported eagerly
) -> TemplateStore:
    """Where ``backend`` keeps its templates (``BackendSpec.templates`` of its name): in its pool
    for RBD, as local files otherwise, also for a backend the registry does not know.

    Kept while callers move to ``registry.spec(name).templates``."""
    if backend.name not in registry.names():
        from diskledger.backends.templates import TemplateCache

        return TemplateCache(root, max_virtual_size=max_virtual_size)
    return registry.spec(backend.name).templates(backend, root, max_virtual_size)
