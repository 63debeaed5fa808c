"""Thin wrappers over ``qemu-img``, each pinning the image format, and a qcow2 header reader.

Every path is made absolute before it reaches ``qemu-img``, so a name can be neither an option
(``-x``) nor a protocol prefix (``nbd:``, ``json:``).

While a progress callback listens (``diskledger.progress``), ``qemu-img convert`` runs with
``-p`` and its ``(NN.NN/100%)`` lines are reported as bytes of the source's virtual size;
otherwise (and for a source whose size is not known without asking a cluster) its command line
is the plain one.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from diskledger import progress
from diskledger.backends import files, runner
from diskledger.backends.contract import Artifact, Observation
from diskledger.errors import BackendError, CommandFailed, InvalidInput, StorageIOError

__all__ = [
    "Luks",
    "Qcow2Snapshot",
    "convert",
    "convert_into_luks",
    "create",
    "info",
    "observe",
    "read_qcow2_header",
    "resize",
    "snapshot_apply",
    "snapshot_create",
    "snapshot_delete",
    "snapshot_list",
]

QCOW2_MAGIC = b"QFI\xfb"
# magic, version, backing_file_offset, backing_file_size, cluster_bits, size, (crypt_method,
# l1_size, l1_table_offset, refcount_table_offset, refcount_table_clusters), nb_snapshots,
# snapshots_offset: the first 72 bytes, common to versions 2 and 3.
_HEADER = struct.Struct(">4sIQII Q 28x IQ")
# l1_table_offset, l1_size, id_str_size, name_size, date_sec, date_nsec, vm_clock_nsec,
# vm_state_size, extra_data_size; then extra data, id, name, padding to 8 bytes.
_SNAPSHOT = struct.Struct(">QIHHIIQII")
_MAX_BACKING_NAME = 1023  # qemu's own limit
_MAX_SNAPSHOTS = 65536  # qemu's own limit


class _Header(NamedTuple):
    magic: bytes
    version: int
    backing_offset: int
    backing_size: int
    cluster_bits: int
    size: int
    snapshot_count: int
    snapshots_offset: int


class Qcow2Snapshot(NamedTuple):
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Luks:
    """qemu's own LUKS encryption of a qcow2 image (``encrypt.format=luks``): the key reaches
    qemu-img only as ``--object secret,file=`` naming ``secret_file`` (a file only its owner can
    read), never on the command line. ``iter_time_ms``: the PBKDF time a new key slot costs to
    unlock (the keys are random, so stretching them buys nothing; see docs/encryption.md)."""

    secret_file: str
    iter_time_ms: int = 100

    def object_args(self) -> list[str]:
        return ["--object", f"secret,id={_SECRET_ID},file={_opt(self.secret_file)},format=raw"]

    def image_opts(self, path: str, fmt: str = "qcow2") -> str:
        if fmt != "qcow2":
            raise InvalidInput(f"diskledger encrypts qcow2 images, not {fmt}")
        return f"{_image_opts(path)},encrypt.key-secret={_SECRET_ID}"


_SECRET_ID = "dlkey0"


def _opt(value: str) -> str:
    """A value in qemu's option syntax: a comma is doubled."""
    return os.path.abspath(value).replace(",", ",,")


def create(
    path: str,
    fmt: str,
    size: int | None = None,
    backing: str | None = None,
    backing_fmt: str | None = None,
    *,
    luks: Luks | None = None,
) -> None:
    argv = ["qemu-img", "create", "-f", fmt]
    if luks is not None:
        if fmt != "qcow2" or backing is not None:
            raise InvalidInput("diskledger encrypts standalone qcow2 images only")
        argv += luks.object_args()
        argv += [
            "-o",
            f"encrypt.format=luks,encrypt.key-secret={_SECRET_ID},"
            f"encrypt.iter-time={int(luks.iter_time_ms)}",
        ]
    if backing is not None:
        if backing_fmt is None:
            raise InvalidInput("a backing file needs its recorded format")
        argv += ["-b", os.path.abspath(backing), "-F", backing_fmt]
    argv.append(os.path.abspath(path))
    if size is not None:
        argv.append(str(size))
    if luks is None:
        runner.run(argv)
        return
    # qemu times its PBKDF in thread CPU time to size a new key slot, and under load that
    # benchmark can read no time at all and give up ("Unable to get accurate CPU usage"):
    # transient (it fails at once, in about 1 of 6 tries here), so the (new, unpublished) image
    # is made again, after a short pause.
    for attempt in range(_PBKDF_ATTEMPTS):
        try:
            runner.run(argv)
            return
        except CommandFailed as exc:
            if _PBKDF_FLAKE not in (exc.stderr or "") or attempt == _PBKDF_ATTEMPTS - 1:
                raise
            files.remove_file(path)
            time.sleep(0.05 * (attempt + 1))


