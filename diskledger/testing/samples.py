"""Sample disks, source images and templates, and guest bytes written and read through a
``StorageAccess``: what the backend contract suite (``contract.py``) and a backend's own tests
share."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from diskledger.backends import Backend, Observation, TemplateSource, TemplateStore
from diskledger.testing.storage import ImageFacts, StorageAccess, StorageInspection

__all__ = [
    "CHUNK",
    "MiB",
    "assert_facts",
    "cache_template",
    "facts",
    "fill",
    "holds",
    "make_source",
    "new_disk",
    "qemu_img",
    "temporaries",
]

MiB = 1024 * 1024
CHUNK = 64 * 1024
"""How many bytes a pattern fills and a check reads."""


def new_disk(backend: Backend, size: int = MiB, name: str = "disk0") -> str:
    """A blank disk ``vm1/name`` of ``size``; its location."""
    location = backend.disk_location("vm1", name)
    backend.create(location, f"op-create-{name}", size=size, template=None)
    return location


def fill(storage: StorageAccess, location: str, fmt: str, pattern: int, offset: int = 0) -> None:
    """Write 64 KiB of the byte ``pattern`` at ``offset``, as a guest would."""
    storage.write(location, fmt, offset, bytes([pattern]) * CHUNK)


def holds(storage: StorageAccess, location: str, fmt: str, pattern: int, offset: int = 0) -> bool:
    """Whether the 64 KiB at ``offset`` are all the byte ``pattern``."""
    return storage.read(location, fmt, offset, CHUNK) == bytes([pattern]) * CHUNK


def temporaries(storage: StorageAccess) -> list[str]:
    """The temporary names storage holds (``.tmp-``), sorted."""
    return sorted(n for n in storage.existing() if ".tmp-" in n.rpartition("/")[2])


def facts(storage: StorageAccess, location: str, fmt: str) -> ImageFacts | None:
    """What the storage says of the image, when it can say (``StorageInspection``)."""
    if isinstance(storage, StorageInspection):
        return storage.inspect(location, fmt)
    return None


_UNSET = object()


def assert_facts(
    storage: StorageAccess,
    location: str,
    fmt: str,
    *,
    size: int,
    backing: object = _UNSET,
    snapshots: tuple[str, ...] | None = None,
) -> None:
    """Check what the storage itself says of the image, when it can say."""
    found = facts(storage, location, fmt)
    if found is None:
        return
    assert found.size == size, (location, found)
    if backing is not _UNSET:
        assert found.backing == backing, (location, found)
    if snapshots is not None:
        assert found.snapshots == snapshots, (location, found)


def make_source(path: Path, fmt: str, size: int, *, pattern: int | None = None) -> None:
    """An image file to import: ``size`` bytes of zeroes, the first 64 KiB ``pattern``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path if fmt == "raw" else path.with_name(f"{path.name}.raw")
    with raw.open("wb") as handle:
        if pattern is not None:
            handle.write(bytes([pattern]) * CHUNK)
        handle.truncate(size)
    if fmt != "raw":
        qemu_img("convert", "-f", "raw", "-O", fmt, str(raw), str(path))
        raw.unlink()


def cache_template(
    store: TemplateStore, sources: Path, fmt: str, template_id: str | None = None
) -> TemplateSource:
    """Import a 1 MiB template holding 0x11 in its first 64 KiB from a ``fmt`` source made in
    ``sources``; the ``TemplateSource`` a disk is made from, as the ledger records it."""
    template_id = template_id or f"tpl-{fmt}"
    source = sources / f"{template_id}.{fmt}"
    make_source(source, fmt, MiB, pattern=0x11)
    seen: Observation = store.import_file(str(source), fmt, template_id, f"op-fetch-{fmt}")
    assert seen.exists and seen.size == MiB, seen
    return TemplateSource(seen.artifact.location, store.cached_format(fmt), MiB)


def qemu_img(*args: str) -> None:
    """Run qemu-img (skipped without it, failed under CI); AssertionError with its stderr."""
    if shutil.which("qemu-img") is None:
        message = "qemu-img is not installed (Debian package qemu-utils)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(f"qemu-img {' '.join(args)}: {done.stderr.strip()}")
