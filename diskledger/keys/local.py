"""Keys as files in a local directory only its owner (root) can enter.

``<dir>/<ref>.key`` holds one key: 32 random bytes from ``secrets``, written as 43 URL-safe
base64 characters (qemu's LUKS driver takes its passphrase as UTF-8 text; the entropy is the
same 256 bits). The directory is mode 0700 and each file 0600, both owned by the user diskledger
runs as; anything looser is refused (``UnsafeKeyStore``), never repaired silently.

A key is written under a temporary name (``.<ref>.tmp``), fsynced, renamed into place and the
directory fsynced, so that a key whose reference the ledger records is durable. The creating
process holds an ``flock`` on the file from before its first byte until it lets go
(``NewKey.release``) or dies: ``list_keys`` reports such a key as ``held``, and the orphan sweep
leaves it alone. ``destroy`` overwrites the file with zeroes, fsyncs, removes it and fsyncs the
directory; on a copy-on-write or flash file system the overwrite is best effort (see
docs/encryption.md), the removal is what counts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from diskledger.errors import InvalidInput, KeyNotFound, UnsafeKeyStore
from diskledger.keys.contract import KeyInfo

__all__ = ["KEY_BYTES", "LocalKeyDirectory"]

KEY_BYTES = 32
_SUFFIX = ".key"
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,100}")


@dataclass(slots=True)
class _HeldKey:
    ref: str
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file lets go of its flock


class LocalKeyDirectory:
    """The ``local`` key provider: one root-only directory of key files."""

    name = "local"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.path.abspath(directory)

    def __repr__(self) -> str:
        return f"LocalKeyDirectory({self.directory!r})"

    # -- the contract --------------------------------------------------------------------------

    def check(self) -> None:
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError:
            parent = os.path.dirname(self.directory)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UnsafeKeyStore(
                    f"key directory {self.directory} is missing and {parent} is not writable"
                ) from None
            return  # made on the first key
        except OSError as exc:
            raise UnsafeKeyStore(f"key directory {self.directory}: {exc.strerror}") from exc
        self._check_dir(st)

    def create(self, owner: str) -> _HeldKey:
        if not _REF.fullmatch(owner) or len(owner) > 80:
            raise InvalidInput(f"key owner {owner!r} is not a plain name")
        self._ensure_dir()
        ref = f"{owner}-{secrets.token_hex(8)}"
        temp, final = self._temp(ref), self._path(ref)
        material = secrets.token_urlsafe(KEY_BYTES).encode("ascii")
        fd = self._os(
            "create a key",
            lambda: os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600),
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, material)
            os.fsync(fd)
            os.rename(temp, final)
            _fsync_dir(self.directory)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise UnsafeKeyStore(f"cannot write a key in {self.directory}: {exc.strerror}") from exc
        return _HeldKey(ref, fd)

    def exists(self, ref: str) -> bool:
        return os.path.lexists(self._path(ref))

    @contextlib.contextmanager
    def secret_file(self, ref: str) -> Iterator[str]:
        path = self._path(ref)
        os.close(self._open_checked(ref, path))  # refuses a missing or loosely kept key
        yield path

    def material(self, ref: str) -> bytes:
        fd = self._open_checked(ref, self._path(ref))
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)

    def destroy(self, ref: str) -> bool:
        path = self._path(ref)
        existed = False
        for name in (path, self._temp(ref)):
            try:
                fd = os.open(name, os.O_RDWR | _NOFOLLOW)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise UnsafeKeyStore(f"cannot destroy key {ref}: {exc.strerror}") from exc
                fd = None  # a symlink planted here: remove the link, write through nothing
            try:
                if fd is not None:
                    size = os.fstat(fd).st_size
                    _write_all(fd, b"\0" * size)
                    os.fsync(fd)
            finally:
                if fd is not None:
                    os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            existed = existed or name == path
        if os.path.isdir(self.directory):
            _fsync_dir(self.directory)
        return existed

    def list_keys(self) -> Iterator[KeyInfo]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise UnsafeKeyStore(
                f"cannot list key directory {self.directory}: {exc.strerror}"
            ) from exc
        seen: set[str] = set()
        for name in names:
            if name.endswith(_SUFFIX):
                ref = name[: -len(_SUFFIX)]
            elif name.startswith(".") and name.endswith(".tmp"):
                ref = name[1:-4]
            else:
                continue
            if ref in seen or not _REF.fullmatch(ref):
                continue
            seen.add(ref)
            path = os.path.join(self.directory, name)
            yield KeyInfo(ref, owner_of(ref), _held(path))

    # -- helpers -------------------------------------------------------------------------------

    def _path(self, ref: str) -> str:
        if not _REF.fullmatch(ref):
            raise InvalidInput(f"key reference {ref!r} is not one the local provider makes")
        return os.path.join(self.directory, ref + _SUFFIX)

    def _temp(self, ref: str) -> str:
        return os.path.join(self.directory, f".{ref}.tmp")

    def _ensure_dir(self) -> None:
        try:
            os.mkdir(self.directory, 0o700)
            _fsync_dir(os.path.dirname(self.directory))
        except FileExistsError:
            pass
        except OSError as exc:
            raise UnsafeKeyStore(
                f"cannot make key directory {self.directory}: {exc.strerror}"
            ) from exc
        self._check_dir(os.lstat(self.directory))

    def _check_dir(self, st: os.stat_result) -> None:
        where = f"key directory {self.directory}"
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise UnsafeKeyStore(f"{where} is not a directory (a symlink is refused)")
        if st.st_uid != os.geteuid():
            raise UnsafeKeyStore(f"{where} is owned by uid {st.st_uid}, not {os.geteuid()}")
        if st.st_mode & 0o077:
            raise UnsafeKeyStore(
                f"{where} has mode {stat.S_IMODE(st.st_mode):04o}: only its owner may enter it"
            )
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise UnsafeKeyStore(f"{where} is not writable")

    def _open_checked(self, ref: str, path: str) -> int:
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            raise KeyNotFound(ref, self.name) from None
        except OSError as exc:
            raise UnsafeKeyStore(f"cannot open key {ref}: {exc.strerror}") from exc
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(fd)
            raise UnsafeKeyStore(
                f"key {ref} is not a regular file of uid {os.geteuid()} with mode 0600"
            )
        return fd

    @staticmethod
    def _os(what: str, call: Callable[[], int]) -> int:
        try:
            return call()
        except OSError as exc:
            raise UnsafeKeyStore(f"cannot {what}: {exc.strerror}") from exc


def owner_of(ref: str) -> str:
    """The owner label (op id) a local reference was made for."""
    return ref.rpartition("-")[0]


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _held(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _write_all(fd: int, data: bytes) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
