"""The RBD backend: disks and templates as images in a Ceph pool, through librbd.

- ``cluster.py``: one client's connection to the cluster (``CephConfig``, ``Cluster``), its
  bounded retry policies and the translation of librados/librbd errors into the error tree;
- ``images.py``: how images are named, and ``Images``, the idempotent image-level primitives
  (create, clone, rename, snapshot, remove, read) that disks and templates are made of;
- ``backend.py``: ``RbdBackend``, disks cloned copy-on-write from a protected template snapshot;
- ``templates.py``: ``RbdTemplateStore``, templates imported into the pool once.

The ``rados`` and ``rbd`` bindings are imported only when the cluster is first reached. ``SPEC``
declares the backend to the registry: its settings are a ``CephConfig`` (``from_environ``), its
templates an ``RbdTemplateStore`` in the same pool.
"""

from __future__ import annotations

from diskledger.backends.contract import Backend
from diskledger.backends.rbd.backend import RbdBackend
from diskledger.backends.rbd.cluster import MSGR2_PORT, Cluster
from diskledger.backends.rbd.config import CephConfig, client_key
from diskledger.backends.rbd.images import TEMPLATE_SNAPSHOT, Images, image_name, split
from diskledger.backends.rbd.policies import Policy, errno_of, translate
from diskledger.backends.rbd.templates import RbdTemplateStore
from diskledger.backends.registry import BackendSpec
from diskledger.errors import InvalidInput

__all__ = [
    "MSGR2_PORT",
    "SPEC",
    "TEMPLATE_SNAPSHOT",
    "CephConfig",
    "Cluster",
    "Images",
    "Policy",
    "RbdBackend",
    "RbdTemplateStore",
    "client_key",
    "errno_of",
    "image_name",
    "split",
    "translate",
]


def _make(root: str, settings: object) -> RbdBackend:
    if not isinstance(settings, CephConfig):
        raise InvalidInput("the rbd backend needs a Ceph configuration (DISKLEDGER_CEPH_CONF)")
    return RbdBackend(root, settings)


def _templates(backend: Backend, root: str, max_virtual_size: int) -> RbdTemplateStore:
    if not isinstance(backend, RbdBackend):
        raise TypeError(f"RBD templates live in an RbdBackend's pool, not {backend!r}'s")
    return RbdTemplateStore(root, backend, max_virtual_size=max_virtual_size)


SPEC = BackendSpec(
    name=RbdBackend.name,
    load_settings=CephConfig.from_environ,
    make=_make,
    templates=_templates,
)
"""The ``rbd`` backend, as the registry finds it."""
