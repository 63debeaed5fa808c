"""File helpers shared by the file backends: temp names, atomic publish, sparse copies, and
setting a fenced operation's temporaries aside.

Every ``OSError`` from the file system leaves here as a ``StorageIOError`` carrying its errno.

**Fencing on a shared directory.** Files have no storage-side fence: a host that another member
took over may still be running (frozen, then thawed). What it may still do is publish, and every
publish renames an operation-unique temporary onto its final name; so the member that takes the
operation over first renames each temporary aside (``set_aside``), and the zombie's ``publish``
fails: its temporary is gone (``ENOENT``), or, when it is recreated after the taker looked, a
*tombstone* ``<temporary>.fenced-<tag>`` beside it makes ``publish`` refuse (``Fenced``). The
rename is atomic within one directory (on NFS too, by the server), which is what makes this a
fence: either the zombie's rename came first, and the taker sees the final name, or it fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from collections.abc import Callable, Sequence

from diskledger.backends import runner
from diskledger.errors import BackendError, Fenced, InvalidName, StorageIOError

__all__ = [
    "IMAGE_DIR_MODE",
    "check_component",
    "ensure_dir",
    "publish",
    "remove_dir",
    "remove_file",
    "set_aside",
    "set_aside_all",
    "sparse_copy",
    "start_writeback",
    "stat",
    "temporary_path",
]

_TEMP_MARK = ".tmp-"
_ASIDE_MARK = ".fenced-"
_NOTHING_ASIDE = "nothing-was-here-to-set-aside"
"""Where the tombstone of a temporary that did not exist yet points: it is a dangling symbolic
link, told apart from a set-aside temporary (a file) at a glance, and opened by nothing."""

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
    """Make ``temp`` durable, rename it onto ``final`` and make the rename durable.

    Never publishes the temporary of an operation another member took over: when ``temp`` was
    set aside the rename fails (``StorageIOError``, ``ENOENT``), and when a tombstone of it
    exists (``set_aside``) nothing is renamed (``Fenced``)."""
    try:
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _refuse_set_aside(temp)
        os.replace(temp, final)
        _fsync_dir(os.path.dirname(final))
    except OSError as exc:
        raise _io_error(f"cannot publish {temp} as {final}", exc) from exc


def set_aside(root: str, path: str, tag: str) -> str | None:
    """Rename the temporary ``path`` to ``<path>.fenced-<tag>`` and return that name, for the
    member taking over the operation that writes it (see the module doc); None when there was
    nothing to move.

    A temporary that does not exist (yet) gets a tombstone under that name instead, a dangling
    symbolic link: a zombie that has still to create it then writes it, but cannot publish it.
    Under ``root`` the directory is made for the tombstone if need be; elsewhere (an export's
    target directory, which nothing creates) a missing directory needs none. Idempotent: an
    earlier call's set-aside file is returned again, and a temporary recreated since is moved
    over it. Tombstones stay until the caller removes them (``remove_file``), which it does once
    the fenced member can no longer act (its host is back with a new boot id, or an operator
    said it is down): until then they are files the ledger does not name."""
    check_component(tag, "fence tag")
    if _TEMP_MARK not in os.path.basename(path):
        raise BackendError(f"{path} is not a temporary name: only temporaries are set aside")
    aside = f"{path}{_ASIDE_MARK}{tag}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return aside if _tombstone(root, aside) else None
    except OSError as exc:
        raise _io_error(f"cannot set {path} aside", exc) from exc
    _fsync_dir(os.path.dirname(path))
    return aside


def set_aside_all(root: str, paths: Sequence[str], tag: str) -> list[str]:
    """``set_aside`` each of ``paths``; the names of those set aside (moved, now or before)."""
    moved: list[str] = []
    for path in paths:
        aside = set_aside(root, path, tag)
        if aside is not None:
            moved.append(aside)
    return moved


def _tombstone(root: str, aside: str) -> bool:
    """Leave the tombstone ``aside`` where nothing was moved; whether ``aside`` already holds a
    temporary an earlier call set aside (a file, not a tombstone)."""
    try:
        if not os.path.islink(aside) and os.path.lexists(aside):
            return True
        directory = os.path.dirname(aside)
        if not os.path.isdir(directory):
            if os.path.relpath(os.path.abspath(directory), os.path.abspath(root)).startswith(
                os.pardir
            ):
                return False  # outside the root nothing makes it: nothing will publish there
            ensure_dir_under(root, directory, IMAGE_DIR_MODE)
        try:
            os.symlink(_NOTHING_ASIDE, aside)
        except FileExistsError:
            return False  # an earlier call's tombstone
        _fsync_dir(directory)
    except OSError as exc:
        raise _io_error(f"cannot leave the tombstone {aside}", exc) from exc
    return False


def _refuse_set_aside(temp: str) -> None:
    """Raise ``Fenced`` when ``temp`` has been set aside, or has a tombstone."""
    directory, name = os.path.split(temp)
    prefix = f"{name}{_ASIDE_MARK}"
    with os.scandir(directory or ".") as entries:
        found = sorted(entry.name for entry in entries if entry.name.startswith(prefix))
    if found:
        # What this zombie wrote after the taker settled is nobody's: it goes, not the taker's.
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise Fenced(
            f"not publishing {temp}: another member took its operation over and set it aside "
            f"({os.path.join(directory, found[0])})"
        )


def reserve(path: str, size: int) -> None:
    """Allocate ``size`` bytes of space for the file without changing its length (``fallocate
    -n``, as Nova's ``preallocate_images=space``): writes up to there will not fail for space,
    and qemu's native AIO will not block on allocating it.

    The file is opened here and handed to ``fallocate`` by descriptor: ``fallocate`` creates a
    file it does not find, and a temporary set aside by a member taking over must stay gone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _io_error(f"cannot reserve space for {path}", exc) from exc
    try:
        runner.run(
            ["fallocate", "--keep-size", "--length", str(size), f"/proc/{os.getpid()}/fd/{fd}"]
        )
        # The allocation is metadata only: without this a power cut may lose it after the
        # outcome says "preallocated" (ext4 happens to commit it with the ledger's next fsync,
        # as one journal transaction; XFS need not).
        os.fsync(fd)
    except OSError as exc:
        raise _io_error(f"cannot reserve space for {path}", exc) from exc
    finally:
        os.close(fd)


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


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` from ``offset`` to the disk,
    without waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``): a long copy that calls
    it as it goes has little left to flush when it fsyncs at the end, instead of a whole file's
    dirty pages at once (a 1 GiB download here: 1.7 s instead of 2.1). Advisory: where the call
    does not exist or fails, nothing is done; the final ``fsync`` is what makes the data
    durable."""
    call = _sync_file_range()
    if call is not None:
        call(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; the result is advisory too


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    # Python's os module has no sync_file_range; libc has had it since glibc 2.6.
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


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
