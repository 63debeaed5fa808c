"""Storage drivers for disks, behind one contract (``contract.py``)."""

from __future__ import annotations

from collections.abc import Callable

from diskledger.backends.contract import (
    Artifact,
    ArtifactKind,
    Backend,
    Capability,
    Observation,
    TemplateSource,
)
from diskledger.backends.qcow2 import Qcow2Backend
from diskledger.backends.raw import RawBackend
from diskledger.backends.templates import TemplateCache
from diskledger.errors import InvalidInput

__all__ = [
    "Artifact",
    "ArtifactKind",
    "Backend",
    "Capability",
    "Observation",
    "Qcow2Backend",
    "RawBackend",
    "TemplateCache",
    "TemplateSource",
    "backend_for",
]

_BACKENDS: dict[str, Callable[[str], Backend]] = {"raw": RawBackend, "qcow2": Qcow2Backend}


def backend_for(name: str, root: str) -> Backend:
    """The backend configured as ``name``, keeping its files under ``root``."""
    factory = _BACKENDS.get(name)
    if factory is None:
        raise InvalidInput(f"unknown backend {name!r}; choose one of: {', '.join(_BACKENDS)}")
    return factory(root)
