"""Reaching a backend's storage beside the engine, for tests that check what it holds.

The contract suite and the harness never trust a backend's own ``probe`` to judge its data: they
read and write guest bytes through a ``StorageAccess``, which goes to the storage directly (the
image file through ``qemu-io`` with the recorded format, an RBD image through librbd), and list
what exists there to find leaks. A third party's backend supplies one of these beside it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from diskledger.backends import CephConfig

__all__ = [
    "FileStorage",
    "ImageFacts",
    "InspectingFileStorage",
    "RbdStorage",
    "StorageAccess",
    "StorageInspection",
]


@runtime_checkable
class StorageAccess(Protocol):
    """Direct access to the storage a backend keeps disks in.

    ``location`` is what the backend returned from ``disk_location`` (or an export's target, or
    any other artifact location it names); ``fmt`` is the format the ledger recorded for it.
    """

    def read(self, location: str, fmt: str, offset: int, length: int) -> bytes:
        """``length`` guest bytes of the image at ``location`` from ``offset``."""
        ...

    def write(self, location: str, fmt: str, offset: int, data: bytes) -> None:
        """Write ``data`` as a guest would, at ``offset`` of the image at ``location``."""
        ...

    def existing(self) -> set[str]:
        """Every artifact location that exists in this storage now (files under the root, or
        images and ``image@snapshot``s in the pools)."""
        ...


_DUMP_LINE = re.compile(r"^[0-9a-f]{8}:\s+((?:[0-9a-f]{2} ?)+)")


class FileStorage:
    """Image files under ``root`` (and anywhere else a test names), read and written through
    ``qemu-io`` pinned to the recorded format, as a guest's qemu would."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def read(self, location: str, fmt: str, offset: int, length: int) -> bytes:
        if fmt == "raw":
            with open(location, "rb") as handle:
                handle.seek(offset)
                return handle.read(length).ljust(length, b"\0")
        out = _qemu_io(location, fmt, f"read -v {offset} {length}")
        data = bytearray()
        for line in out.splitlines():
            match = _DUMP_LINE.match(line)
            if match:
                data.extend(bytes.fromhex(match.group(1).replace(" ", "")))
        if len(data) != length:
            raise AssertionError(f"qemu-io read {len(data)} of {length} bytes of {location}")
        return bytes(data)

    def write(self, location: str, fmt: str, offset: int, data: bytes) -> None:
        if fmt == "raw":
            fd = os.open(location, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        with tempfile.NamedTemporaryFile(prefix="diskledger-write-") as source:
            source.write(data)
            source.flush()
            _qemu_io(location, fmt, f"write -s {source.name} {offset} {len(data)}")

    def existing(self) -> set[str]:
        return {str(p) for p in self.root.rglob("*") if p.is_file()}


def _qemu_io(location: str, fmt: str, command: str) -> str:
    done = subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, location],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or "error" in done.stderr.lower():
        raise AssertionError(f"qemu-io {command!r} on {location}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What the storage itself says of an image, beside the backend: its virtual size, the image
    it is an overlay or a clone of (a path, or ``pool/image@snapshot``), its internal snapshots."""

    size: int
    backing: str | None = None
    snapshots: tuple[str, ...] = ()


@runtime_checkable
class StorageInspection(Protocol):
    """A ``StorageAccess`` that can also describe an image, as ``qemu-img info`` or ``rbd info``
    would. Optional: the contract suite checks sizes, backing images and internal snapshots on
    the storage itself only when the storage it is given has this."""

    def inspect(self, location: str, fmt: str) -> ImageFacts:
        """The facts of the image at ``location`` read as ``fmt``."""
        ...


class InspectingFileStorage(FileStorage):
    """``FileStorage`` that also describes an image file through ``qemu-img info`` pinned to the
    recorded format (``-U``: a guest may hold it open)."""

    def inspect(self, location: str, fmt: str) -> ImageFacts:
        return _qemu_img_facts(location, fmt)


class RbdStorage:
    """Images in Ceph pools, read and written through librbd (the ``rados`` and ``rbd`` Python
    bindings) as the client given, which need not be the backend's: tests look as
    ``client.admin``. Locations are ``pool/image`` and ``pool/image@snapshot``; a location that
    is a path (an export's target, a staging file) is a file, read through ``FileStorage``.

    ``existing()`` lists every image (``pool/image``) and snapshot (``pool/image@snapshot``) in
    ``pools``, and every file under ``root`` when one is given (where the backend stages imports
    and a test writes exports). Close it when done (``close()``, or use it as a context manager).
    """

    def __init__(
        self,
        conf: str | os.PathLike[str],
        pools: Sequence[str],
        *,
        user: str | None = None,
        keyring: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.conf = str(conf)
        self.pools = tuple(pools)
        self.user = user
        self.keyring = None if keyring is None else str(keyring)
        self.root = None if root is None else Path(root)
        self._files = FileStorage(self.root or "/")
        self._cluster: Any = None

    @classmethod
    def for_config(
        cls,
        config: CephConfig,
        *,
        user: str | None = None,
        keyring: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> RbdStorage:
        """The pools of ``config`` (disks, and direct snapshots when set), reached as ``user``
        with ``keyring`` when given, else as the backend's own client."""
        pools = [pool for pool in (config.pool, config.snapshot_pool) if pool]
        if user is None:
            user = config.user
            if keyring is None:
                keyring = config.keyring
        return cls(config.conf, pools, user=user, keyring=keyring, root=root)

    def read(self, location: str, fmt: str, offset: int, length: int) -> bytes:
        if _is_path(location):
            return self._files.read(location, fmt, offset, length)
        _check_raw(location, fmt)
        with self._image(location, read_only=True) as image:
            _check_extent(location, image.size(), offset, length)
            data: bytes = image.read(offset, length)
        return data

    def write(self, location: str, fmt: str, offset: int, data: bytes) -> None:
        if _is_path(location):
            self._files.write(location, fmt, offset, data)
            return
        _check_raw(location, fmt)
        with self._image(location, read_only=False) as image:
            _check_extent(location, image.size(), offset, len(data))
            image.write(data, offset)
            image.flush()

    def existing(self) -> set[str]:
        import rbd

        found: set[str] = set()
        for pool in self.pools:
            with self._ioctx(pool) as ioctx:
                for name in rbd.RBD().list(ioctx):
                    found.add(f"{pool}/{name}")
                    try:
                        with rbd.Image(ioctx, name, read_only=True) as image:
                            found.update(f"{pool}/{name}@{s}" for s in _user_snapshots(image))
                    except rbd.ImageNotFound:
                        pass  # listed, but no header: half made or half removed
        if self.root is not None:
            found |= self._files.existing()
        return found

    def inspect(self, location: str, fmt: str) -> ImageFacts:
        import rbd

        if _is_path(location):
            return _qemu_img_facts(location, fmt)
        _check_raw(location, fmt)
        with self._image(location, read_only=True) as image:
            try:
                pool, name, snapshot = image.parent_info()
                backing: str | None = f"{pool}/{name}@{snapshot}"
            except rbd.ImageNotFound:
                backing = None
            return ImageFacts(int(image.size()), backing, _user_snapshots(image))

    def close(self) -> None:
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.shutdown()

    def __enter__(self) -> RbdStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connected(self) -> Any:
        import rados

        if self._cluster is None:
            options = {} if self.keyring is None else {"keyring": self.keyring}
            cluster = rados.Rados(conffile=self.conf, rados_id=self.user, conf=options)
            cluster.connect(timeout=30)
            self._cluster = cluster
        return self._cluster

    @contextmanager
    def _ioctx(self, pool: str) -> Iterator[Any]:
        ioctx = self._connected().open_ioctx(pool)
        try:
            yield ioctx
        finally:
            ioctx.close()

    @contextmanager
    def _image(self, location: str, *, read_only: bool) -> Iterator[Any]:
        import rbd

        spec, _, snapshot = location.partition("@")
        pool, _, name = spec.partition("/")
        if not pool or not name:
            raise ValueError(f"{location!r} is neither a path nor pool/image[@snapshot]")
        with self._ioctx(pool) as ioctx:
            image = rbd.Image(ioctx, name, snapshot=snapshot or None, read_only=read_only)
            try:
                yield image
            finally:
                image.close()


def _is_path(location: str) -> bool:
    return location.startswith("/")


def _check_raw(location: str, fmt: str) -> None:
    if fmt != "raw":
        raise ValueError(f"RbdStorage reads images as raw only, not {fmt} ({location})")


def _check_extent(location: str, size: int, offset: int, length: int) -> None:
    if offset < 0 or offset + length > size:
        raise AssertionError(f"{length} bytes at {offset} are past the end of {location} ({size})")


def _user_snapshots(image: Any) -> tuple[str, ...]:
    import rbd

    user = rbd.RBD_SNAP_NAMESPACE_TYPE_USER
    return tuple(s["name"] for s in image.list_snaps() if s.get("namespace", user) == user)


def _qemu_img_facts(location: str, fmt: str) -> ImageFacts:
    done = subprocess.run(
        ["qemu-img", "info", "-f", fmt, "--output=json", "-U", location],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"qemu-img info of {location}: {done.stderr.strip()}")
    info = json.loads(done.stdout)
    return ImageFacts(
        size=int(info["virtual-size"]),
        backing=info.get("backing-filename"),
        snapshots=tuple(s["name"] for s in info.get("snapshots", ())),
    )
