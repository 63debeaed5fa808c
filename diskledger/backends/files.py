"""File helpers shared by the file backends: temp names, atomic publish, sparse copies.

Every ``OSError`` from the file system leaves here as a ``StorageIOError`` carrying its errno.
"""

from __future__ import annotations

import errno
import os

from diskledger.backends import runner
from diskledger.errors import BackendError, InvalidName, StorageIOError

__all__ = [
    "IMAGE_DIR_MODE",
    "check_component",
    "ensure_dir",
    "publish",
    "remove_dir",
    "remove_file",
    "sparse_copy",
    "stat",
    "temporary_path",
]

_TEMP_MARK = ".tmp-"

# For the directories disks and templates live in: qemu, when libvirt starts it, runs as another
# user (libvirt-qemu) that must traverse them to open a disk and its backing template.
IMAGE_DIR_MODE = 0o755


def temporary_path(final: str, token: str) -> str:
    """The name data for ``final`` is written under until it is published (the one spelling)."""
    return f"{final}{_TEMP_MARK}{token}"


def check_component(value: str, what: str) -> str:
    """Refuse a name that would escape its directory or pass for a temporary name."""
    if value in ("", ".", "..") or "/" in value or "\0" in value or _TEMP_MARK in value:
        raise InvalidName(f"invalid {what} name: {value!r}")
    return value


def publish(temp: str, final: str) -> None:
    """Make ``temp`` durable, rename it onto ``final`` and make the rename durable."""
    try:
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
        _fsync_dir(os.path.dirname(final))
    except OSError as exc:
        raise _io_error(f"cannot publish {temp} as {final}", exc) from exc


def reserve(path: str, size: int) -> None:
    """Allocate ``size`` bytes of space for the file without changing its length (``fallocate
    -n``, as Nova's ``preallocate_images=space``): writes up to there will not fail for space,
    and qemu's native AIO will not block on allocating it."""
    runner.run(["fallocate", "--keep-size", "--length", str(size), os.path.abspath(path)])


def sparse_copy(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst``: a reflink where the file system can, else holes stay holes."""
    runner.run(["cp", "--reflink=auto", "--sparse=always", "--", src, dst])


def remove_file(path: str) -> None:
    """Remove ``path`` durably; a missing file is already removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _io_error(f"cannot remove {path}", exc) from exc
    _fsync_dir(os.path.dirname(path))


def remove_dir(path: str, *, only_if_empty: bool = False) -> None:
    """Remove the empty directory ``path``; a missing one is fine, and so is a non-empty one
    when ``only_if_empty`` (it is shared and still in use)."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        if only_if_empty and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return
        raise _io_error(f"cannot remove directory {path}", exc) from exc
    _fsync_dir(os.path.dirname(path))


def ensure_dir_under(root: str, path: str, mode: int = 0o700) -> None:
    """``ensure_dir(path)``, refusing when an entry between ``root`` and ``path`` is a symbolic
    link: a link planted under the root must not lead a write somewhere else on the host."""
    root = os.path.abspath(root)
    relative = os.path.relpath(os.path.abspath(path), root)
    if relative.startswith(os.pardir):
        raise BackendError(f"{path} is outside {root}")
    current = root
    for part in relative.split(os.sep):
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise BackendError(f"{current} is a symbolic link: refusing to write through it")
    ensure_dir(path, mode)


def ensure_dir(path: str, mode: int = 0o700) -> None:
    """Create ``path`` and its missing parents, each entry made durable in its parent."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    try:
        for directory in reversed(missing):
            try:
                os.mkdir(directory, mode)
            except FileExistsError:
                continue  # made by a concurrent caller; a file there fails on the next mkdir
            _fsync_dir(os.path.dirname(directory))
    except OSError as exc:
        raise _io_error(f"cannot create directory {path}", exc) from exc


def stat(path: str) -> os.stat_result | None:
    """``os.stat`` of ``path``, or ``None`` when there is nothing there."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _io_error(f"cannot stat {path}", exc) from exc


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _io_error(f"cannot sync directory {path}", exc) from exc


def _io_error(message: str, exc: OSError) -> StorageIOError:
    return StorageIOError(f"{message}: {exc.strerror or exc}", errno=exc.errno)
