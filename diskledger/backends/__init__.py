"""Storage drivers for disks, behind one contract (``contract.py``)."""

from __future__ import annotations

from diskledger.backends.contract import (
    Artifact,
    ArtifactKind,
    Backend,
    Capability,
    DirectSnapshots,
    DiskSource,
    Fences,
    Flattens,
    Observation,
    SourceKind,
    TemplateSource,
    TemplateStore,
)
from diskledger.backends.qcow2 import Qcow2Backend
from diskledger.backends.raw import RawBackend
from diskledger.backends.rbd import RbdBackend, RbdTemplateStore
from diskledger.backends.rbd.cluster import CephConfig
from diskledger.backends.templates import DEFAULT_MAX_VIRTUAL_SIZE, TemplateCache
from diskledger.errors import InvalidInput

__all__ = [
    "BACKENDS",
    "Artifact",
    "ArtifactKind",
    "Backend",
    "Capability",
    "CephConfig",
    "DirectSnapshots",
    "DiskSource",
    "Fences",
    "Flattens",
    "Observation",
    "Qcow2Backend",
    "RawBackend",
    "RbdBackend",
    "RbdTemplateStore",
    "SourceKind",
    "TemplateCache",
    "TemplateSource",
    "TemplateStore",
    "backend_for",
    "template_store_for",
]

BACKENDS = ("raw", "qcow2", "rbd")


def backend_for(
    name: str, root: str, *, ceph: CephConfig | None = None, preallocate: bool = False
) -> Backend:
    """The backend configured as ``name``; file backends keep their files under ``root`` (and
    ``preallocate`` their space), the ``rbd`` backend needs ``ceph``."""
    if name == "raw":
        return RawBackend(root, preallocate=preallocate)
    if name == "qcow2":
        return Qcow2Backend(root, preallocate=preallocate)
    if name == "rbd":
        if ceph is None:
            raise InvalidInput("the rbd backend needs a Ceph configuration (DISKLEDGER_CEPH_CONF)")
        return RbdBackend(root, ceph)
    raise InvalidInput(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")


def template_store_for(
    backend: Backend, root: str, *, max_virtual_size: int = DEFAULT_MAX_VIRTUAL_SIZE
) -> TemplateStore:
    """Where ``backend`` keeps its templates: in its pool for RBD, as local files otherwise."""
    if isinstance(backend, RbdBackend):
        return RbdTemplateStore(root, backend, max_virtual_size=max_virtual_size)
    return TemplateCache(root, max_virtual_size=max_virtual_size)
