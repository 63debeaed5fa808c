"""A real libvirtd at qemu:///system for tests that boot KVM domains, via scripts/libvirt-dev.sh.

``LibvirtDaemon`` uses the machine's libvirtd when one already answers at qemu:///system (and
then never stops it), or starts libvirtd and virtlogd as root with their pid files in a temporary
directory and stops exactly those. There is one qemu:///system per machine, so domains and
secrets are shared with whatever else runs there: ``Domains`` boots transient domains under
unique names (``diskledger-test-<8 hex>``) and its ``cleanup()`` destroys only what it booted
and undefines only the secrets it was told about.

``block_devices(dom)`` is qemu's own view of a running domain's disks (query-block on the QMP
monitor), keyed by the target device libvirt was given ("vda", "sda"): what the guest really
got, which is what a test of the engine's libvirt output should check rather than the XML.

File disks must be reachable by qemu, which runs as libvirt-qemu: every directory above the
image needs o+x (pytest's tmp dirs are 0700), hence the ``libvirt_root`` fixture under /var/tmp.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the bindings may be missing: then the fixtures skip, the import must not fail
    import libvirt

__all__ = [
    "URI",
    "BlockDevice",
    "Domains",
    "LibvirtDaemon",
    "LibvirtUnavailable",
    "binding",
    "block_devices",
]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "libvirt-dev.sh"
URI = "qemu:///system"
_UNAVAILABLE = 3  # libvirt-dev.sh's exit status for a missing component
_DAEMONS = ("libvirtd", "virtlogd", "virsh")
_SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"


def binding() -> ModuleType:
    """The libvirt module for a test module that uses it at import: without it the module is
    skipped, except under CI=true, where a missing component is a failure."""
    try:
        return importlib.import_module("libvirt")
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("python3-libvirt is not installed", allow_module_level=True)


class LibvirtUnavailable(RuntimeError):
    """libvirt, its Python bindings or KVM are not available here (skip outside CI)."""


class LibvirtDaemon:
    uri = URI

    def __init__(self, directory: str | None = None) -> None:
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="diskledger-libvirtd-"))
        self.started = False

    def start(self) -> None:
        try:
            import libvirt  # noqa: F401
            import libvirt_qemu  # noqa: F401
        except ImportError as exc:
            raise LibvirtUnavailable(
                f"the libvirt Python bindings are not importable ({exc}; Debian package "
                "python3-libvirt, scripts/bootstrap.sh installs it)"
            ) from None
        missing = [tool for tool in _DAEMONS if shutil.which(tool, path=_SBIN) is None]
        if missing:
            raise LibvirtUnavailable(
                f"{', '.join(missing)} not installed (scripts/bootstrap.sh installs "
                "libvirt-daemon-system, libvirt-daemon-driver-qemu, qemu-system-x86)"
            )
        if not Path("/dev/kvm").exists():
            raise LibvirtUnavailable("no /dev/kvm: KVM is not available on this machine")
        done = subprocess.run(
            [str(SCRIPT), "start", str(self.directory)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == _UNAVAILABLE:
            raise LibvirtUnavailable(done.stderr.strip())
        if done.returncode != 0:
            raise RuntimeError(f"libvirtd did not start: {done.stderr.strip()}")
        self.started = done.stdout.strip() == "started"

    def stop(self) -> None:
        """Stop the daemons ``start()`` started (none when libvirtd was already running)."""
        if self.started:
            subprocess.run([str(SCRIPT), "stop", str(self.directory)], check=False, timeout=60)
            self.started = False
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def connect(self) -> libvirt.virConnect:
        """A read-write connection to qemu:///system; the caller closes it."""
        import libvirt

        return libvirt.open(self.uri)


_DOMAIN_XML = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>{features}
  <on_poweroff>destroy</on_poweroff>
  <devices>
{devices}
  </devices>
