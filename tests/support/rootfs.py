"""A real OS for libvirt domains: a bootable ext4 root filesystem image, booted from a diskledger
disk, whose init reports the sizes of the disks the guest has.

``build()`` makes, once per recipe into the guest cache (``tests/support/guest.py``'s
``/var/cache/diskledger-guest``, as ``rootfs-<recipe hash>``), three things from Debian packages
unpacked with ``dpkg-deb -x`` (the guest's way: nothing installed here, no chroot, no loop
mount):

- ``vmlinuz``: Debian's cloud kernel, the guest's. ext4 is built in; virtio (``virtio_pci``,
  ``virtio_blk``) is not;
- ``initrd.cpio``: a small initramfs (busybox and those virtio modules) whose ``/init`` loads
  them, mounts ``root=`` from the kernel command line and ``switch_root``s into its
  ``/sbin/init``;
- ``root.raw`` (and ``root.qcow2``): a 64 MiB ext4 filesystem made by ``mke2fs -d`` from a
  directory: busybox and e2fsprogs, ``/etc/diskledger-rootfs`` (the recipe hash) and ``/sbin/init``.

That init (``ROOT_INIT``) reports on the second serial port, one line each,
``@@REPORT <nonce> root=<root device> os=<recipe hash> vda=<sectors> [vdb=...] rootfs=<bytes>@@``:
the root device as ``/proc/mounts`` names it, every virtio disk's size from ``/sys/block/vd*/size``
(512-byte sectors, as the guest's kernel sees it now) and the size of the root filesystem. It
reports once when it starts (nonce ``boot``) and then once for every request line that arrives,
``<nonce> sizes`` or ``<nonce> grow <dev>`` (``resize2fs /dev/<dev>`` first: the mounted root
filesystem grows into a disk that grew). A request answered carries its nonce back, so an answer
is never mistaken for an older one.

``RealGuest`` boots it as a transient libvirt domain of ``type='qemu'`` (TCG: a KVM domain cannot
boot Linux on these machines, see docs/libvirt.md) with direct kernel boot (``<kernel>``,
``<initrd>``, ``<cmdline>root=/dev/vda ...``) and the ``<disk>`` elements it is given, its console
(ttyS0) in a file and the report line (ttyS1) on a unix socket.

Run by hand: ``python -m tests.support.rootfs build``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.guest import (
    DROP,
    GUEST_CACHE,
    KERNEL_ARGS,
    KERNEL_PACKAGE,
    GuestUnavailable,
    _closure,
    _download,
    _kernel_package,
    _locked,
    _module_order,
    _run,
)

if TYPE_CHECKING:
    import libvirt

__all__ = [
    "IMAGE_SIZE",
    "RealGuest",
    "Report",
    "RootImage",
    "build",
    "domain_xml",
]

RECIPE = 1
"""Bump when the way the image is made changes: the cache key includes it."""
USERLAND = ("busybox-static", "e2fsprogs")
"""The root filesystem's packages (and what they depend on): a shell and its tools, and
``resize2fs`` to grow the mounted root filesystem."""
INITRD_MODULES = ("virtio_pci", "virtio_blk")
"""What the cloud kernel needs to see a virtio disk (ext4 and crc32c are built in)."""
IMAGE_SIZE = 64 << 20
HOST_TOOLS = {"mke2fs": "e2fsprogs", "qemu-img": "qemu-utils", "apt-get": "apt"}
ROOT_ARGS = f"{KERNEL_ARGS} root=/dev/vda"

INITRD_INIT = r"""#!/bin/sh
# /init of the real-OS initramfs (tests/support/rootfs.py): virtio, then the root disk.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() { echo "initramfs: $*"; poweroff -f; }
for m in $(cat /etc/modules); do insmod "/lib/modules/$m" || fail "insmod $m"; done
root=
for arg in $(cat /proc/cmdline); do
    case "$arg" in root=*) root=${arg#root=} ;; esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"
i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ "$i" -le 300 ] || fail "$root did not appear"
    usleep 20000
