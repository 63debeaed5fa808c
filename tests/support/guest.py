"""A throw-away Linux guest as a test host for what this machine's kernel lacks (device-mapper:
LVM, dm-crypt, dm-log-writes).

The guest is Debian's cloud kernel and an initramfs made of Debian packages unpacked with
``dpkg-deb -x`` (busybox, lvm2, thin-provisioning-tools, cryptsetup, e2fsprogs, qemu-utils,
python3): nothing is installed on this machine and nothing needs a chroot. ``build()`` makes it
once into a cache directory keyed by the recipe (``RECIPE`` and the package lists), under a lock,
in about 20 s; later runs reuse it.

``Guest`` boots it with ``qemu-system-x86_64`` under plain emulation (TCG: this machine's
``/dev/kvm`` cannot boot a stock Linux kernel) and keeps it running, so one boot serves many
checks. There is no network in the guest. Commands go in and their output and exit status come
back over the second serial port (a unix socket here)::

    with Guest(image, disks=[GuestDisk(path, serial="pv0")]) as guest:
        done = guest.run("lvm version")
        assert done.rc == 0, done.output

Disks appear in the guest as ``/dev/disk/by-serial/<serial>``. ``payload=DIR`` attaches a
read-only disk made from a directory (``mkfs.ext4 -d``), mounted at ``/payload``: that is how
diskledger and its dependencies reach the guest (``python_payload()``).

Run by hand: ``python -m tests.support.guest build`` and ``python -m tests.support.guest run
'lvm version'``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "GUEST_CACHE",
    "Guest",
    "GuestDisk",
    "GuestError",
    "GuestImage",
    "GuestResult",
    "GuestUnavailable",
    "build",
    "python_payload",
]

RECIPE = 1
"""Bump when the way the image is made changes: the cache key includes it."""
KERNEL_PACKAGE = "linux-image-cloud-amd64"
"""Has dm_mod, dm_snapshot, dm_thin_pool, dm_crypt, dm_flakey, dm_log_writes as modules; ext4
built in; smaller and faster to boot than the generic flavour (no 9p, which is not needed)."""
USERLAND = (
    "busybox-static",
    "coreutils",
    "util-linux",
    "lvm2",
    "thin-provisioning-tools",
    "dmsetup",
    "cryptsetup-bin",
    "e2fsprogs",
    "qemu-utils",
    "python3",
)
BOOT_MODULES = ("virtio_pci", "virtio_blk", "dm_mod", "dm_snapshot", "dm_thin_pool", "dm_crypt")
"""Loaded at boot; others (dm_flakey, dm_log_writes, ...) load on demand through modprobe."""
MODULE_DIRS = (
    "kernel/drivers/md",
    "kernel/drivers/virtio",
    "kernel/drivers/block",
    "kernel/drivers/char",
    "kernel/crypto",
    "kernel/arch/x86/crypto",
    "kernel/lib",
)
DROP = (
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/tkinter",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "usr/share/lintian",
    "usr/lib/x86_64-linux-gnu/gconv",
)
KERNEL_ARGS = (
    "console=ttyS0 panic=-1 quiet loglevel=4 tsc=reliable mitigations=off 8250.nr_uarts=2 "
    "cryptomgr.notests initcall_blacklist=crypto_kdf108_init"
)
"""The crypto self-tests cost 1.5-2.4 s of every boot under emulation."""
GUEST_CACHE = Path(os.environ.get("DISKLEDGER_GUEST_CACHE", "/var/cache/diskledger-guest"))
HOST_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "mkfs.ext4": "e2fsprogs", "apt-get": "apt"}
READY = "@@GUEST-READY@@"


class GuestUnavailable(RuntimeError):
    """The guest cannot be built or booted here (a tool or a package is missing)."""


class GuestError(RuntimeError):
    """The guest misbehaved: it died, or a command outlived its timeout. ``output``: what the
    command had written until then."""

    output: str = ""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str

    @property
    def directory(self) -> Path:
        return self.initrd.parent


@dataclass(frozen=True)
class GuestDisk:
    path: Path
    serial: str
    format: str = "raw"
    readonly: bool = False


@dataclass(frozen=True)
class GuestResult:
    rc: int
    output: str

    def check(self) -> str:
        if self.rc != 0:
            raise GuestError(f"guest command failed (rc {self.rc}):\n{self.output}")
        return self.output


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise GuestUnavailable(f"{' '.join(argv[:3])} ...: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _check_host() -> None:
    for tool, package in HOST_TOOLS.items():
        if shutil.which(tool) is None:
            raise GuestUnavailable(f"{tool} is missing (Debian package {package})")


def _closure(packages: Sequence[str], status: Path) -> list[str]:
    """The packages an empty Debian system would install for ``packages`` (apt picks the
    alternatives), without recommends."""
    status.write_text("")
    out = _run(
        [
            "apt-get",
            "-s",
            "-o",
            f"Dir::State::status={status}",
            "-o",
            "APT::Install-Recommends=0",
            "install",
            *packages,
        ]
    )
    return sorted({line.split()[1] for line in out.splitlines() if line.startswith("Inst ")})


def _download(packages: Sequence[str], into: Path) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *packages], cwd=into)
    return sorted(into.glob("*.deb"))


def _kernel_package() -> str:
    policy = _run(["apt-cache", "policy", KERNEL_PACKAGE])
    if not policy.strip() or "Candidate: (none)" in policy:
        _run(["apt-get", "update", "-qq"])  # a fresh machine whose package lists were cleaned
    out = _run(["apt-cache", "depends", KERNEL_PACKAGE])
    found = re.search(r"Depends: (linux-image-[0-9][^\s]*)", out)
    if found is None:
        raise GuestUnavailable(f"cannot tell which kernel {KERNEL_PACKAGE} depends on")
    return found.group(1)


def _module_order(root: Path, version: str, wanted: Sequence[str]) -> list[str]:
    """``wanted`` and their dependencies, dependencies first, as paths under the modules dir."""
    deps: dict[str, list[str]] = {}
    for line in (root / "lib/modules" / version / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    by_name = {Path(m).name.split(".")[0].replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(module: str) -> None:
        if module in order:
            return
        for dep in deps[module]:
            visit(dep)
        order.append(module)

    for name in wanted:
        if name in by_name:  # built in otherwise
            visit(by_name[name])
    return order


INIT = r"""#!/bin/busybox sh
# PID 1 of the test guest (tests/support/guest.py): set up, then run the commands that arrive on
# the second serial port, one line each: "<nonce> <base64 script>".
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp /run/lock /payload /dev/disk/by-serial
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/lock /run/lvm /run/cryptsetup
echo /sbin/modprobe > /proc/sys/kernel/modprobe
for m in $(cat /etc/guest/modules); do insmod "/lib/modules/$(uname -r)/$m"; done
for b in /sys/block/vd*; do
    s=$(cat "$b/serial" 2>/dev/null) && [ -n "$s" ] && ln -sf "/dev/${b##*/}" "/dev/disk/by-serial/$s"