_PBKDF_FLAKE = "Unable to get accurate CPU usage"
_PBKDF_ATTEMPTS = 12


def resize(path: str, fmt: str, size: int, *, luks: Luks | None = None) -> None:
    if luks is not None:
        image = luks.image_opts(path, fmt)
        runner.run(["qemu-img", "resize", *luks.object_args(), "--image-opts", image, str(size)])
        return
    runner.run(["qemu-img", "resize", "-f", fmt, os.path.abspath(path), str(size)])


def convert_into_luks(src: str, src_fmt: str, dst: str, luks: Luks) -> None:
    """Write the guest view of ``src`` into the existing encrypted qcow2 image ``dst`` (made
    by ``create`` with ``luks``, at least as large): qemu encrypts on the way in."""
    argv = ["qemu-img", "convert", "-n", *luks.object_args(), "-f", src_fmt]
    argv += [os.path.abspath(src), "--target-image-opts", luks.image_opts(dst)]
    _convert(argv, os.path.abspath(src), src_fmt)


def convert(src: str, src_fmt: str, dst: str, dst_fmt: str) -> None:
    convert_spec(os.path.abspath(src), src_fmt, os.path.abspath(dst), dst_fmt)


def convert_spec(
    src: str,
    src_fmt: str,
    dst: str,
    dst_fmt: str,
    *,
    target_exists: bool = False,
    target_is_zero: bool = False,
) -> None:
    """``qemu-img convert`` between filenames or protocol specs (``rbd:pool/image:...``), taken
    as given. ``target_exists``: write into an existing image (``-n``) instead of creating one;
    its zeroed areas are then zeroed there too (unmapped where the target can), unless
    ``target_is_zero`` says the target reads as zeroes already (a new thin volume): then they
    are skipped, so nothing is allocated for them."""
    argv = ["qemu-img", "convert", "-f", src_fmt, "-O", dst_fmt]
    if target_exists:
        argv.append("-n")
        if target_is_zero:
            argv.append("--target-is-zero")
    _convert([*argv, src, dst], src, src_fmt)


_PERCENT = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")


def _convert(argv: list[str], src: str, src_fmt: str) -> None:
    """Run the ``qemu-img convert`` command ``argv``; with ``-p``, reporting, while a progress
    callback listens."""
    total = _virtual_size(src, src_fmt) if progress.active() else None
    if total is None:  # nobody listens, or percentages of an unknown size
        runner.run(argv, timeout=3600.0)
        return
    meter = progress.meter("convert", total)
    pending = ""

    def seen(text: str) -> None:
        nonlocal pending
        pending += text
        found = _PERCENT.findall(pending)
        pending = pending[pending.rfind(")") + 1 :]
        if found:
            meter.update(min(total, int(total * float(found[-1]) / 100)))

    runner.run([*argv[:2], "-p", *argv[2:]], timeout=3600.0, on_output=seen)
    meter.finish(total)


def _virtual_size(src: str, fmt: str) -> int | None:
    """The virtual size of the image ``src`` (a path: a file or a block device), read without a
    process where it can be; None for a protocol spec (``rbd:...``) or when it cannot be read."""
    if not os.path.isabs(src) or not os.path.exists(src):
        return None
    try:
        if fmt == "raw":
            fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.lseek(fd, 0, os.SEEK_END)  # a block device's st_size is 0
            finally:
                os.close(fd)
        if fmt == "qcow2":
            return read_qcow2_header(src)[0]
        return int(info(src, fmt)["virtual-size"])
    except (OSError, BackendError, KeyError, ValueError):
        return None


def info(path: str, fmt: str, *, timeout: float = 300.0, untrusted: bool = False) -> dict[str, Any]:
    """``qemu-img info`` as a dict; ``--force-share`` so a disk in use can still be looked at;
    under resource limits when the image is ``untrusted``."""
    argv = ["qemu-img", "info", "-f", fmt, "--output=json", "--force-share", os.path.abspath(path)]
    out = runner.run(argv, timeout=timeout, untrusted=untrusted)
    try:
        result = json.loads(out)
    except ValueError as exc:
        raise BackendError("qemu-img info printed no JSON", command=argv) from exc
    if not isinstance(result, dict):
        raise BackendError("qemu-img info printed no JSON object", command=argv)
    return result


# `qemu-img snapshot` takes no -f in 7.2: the format is pinned through --image-opts instead.
def snapshot_create(path: str, name: str, *, luks: Luks | None = None) -> None:
    _snapshot("-c", path, name, luks)


def snapshot_apply(path: str, name: str, *, luks: Luks | None = None) -> None:
    _snapshot("-a", path, name, luks)