done
mkdir -p /newroot
mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root"
for fs in dev proc sys; do mount --move "/$fs" "/newroot/$fs"; done
exec switch_root /newroot /sbin/init
"""

ROOT_INIT = r"""#!/bin/sh
# PID 1 of the real-OS guest (tests/support/rootfs.py), from its root disk. Reports the sizes
# of its disks on ttyS1: once at start, then once per request line "<nonce> sizes|grow <dev>".
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
report() {
    root=
    while read -r dev mnt rest; do [ "$mnt" = / ] && root=$dev; done </proc/mounts
    line="@@REPORT $1 root=$root os=$(cat /etc/diskledger-rootfs)"
    for b in /sys/block/vd*; do line="$line ${b##*/}=$(cat "$b/size")"; done
    set -- $(stat -f -c '%b %S' /)
    echo "$line rootfs=$(($1 * $2))@@" >&3
}
exec 3<>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo
report boot
while read -r nonce verb arg <&3; do
    [ -n "$nonce" ] || continue
    case "$verb" in
        grow) resize2fs "/dev/$arg" </dev/null >/dev/console 2>&1 ;;
    esac
    report "$nonce"
done
poweroff -f
"""


@dataclass(frozen=True)
class RootImage:
    kernel: Path
    initrd: Path
    raw: Path
    qcow2: Path
    kernel_version: str
    recipe: str
    """The recipe hash, also in the image at ``/etc/diskledger-rootfs``: the guest reports it."""

    def image(self, fmt: str) -> Path:
        return self.raw if fmt == "raw" else self.qcow2


def _key() -> str:
    recipe = "\n".join(
        [
            str(RECIPE),
            KERNEL_PACKAGE,
            *USERLAND,
            *INITRD_MODULES,
            *DROP,
            str(IMAGE_SIZE),
            INITRD_INIT,
            ROOT_INIT,
        ]
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _check_host() -> None:
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            raise GuestUnavailable(f"{tool} is missing (Debian package {package})")


def build(cache: Path = GUEST_CACHE) -> RootImage:
    """The kernel, initramfs and root image, made once per recipe into ``cache`` (a few s)."""
    _check_host()
    key = _key()
    target = cache / f"rootfs-{key}"
    with _locked(cache / ".rootfs.lock"):
        if not (target / "image.txt").exists():
            work = Path(tempfile.mkdtemp(dir=cache, prefix=".rootfs-build-"))
            try:
                _make(work, key)
                (work / "image.txt").write_text((work / "version").read_text())
                if target.exists():
                    shutil.rmtree(target)  # a build that stopped half-way
                work.rename(target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    version = (target / "image.txt").read_text().strip()
    return RootImage(
        kernel=target / "vmlinuz",
        initrd=target / "initrd.cpio",
        raw=target / "root.raw",
        qcow2=target / "root.qcow2",
        kernel_version=version,
        recipe=key,
    )


def _make(work: Path, key: str) -> None:
    kernel, root, initrd = work / "kernel", work / "root", work / "initrd"
    for deb in _download([_kernel_package()], work / "kernel-deb"):
        _run(["dpkg-deb", "-x", str(deb), str(kernel)])
    for deb in _download(_closure(USERLAND, work / "empty-status"), work / "debs"):
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    for drop in DROP:
        shutil.rmtree(root / drop, ignore_errors=True)
    (version,) = [p.name for p in (kernel / "lib/modules").iterdir()]
    busybox = root / "bin/busybox"

    # The initramfs: busybox, the virtio modules (their dependencies first), /init.
    _run([str(busybox), "depmod", "-b", str(kernel), version])
    modules = _module_order(kernel, version, INITRD_MODULES)
    (initrd / "bin").mkdir(parents=True)
    (initrd / "etc").mkdir()
    shutil.copy2(busybox, initrd / "bin/busybox")
    for applet in ("sh", "mount", "insmod", "switch_root", "usleep", "mkdir", "cat", "poweroff"):
        (initrd / "bin" / applet).symlink_to("busybox")
    for module in modules:
        into = initrd / "lib/modules" / module
        into.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kernel / "lib/modules" / version / module, into)
    (initrd / "etc/modules").write_text("\n".join(modules) + "\n")
    (initrd / "init").write_text(INITRD_INIT)
    (initrd / "init").chmod(0o755)
    for directory in ("proc", "sys", "dev", "newroot"):
        (initrd / directory).mkdir()
    _cpio(busybox, initrd, work / "initrd.cpio")

    # The root filesystem: the userland, /sbin/init (before busybox's links: not its init).
    (root / "sbin").mkdir(exist_ok=True)
    init = root / "sbin/init"
    init.unlink(missing_ok=True)
    init.write_text(ROOT_INIT)
    init.chmod(0o755)
    for applet in _run([str(busybox), "--list-full"]).split():
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/diskledger-rootfs").write_text(key + "\n")
    for directory in ("proc", "sys", "dev", "tmp", "run", "root"):
        (root / directory).mkdir(exist_ok=True)
    image = work / "root.raw"
    _run(
        [
            "mke2fs", "-q", "-F", "-t", "ext4", "-L", "diskledger-root", "-E", "root_owner=0:0",
            "-d", str(root), str(image), f"{IMAGE_SIZE // 1024}k",
        ]
    )  # fmt: skip
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image), str(work / "root.qcow2")])
    shutil.copy2(kernel / "boot" / f"vmlinuz-{version}", work / "vmlinuz")
    (work / "version").write_text(version + "\n")
    for scratch in (kernel, root, initrd, work / "kernel-deb", work / "debs"):
        shutil.rmtree(scratch)
    (work / "empty-status").unlink()


def _cpio(busybox: Path, tree: Path, into: Path) -> None:
    files = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
    with into.open("wb") as out:
        subprocess.run(
            [str(busybox), "cpio", "-o", "-H", "newc"], cwd=tree, input=files, stdout=out,
            stderr=subprocess.DEVNULL, check=True,
        )  # fmt: skip


# -- booting it in libvirt ---------------------------------------------------------------------

_DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mb}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
{disks}
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path='{channel}'/>
      <target port='1'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>"""


