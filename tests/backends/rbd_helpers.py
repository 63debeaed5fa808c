"""Helpers for the RBD backend tests: the tests' own view of the cluster, as client.admin.

The backend under test only ever runs as the restricted ``client.diskledger``; these helpers look
at and arrange the pools from the outside (images, snapshots, clones, watchers), so what a test
asserts is what the cluster holds, not what the backend says it did.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import rados
import rbd

from tests.backends.helpers import qemu_io
from tests.support.ceph import POOL, SNAPSHOT_POOL, CephCluster

__all__ = [
    "admin_ioctx",
    "ceph_admin",
    "has_pattern",
    "image_info",
    "snapshots",
    "temporaries",
    "watched",
    "write_pattern",
]


def write_pattern(spec: str, pattern: int, offset: int = 0) -> None:
    """Write 64 KiB of ``pattern`` through qemu's rbd driver (``spec`` is ``rbd:pool/image:...``)."""
    done = qemu_io(spec, "raw", f"write -P {pattern:#x} {offset} 64k")
    assert done.returncode == 0, done.stderr


def has_pattern(spec: str, pattern: int, offset: int = 0) -> bool:
    done = qemu_io(spec, "raw", f"read -P {pattern:#x} {offset} 64k")
    return done.returncode == 0 and "verification failed" not in done.stdout


def image_info(ceph: CephCluster, location: str) -> dict[str, Any]:
    """``rbd info`` of ``pool/image`` as admin (size, parent...)."""
    info: dict[str, Any] = json.loads(ceph.rbd("info", "--format", "json", location))
    return info


def snapshots(ceph: CephCluster, location: str) -> dict[str, bool]:
    """The snapshots of ``pool/image`` as admin sees them: name → protected."""
    listing = json.loads(ceph.rbd("snap", "ls", "--format", "json", location) or "[]")
    return {s["name"]: s.get("protected") == "true" for s in listing}


def temporaries(ceph: CephCluster) -> set[str]:
    """Every ``.tmp-`` image or snapshot in either pool."""
    return {
        f"{pool}/{entry}"
        for pool in (POOL, SNAPSHOT_POOL)
        for entry in ceph.pool_contents(pool)
        if ".tmp-" in entry
    }


def ceph_admin(ceph: CephCluster, *args: str) -> str:
    """A ``ceph`` command as client.admin (pool management)."""
    done = subprocess.run(
        ["ceph", "-c", str(ceph.conf), "-n", "client.admin", "-k", str(ceph.admin_keyring), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ceph {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def admin_ioctx(ceph: CephCluster, pool: str = POOL) -> Iterator[Any]:
    """An I/O context on ``pool`` as client.admin, from a connection of its own."""
    cluster = rados.Rados(
        conffile=str(ceph.conf), rados_id="admin", conf={"keyring": str(ceph.admin_keyring)}
    )
    cluster.connect(timeout=10)
    try:
        ioctx = cluster.open_ioctx(pool)
        try:
            yield ioctx
        finally:
            ioctx.close()
    finally:
        cluster.shutdown()


@contextmanager
def watched(
    ceph: CephCluster, location: str, *, release_after: float | None = None
) -> Iterator[Any]:
    """Hold ``pool/image`` open read-write as another client (what a running VM does: it
    registers a watch on the image header). ``release_after``: close it from a timer thread after
    that many seconds, as a VM that finishes shutting down would."""
    pool, _, name = location.partition("/")
    with admin_ioctx(ceph, pool) as ioctx:
        image = rbd.Image(ioctx, name)
        closed = threading.Lock()
        state = {"open": True}

        def close() -> None:
            with closed:
                if state["open"]:
                    state["open"] = False
                    image.close()

        timer = threading.Timer(release_after, close) if release_after is not None else None
        if timer is not None:
            timer.start()
        try:
            yield image
        finally:
            if timer is not None:
                timer.cancel()
            close()