def snapshot_delete(path: str, name: str, *, luks: Luks | None = None) -> None:
    _snapshot("-d", path, name, luks)


def _snapshot(action: str, path: str, name: str, luks: Luks | None) -> None:
    # An encrypted image opens only with its key, even to change its snapshot table.
    secret = luks.object_args() if luks is not None else []
    image = luks.image_opts(path) if luks is not None else _image_opts(path)
    runner.run(["qemu-img", "snapshot", *secret, "--image-opts", action, name, image])


def snapshot_list(path: str) -> tuple[Qcow2Snapshot, ...]:
    """The internal snapshots of our own qcow2 file at ``path``, read from its snapshot table."""
    with _open(path) as f:
        return _read_snapshots(f, path, _read_header(f, path))


def read_qcow2_header(path: str) -> tuple[int, str | None]:
    """``(virtual size, backing file name or None)`` of our own qcow2 file, without a process."""
    with _open(path) as f:
        header = _read_header(f, path)
        return header.size, _read_backing(f, path, header)


def observe(artifact: Artifact, fmt: str | None) -> Observation:
    """Observe a FILE artifact. ``fmt`` is the format this backend wrote it in, or ``None`` when
    the file's format is not known to the caller (only existence and allocation are reported)."""
    st = files.stat(artifact.location)
    if st is None:
        return Observation(artifact, exists=False)
    allocated = st.st_blocks * 512
    if fmt is None:
        return Observation(artifact, exists=True, allocated=allocated)
    if fmt == "raw":
        return Observation(artifact, True, "raw", st.st_size, allocated)
    if fmt == "qcow2":
        with _open(artifact.location) as f:
            header = _read_header(f, artifact.location)
            backing = _read_backing(f, artifact.location, header)
            snapshots = _read_snapshots(f, artifact.location, header)
        names = tuple(s.name for s in snapshots)
        return Observation(artifact, True, "qcow2", header.size, allocated, backing, names)
    data = info(artifact.location, fmt)
    return Observation(
        artifact,
        exists=True,
        format=fmt,
        size=int(data["virtual-size"]),
        allocated=allocated,
        backing=data.get("backing-filename"),
        snapshots=tuple(s["name"] for s in data.get("snapshots", ())),
    )


def _image_opts(path: str) -> str:
    # A comma ends an option value in image-opts syntax; doubled, it is a literal comma.
    return "driver=qcow2,file.filename=" + os.path.abspath(path).replace(",", ",,")


def _open(path: str) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise StorageIOError(f"cannot open {path}: {exc.strerror}", errno=exc.errno) from exc


def _read_exact(f: BinaryIO, path: str, offset: int, size: int) -> bytes:
    try:
        f.seek(offset)
        data = f.read(size)
    except OSError as exc:
        raise StorageIOError(f"cannot read {path}: {exc.strerror}", errno=exc.errno) from exc
    if len(data) != size:
        raise BackendError(f"{path}: truncated qcow2 image")
    return data


def _read_header(f: BinaryIO, path: str) -> _Header:
    header = _Header._make(_HEADER.unpack(_read_exact(f, path, 0, _HEADER.size)))
    if header.magic != QCOW2_MAGIC or header.version not in (2, 3):
        raise BackendError(f"{path}: not a qcow2 image of version 2 or 3")
    return header


def _read_backing(f: BinaryIO, path: str, header: _Header) -> str | None:
    offset, size = header.backing_offset, header.backing_size
    if offset == 0:
        return None
    if size > _MAX_BACKING_NAME:
        raise BackendError(f"{path}: qcow2 backing file name too long")
    return _read_exact(f, path, offset, size).decode("utf-8", errors="surrogateescape")


def _read_snapshots(f: BinaryIO, path: str, header: _Header) -> tuple[Qcow2Snapshot, ...]:
    count, offset = header.snapshot_count, header.snapshots_offset
    if count > _MAX_SNAPSHOTS:
        raise BackendError(f"{path}: too many qcow2 snapshots")
    snapshots = []
    for _ in range(count):
        entry = _SNAPSHOT.unpack(_read_exact(f, path, offset, _SNAPSHOT.size))
        id_size, name_size, extra_size = entry[2], entry[3], entry[8]
        start = offset + _SNAPSHOT.size + extra_size
        text = _read_exact(f, path, start, id_size + name_size)
        snapshots.append(
            Qcow2Snapshot(
                id=text[:id_size].decode("utf-8", errors="surrogateescape"),
                name=text[id_size:].decode("utf-8", errors="surrogateescape"),
            )
        )
        end = start + id_size + name_size
        offset = end + (-(end - offset) % 8)
    return tuple(snapshots)