def domain_xml(
    name: str,
    *,
    kernel: Path,
    initrd: Path,
    disks: Sequence[str],
    console: Path,
    channel: Path,
    memory_mb: int = 256,
) -> str:
    """A domain of ``type='qemu'`` that boots ``kernel`` with ``root=/dev/vda`` and has the
    ``<disk>`` elements ``disks`` (as ``diskledger disk xml`` printed them)."""
    return _DOMAIN_XML.format(
        name=name,
        memory_mb=memory_mb,
        kernel=kernel,
        initrd=initrd,
        cmdline=ROOT_ARGS,
        disks="\n".join(disks),
        console=console,
        channel=channel,
    )


@dataclass(frozen=True)
class Report:
    """One report line of the guest: its root device, the recipe of the filesystem it booted,
    every virtio disk's size in 512-byte sectors, and its root filesystem's size in bytes."""

    nonce: str
    root: str
    os: str
    sectors: dict[str, int]
    rootfs: int

    def bytes(self, dev: str) -> int:
        return self.sectors[dev] * 512


_REPORT = re.compile(rb"@@REPORT (\S+) ([^@\r\n]*)@@")


def _parse(nonce: bytes, fields: bytes) -> Report:
    values = dict(item.split("=", 1) for item in fields.decode().split())
    return Report(
        nonce=nonce.decode(),
        root=values.pop("root"),
        os=values.pop("os"),
        rootfs=int(values.pop("rootfs")),
        sectors={dev: int(size) for dev, size in values.items()},
    )