</domain>"""
_SCSI_CONTROLLER = "<controller type='scsi' model='virtio-scsi' index='0'/>"


class Domains:
    """Transient test domains (and libvirt secrets) on one connection, all gone after
    ``cleanup()``. The domains have no OS: they exist so qemu opens their disks."""

    def __init__(self, conn: libvirt.virConnect) -> None:
        self.conn = conn
        self._names: list[str] = []
        self._secrets: list[str] = []

    def boot(
        self, *disk_xml: str, scsi: bool = False, acpi: bool = False, name: str | None = None
    ) -> libvirt.virDomain:
        """Start a transient domain (32 MiB, 1 vcpu, no OS) with the given ``<disk>`` elements;
        ``scsi=True`` adds a virtio-scsi controller for ``bus='scsi'`` disks; ``acpi=True`` lets
        virtio disks be hot-plugged (and makes unplugging wait for a guest that never answers)."""
        return self.conn.createXML(self._xml(disk_xml, scsi=scsi, acpi=acpi, name=name), 0)

    def define(self, *disk_xml: str, scsi: bool = False) -> libvirt.virDomain:
        """Define a persistent domain like ``boot``'s, shut off; ``cleanup()`` undefines it."""
        return self.conn.defineXML(self._xml(disk_xml, scsi=scsi, acpi=False, name=None))

    def _xml(self, disk_xml: tuple[str, ...], *, scsi: bool, acpi: bool, name: str | None) -> str:
        name = name or f"diskledger-test-{uuid.uuid4().hex[:8]}"
        devices = ([_SCSI_CONTROLLER] if scsi else []) + list(disk_xml)
        features = "\n  <features><acpi/></features>" if acpi else ""
        self._names.append(name)
        return _DOMAIN_XML.format(name=name, features=features, devices="\n".join(devices))

    def qemu_logs(self, lines: int = 15) -> str:
        """The last ``lines`` of each of these domains' qemu logs (libvirt's
        /var/log/libvirt/qemu/NAME.log): what qemu said when it would not start."""
        found = []
        for name in self._names:
            log = Path("/var/log/libvirt/qemu") / f"{name}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                found.append("\n".join([f"{log}:", *tail]))
        return "\n".join(found)

    def track_secret(self, secret_uuid: str) -> None:
        """Undefine the libvirt secret ``secret_uuid`` at ``cleanup()`` (if it still exists)."""
        self._secrets.append(secret_uuid)

    def cleanup(self) -> None:
        """Destroy (and undefine) every domain made here, then every tracked secret, whichever
        still exist; errors other than "no such domain/secret" are raised after trying all."""
        import libvirt

        errors: list[str] = []
        for name in self._names:
            try:
                dom = self.conn.lookupByName(name)
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    errors.append(f"domain {name}: {exc}")
        self._names.clear()
        for secret_uuid in self._secrets:
            try:
                self.conn.secretLookupByUUIDString(secret_uuid).undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SECRET:
                    errors.append(f"secret {secret_uuid}: {exc}")
        self._secrets.clear()
        if errors:
            raise RuntimeError("libvirt clean-up failed: " + "; ".join(errors))


@dataclass(frozen=True)
class BlockDevice:
    """One disk as qemu has it open."""

    target: str  # the target dev in the domain XML: "vda", "sda"
    virtual_size: int  # bytes, as the guest sees the disk
    format: str  # qemu's format driver on top: "raw", "qcow2"
    file: str  # qemu's name for what it opened: a path, or a json:/rbd: pseudo-filename


def block_devices(dom: libvirt.virDomain) -> dict[str, BlockDevice]:
    """qemu's view (query-block) of the running domain's disks with media, by target dev.

    query-block names each device by its qdev id, which is libvirt's alias for the disk
    (``/machine/peripheral/<alias>/virtio-backend`` for virtio, ``<alias>`` for SCSI); the
    live domain XML maps aliases to target devs.
    """
    import libvirt_qemu

    targets: dict[str, str] = {}
    for disk in ET.fromstring(dom.XMLDesc(0)).iterfind("devices/disk"):
        target_element, alias_element = disk.find("target"), disk.find("alias")
        if target_element is not None and alias_element is not None:
            targets[alias_element.get("name", "")] = target_element.get("dev", "")
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, '{"execute":"query-block"}', 0))
    found: dict[str, BlockDevice] = {}
    for row in reply["return"]:
        inserted = row.get("inserted")
        if not inserted:
            continue  # an empty CD-ROM drive
        qdev: str = row.get("qdev") or ""
        if qdev.startswith("/machine/peripheral/"):
            qdev = qdev.split("/")[3]
        device: str = row.get("device") or ""
        alias = qdev or device.removeprefix("drive-")
        if alias not in targets:
            continue
        target = targets[alias]
        found[target] = BlockDevice(
            target=target,
            virtual_size=int(inserted["image"]["virtual-size"]),
            format=str(inserted.get("drv") or inserted["image"]["format"]),
            file=str(inserted["file"]),
        )
    return found
