"""The RBD backend: disks and templates as images in a Ceph pool, through librbd.

- ``cluster.py``: one client's connection to the cluster (``CephConfig``, ``Cluster``), its
  bounded retry policies and the translation of librados/librbd errors into the error tree;
- ``images.py``: how images are named, and ``Images``, the idempotent image-level primitives
  (create, clone, rename, snapshot, remove, read) that disks and templates are made of;
- ``backend.py``: ``RbdBackend``, disks cloned copy-on-write from a protected template snapshot;
- ``templates.py``: ``RbdTemplateStore``, templates imported into the pool once.

The ``rados`` and ``rbd`` bindings are imported only when the cluster is first reached.
"""

from __future__ import annotations

from diskledger.backends.rbd.backend import RbdBackend
from diskledger.backends.rbd.cluster import (
    MSGR2_PORT,
    CephConfig,
    Cluster,
    Policy,
    client_key,
    errno_of,
    translate,
)
from diskledger.backends.rbd.images import TEMPLATE_SNAPSHOT, Images, image_name, split
from diskledger.backends.rbd.templates import RbdTemplateStore

__all__ = [
    "MSGR2_PORT",
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