@dataclass
class RealGuest:
    """A transient ``type='qemu'`` domain booting the root image from the given disks (the first
    is ``vda``, the root); ``stop()`` destroys it. Files (a copy of the kernel and initramfs
    that qemu may read, the console log, the channel socket) go in ``work_dir``, which qemu
    (libvirt-qemu) must be able to traverse."""

    conn: libvirt.virConnect
    image: RootImage
    disks: Sequence[str]
    work_dir: Path
    boot_timeout: float = 120.0
    name: str = field(default_factory=lambda: f"diskledger-test-{uuid.uuid4().hex[:8]}")
    dom: libvirt.virDomain | None = field(default=None, init=False, repr=False)
    booted_in: float | None = field(default=None, init=False)
    """Seconds from the domain's start to its first report."""
    _channel: socket.socket | None = field(default=None, init=False, repr=False)
    _buffer: bytes = field(default=b"", init=False, repr=False)

    @property
    def console_log(self) -> Path:
        return self.work_dir / f"{self.name}.console.log"

    def start(self) -> Report:
        """Boot the domain and wait for the guest's first report."""
        kernel, initrd = self.work_dir / "vmlinuz", self.work_dir / "initrd.cpio"
        for source, copy in ((self.image.kernel, kernel), (self.image.initrd, initrd)):
            if not copy.exists():
                shutil.copyfile(source, copy)
                copy.chmod(0o644)
        channel = self.work_dir / f"{self.name}.sock"
        self.console_log.touch()
        xml = domain_xml(
            self.name,
            kernel=kernel,
            initrd=initrd,
            disks=self.disks,
            console=self.console_log,
            channel=channel,
        )
        started = time.monotonic()
        self.dom = self.conn.createXML(xml, 0)
        self._channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._channel.connect(str(channel))
        nonces = [b"boot"]
        deadline = started + self.boot_timeout
        while True:
            # The guest reports when its init starts (this end is connected long before); should
            # that line have been missed, every request that reaches it is answered too.
            found = self._read(re.compile(rb"@@REPORT (" + b"|".join(nonces) + rb") "), 10.0)
            if found is not None:
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no report from the guest within {self.boot_timeout:g} s:\n{self.console()}"
                )
            nonces.append(self._request("sizes"))
        self.booted_in = time.monotonic() - started
        return self._take(found.start())

    def ask(self, verb: str = "sizes", arg: str = "", timeout: float = 60.0) -> Report:
        """Send a request and return the guest's answer to it."""
        nonce = self._request(verb, arg)
        found = self._read(re.compile(rb"@@REPORT " + nonce + rb" "), timeout)
        if found is None:
            raise AssertionError(
                f"no answer from the guest within {timeout:g} s:\n{self.console()}"
            )
        return self._take(found.start())

    def wait_for(
        self, condition: Callable[[Report], bool], timeout: float = 30.0, poll: float = 0.2
    ) -> Report:
        """Ask again until an answer meets ``condition``; the last answer if none did within
        ``timeout`` (the caller's assertion then shows what the guest saw)."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.ask(timeout=max(1.0, deadline - time.monotonic()))
            if condition(report) or time.monotonic() > deadline:
                return report
            time.sleep(poll)

    def console(self) -> str:
        if not self.console_log.exists():
            return "(no console log)"
        return self.console_log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """Destroy the domain (if it still runs) and close the channel."""
        import libvirt

        if self._channel is not None:
            self._channel.close()
            self._channel = None
        dom, self.dom = self.dom, None
        if dom is not None:
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (
                    libvirt.VIR_ERR_NO_DOMAIN,
                    libvirt.VIR_ERR_OPERATION_INVALID,
                ):
                    raise

    def _request(self, verb: str, arg: str = "") -> bytes:
        assert self._channel is not None
        nonce = secrets.token_hex(6)
        self._channel.sendall(f"{nonce} {verb} {arg}".rstrip().encode() + b"\n")
        return nonce.encode()

    def _take(self, start: int) -> Report:
        found = _REPORT.match(self._buffer, start)
        assert found is not None
        self._buffer = self._buffer[found.end() :]
        return _parse(found.group(1), found.group(2))

    def _read(self, wanted: re.Pattern[bytes], timeout: float) -> re.Match[bytes] | None:
        """Read until a whole report line whose start matches ``wanted`` is in the buffer."""
        assert self._channel is not None
        deadline = time.monotonic() + timeout
        while True:
            for found in _REPORT.finditer(self._buffer):
                if wanted.match(self._buffer, found.start()):
                    return found
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._channel.settimeout(min(left, 1.0))
            try:
                chunk = self._channel.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(
                    f"the guest's channel closed (domain gone?):\n{self.console()}"
                )
            self._buffer += chunk


def main(argv: Sequence[str]) -> int:
    if argv[:1] != ["build"]:
        print("usage: python -m tests.support.rootfs build", file=sys.stderr)
        return 2
    started = time.monotonic()
    image = build()
    print(
        f"root image: {image.raw.parent} (kernel {image.kernel_version}, "
        f"{time.monotonic() - started:.1f} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