done
[ -e /dev/disk/by-serial/payload ] && mount -o ro /dev/disk/by-serial/payload /payload
exec 3<>/dev/ttyS1
stty -F /dev/ttyS1 raw -echo
echo "@@GUEST-READY@@" >&3
while IFS=' ' read -r nonce script <&3; do
    [ -n "$nonce" ] || continue
    echo "$script" | base64 -d > /tmp/job.sh
    (cd /tmp && sh /tmp/job.sh) </dev/null >&3 2>&3 3>&-
    printf '\n@@%s:%d@@\n' "$nonce" "$?" >&3
done
echo o > /proc/sysrq-trigger
"""

LVM_LOCAL = """\
# No udev and no dmeventd in the test guest: LVM makes its /dev nodes itself.
devices { obtain_device_list_from_udev = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
"""


def _key() -> str:
    recipe = "\n".join([str(RECIPE), KERNEL_PACKAGE, *USERLAND, *BOOT_MODULES, INIT, LVM_LOCAL])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(cache: Path = GUEST_CACHE) -> GuestImage:
    """The guest's kernel and initramfs, made once per recipe into ``cache`` (about 20 s)."""
    _check_host()
    target = cache / f"recipe-{_key()}"
    with _locked(cache / ".lock"):
        done = target / "image.txt"
        if done.exists():
            return _image(target)
        work = Path(tempfile.mkdtemp(dir=cache, prefix=".build-"))
        try:
            _make(work)
            (work / "image.txt").write_text((work / "version").read_text())
            if target.exists():
                shutil.rmtree(target)  # a build that stopped half-way
            work.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return _image(target)


def _image(target: Path) -> GuestImage:
    version = (target / "image.txt").read_text().strip()
    return GuestImage(target / "vmlinuz", target / "initrd.cpio", version)


def _make(work: Path) -> None:
    debs, root = work / "debs", work / "root"
    kernel_deb = _download([_kernel_package()], work / "kernel-deb")
    kernel = work / "kernel"
    for deb in kernel_deb:
        _run(["dpkg-deb", "-x", str(deb), str(kernel)])
    packages = _closure(USERLAND, work / "empty-status")
    for deb in _download(packages, debs):
        _run(["dpkg-deb", "-x", str(deb), str(root)])
    for drop in DROP:
        shutil.rmtree(root / drop, ignore_errors=True)
    (version,) = [p.name for p in (kernel / "lib/modules").iterdir()]
    busybox = root / "bin/busybox"
    # Only the modules the tests can need: the whole tree would triple the initramfs.
    modules = root / "lib/modules" / version
    for sub in MODULE_DIRS:
        source = kernel / "lib/modules" / version / sub
        if source.exists():
            shutil.copytree(source, modules / sub, dirs_exist_ok=True)
    for name in ("modules.builtin", "modules.order", "modules.builtin.modinfo"):
        if (kernel / "lib/modules" / version / name).exists():
            shutil.copy2(kernel / "lib/modules" / version / name, modules / name)
    _run([str(busybox), "depmod", "-b", str(root), version])
    (root / "etc/guest").mkdir(parents=True, exist_ok=True)
    (root / "etc/guest/modules").write_text(
        "\n".join(_module_order(root, version, BOOT_MODULES)) + "\n"
    )
    (root / "etc/lvm").mkdir(parents=True, exist_ok=True)
    (root / "etc/lvm/lvmlocal.conf").write_text(LVM_LOCAL)
    for applet in _run([str(busybox), "--list-full"]).split():
        link = root / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    for directory in ("proc", "sys", "dev", "run", "tmp", "root", "payload"):
        (root / directory).mkdir(exist_ok=True)
    files = subprocess.run(
        ["find", "."], cwd=root, capture_output=True, check=True
    ).stdout  # fmt: skip
    with (work / "initrd.cpio").open("wb") as out:
        subprocess.run(
            [str(busybox), "cpio", "-o", "-H", "newc"], cwd=root, input=files, stdout=out,
            stderr=subprocess.DEVNULL, check=True,
        )  # fmt: skip
    shutil.copy2(kernel / "boot" / f"vmlinuz-{version}", work / "vmlinuz")
    (work / "version").write_text(version + "\n")
    for scratch in (debs, root, kernel, work / "kernel-deb"):
        shutil.rmtree(scratch)


_SYSTEM_IMPORTS = """
import importlib, pkgutil, sys
import diskledger, pytest, hypothesis
# diskledger imports much on first use: every module of it, and what those import on first use.
for info in pkgutil.walk_packages(diskledger.__path__, "diskledger."):
    if not info.name.endswith("__main__") and ".migrations" not in info.name:
        importlib.import_module(info.name)
from oslo_utils.imageutils import format_inspector
seen = set()
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None) or ""
    if path.startswith("/usr/lib/python3/dist-packages/"):
        top = path.split("/")[5]
        seen.add("/usr/lib/python3/dist-packages/" + top)
print("\\n".join(sorted(seen)))
"""
"""Prints what of Debian's own Python packages diskledger and its tests import."""
PAYLOAD_SKIP = {"pip", "setuptools", "mypy", "mypyc", "_distutils_hack"}
"""Not needed in the guest (pytest 9 imports pygments at start-up: it must go along)."""


def python_payload(repo: Path, into: Path) -> Path:
    """A directory with diskledger (``repo``'s) and the site-packages of the Python running this,
    for ``Guest(payload=...)``: the guest's python3 (Debian 12's, like this machine's) runs it
    with ``PYTHONPATH=/payload/src:/payload/site``."""
    site = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    # The venv sees Debian's packages too (--system-site-packages): those diskledger imports
    # from there (cryptography, for one) go along.
    imported = subprocess.run(
        [sys.executable, "-c", _SYSTEM_IMPORTS],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for path in map(Path, imported):
        target = into / "site" / path.name
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True, symlinks=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    shutil.copytree(repo / "diskledger", into / "src" / "diskledger", dirs_exist_ok=True)
    for entry in site.iterdir():
        name = entry.name.split("-")[0].split(".")[0]
        if name in PAYLOAD_SKIP or entry.name.endswith(".pth") or "__mypyc" in entry.name:
            continue
        if entry.is_dir():
            shutil.copytree(entry, into / "site" / entry.name, dirs_exist_ok=True, symlinks=True)
        else:
            (into / "site").mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry, into / "site" / entry.name)
    # The payload disk is read-only: without bytecode made here (the same Python 3.11 as the
    # guest's) every start in the guest compiles everything again, 3 s under emulation.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", str(into)],
        check=False, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return into


@dataclass
class Guest:
    """One running guest: ``start()`` boots it (5-8 s), ``run()`` runs a shell script in it,
    ``stop()`` powers it off (or kills its QEMU, by pid). A context manager does both."""

    image: GuestImage
    disks: Sequence[GuestDisk] = ()
    payload: Path | None = None
    memory_mb: int = 1024
    cpus: int = 1
    """Virtual CPUs, one host thread each (``tcg,thread=multi``): 2 lets two in-guest runs go
    side by side on this machine's two cores; an idle one costs nothing."""
    work_dir: Path | None = None
    boot_timeout: float = 120.0
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _channel: socket.socket | None = field(default=None, init=False, repr=False)
    _buffer: bytes = field(default=b"", init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False, repr=False)

    @property
    def console_log(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir / "console.log"

    @property
    def qmp_socket(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir / "qmp.sock"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.work_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="diskledger-guest-")
            self.work_dir = Path(self._tmp.name)
        disks = list(self.disks)
        if self.payload is not None:
            disks.append(GuestDisk(self._payload_image(self.payload), "payload", readonly=True))
        channel = self.work_dir / "channel.sock"
        argv = [
            "qemu-system-x86_64",
            "-accel", "tcg,thread=multi", "-cpu", "max", "-machine", "pc",
            "-m", str(self.memory_mb), "-smp", str(self.cpus),
            "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", KERNEL_ARGS,
            "-serial", f"file:{self.console_log}",
            "-chardev", f"socket,id=channel,path={channel},server=on,wait=off",
            "-serial", "chardev:channel",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
        ]  # fmt: skip
        for index, disk in enumerate(disks):
            drive = f"file={disk.path},if=none,id=d{index},format={disk.format},cache=none"
            if disk.readonly:
                drive += ",readonly=on"
            argv += [
                "-drive",
                drive,
                "-device",
                f"virtio-blk-pci,drive=d{index},serial={disk.serial}",
            ]
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._channel = self._connect(channel, deadline=time.monotonic() + 10)
        # Up to the newline after the marker: when the line comes in two reads (a loaded host),
        # a newline left behind would open the first command's output.
        ready = self._read_until(
            re.compile(re.escape(READY.encode()) + rb"\r?\n"), self.boot_timeout
        )
        self._buffer = self._buffer[ready.end() :]

    def _connect(self, channel: Path, deadline: float) -> socket.socket:
        # QEMU binds the socket before it listens: a connect in between is refused (seen on a
        # loaded host, where the clean-clone run of 3c8beb9 lost its session guest to it).
        while True:
            self._check_alive()
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(str(channel))
                return connection
            except (FileNotFoundError, ConnectionRefusedError):
                connection.close()
                if time.monotonic() > deadline:
                    raise GuestError("QEMU did not open its channel socket") from None
                time.sleep(0.05)

    def run(self, script: str, timeout: float = 300.0) -> GuestResult:
        """Run ``script`` with the guest's ``sh`` in ``/tmp``; its stdout and stderr together."""
        if self._channel is None:
            raise GuestError("the guest is not running")
        nonce = secrets.token_hex(8)
        line = f"{nonce} {base64.b64encode(script.encode()).decode()}\n"
        # The guest drains the serial line slowly: a long script must not meet the short
        # timeout the last read left on the socket.
        self._channel.settimeout(timeout)
        self._channel.sendall(line.encode())
        end = re.compile(rb"\n@@" + nonce.encode() + rb":(\d+)@@\n")
        try:
            found = self._read_until(end, timeout)
        except GuestError as exc:
            exc.output = self._buffer.decode(errors="replace")
            raise
        output = self._buffer[: found.start()]
        self._buffer = self._buffer[found.end() :]
        return GuestResult(int(found.group(1)), output.decode(errors="replace"))

    def output_so_far(self) -> str:
        """What the running command has written yet (for a caller watching from another
        thread)."""
        return self._buffer.decode(errors="replace")

    def kill(self) -> None:
        """Power cut: SIGKILL the guest's QEMU (by its pid) and wait for it."""
        if self._process is not None and self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            if self._channel is not None:
                with contextlib.suppress(OSError):
                    self._channel.sendall(
                        b"poweroff " + base64.b64encode(b"echo o > /proc/sysrq-trigger") + b"\n"
                    )
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.work_dir = None

    def _payload_image(self, directory: Path) -> Path:
        assert self.work_dir is not None
        size = sum(
            f.stat().st_size for f in directory.rglob("*") if f.is_file() and not f.is_symlink()
        )
        image = self.work_dir / "payload.img"
        mb = max(64, int(size * 1.4 / 2**20) + 64)
        _run(["mkfs.ext4", "-q", "-F", "-L", "payload", "-d", str(directory), str(image), f"{mb}M"])
        return image

    def _check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            err = (
                self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
            )
            console = (
                self.console_log.read_text(errors="replace")[-2000:]
                if self.console_log.exists()
                else ""
            )
            raise GuestError(f"QEMU exited ({self._process.returncode}): {err.strip()}\n{console}")

    def _read_until(self, marker: bytes | re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
        assert self._channel is not None
        pattern = marker if isinstance(marker, re.Pattern) else re.compile(re.escape(marker))
        deadline = time.monotonic() + timeout
        while (found := pattern.search(self._buffer)) is None:
            self._check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(
                    f"no answer from the guest within {timeout:g} s: {self._buffer[-500:]!r}"
                )
            self._channel.settimeout(min(left, 1.0))
            try:
                chunk = self._channel.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                self._check_alive()
                raise GuestError("the guest closed its channel")
            self._buffer += chunk
        return found


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in ("build", "run"):
        print("usage: python -m tests.support.guest build | run 'SCRIPT'", file=sys.stderr)
        return 2
    image = build()
    print(f"guest image: {image.directory} (kernel {image.kernel_version})", file=sys.stderr)
    if argv[0] == "build":
        return 0
    started = time.monotonic()
    with Guest(image) as guest:
        booted = time.monotonic()
        done = guest.run(" ".join(argv[1:]))
    print(done.output, end="")
    print(
        f"boot {booted - started:.1f} s, command {time.monotonic() - booted:.1f} s", file=sys.stderr
    )
    return done.rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
