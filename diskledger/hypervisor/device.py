"""A disk as libvirt's domain XML describes it (``<disk>``), built from recorded facts.

What Nova's ``Image.libvirt_info`` / ``disk_qos`` / ``disk_scsi`` fill in, checked before any XML
is written: the format is the one the ledger recorded (never probed), the source is where the
backend keeps the disk, and every caller choice (target, bus, cache, discard, boot order, SCSI
unit, QoS extra specs) is refused with one clear line when libvirt would refuse it later.
"""

from __future__ import annotations

import itertools
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from diskledger.backends.contract import DiskSource, SourceKind
from diskledger.errors import InvalidInput

__all__ = [
    "BUSES",
    "CACHE_MODES",
    "DISCARD_MODES",
    "IOTUNE_SPECS",
    "LIBVIRT_FORMATS",
    "DiskDevice",
    "describe",
    "disks_in",
    "same_source",
]

BUSES: Final[Mapping[str, str]] = {
    "virtio": "vd",
    "scsi": "sd",
    "sata": "sd",
    "usb": "sd",
    "ide": "hd",
    "xen": "xvd",
}
"""The buses a disk may sit on, each with the prefix its target device names take."""

CACHE_MODES: Final = ("none", "writethrough", "writeback", "directsync", "unsafe", "default")
DISCARD_MODES: Final = ("unmap", "ignore")
_DIRECT_CACHES: Final = ("none", "directsync")
"""qemu refuses native AIO unless the host page cache is bypassed."""

IOTUNE_SPECS: Final[Mapping[str, str]] = {
    f"quota:disk_{direction}_{what}_sec{limit}": f"{direction}_{what}_sec{limit}"
    for direction, what, limit in itertools.product(
        ("read", "write", "total"), ("bytes", "iops"), ("", "_max")
    )
}
"""Flavor extra specs (Nova's ``quota:disk_*``) and the ``<iotune>`` element each becomes."""

MAX_SCSI_UNIT: Final = 16383
MAX_IOTUNE: Final = 10**15
"""qemu's ceiling for a throttle limit (``THROTTLE_VALUE_MAX``)."""
_TARGET = re.compile(r"(?P<prefix>xvd|vd|sd|hd)(?P<letters>[a-z]{1,3})")

LIBVIRT_FORMATS: Final[Mapping[str, str]] = {"parallels": "ploop"}
"""Recorded formats libvirt names otherwise (its ``virStorageFileFormat``): qemu's ``parallels``
format is libvirt's ``ploop``, which its qemu driver hands to qemu's ``parallels`` block driver.
Every other format is named as recorded."""


@dataclass(frozen=True, slots=True)
class DiskDevice:
    """One ``<disk device='disk'>`` element: everything libvirt needs to give a guest the disk."""

    source: DiskSource
    format: str
    target_dev: str
    bus: str
    cache: str | None = None
    discard: str | None = None
    io: str | None = None
    boot_order: int | None = None
    unit: int | None = None
    iotune: tuple[tuple[str, int], ...] = ()
    secret_uuid: str | None = None
    """The libvirt secret holding the key of ``source.user`` (network disks with cephx)."""
    backing: tuple[DiskSource, str] | None = None
    """The template under a file overlay and its recorded format: the whole chain is given, so
    libvirt does not probe it, and marked not to be relabelled, so libvirt does not hand the
    shared template to this guest's qemu user (it would stay so after the guest stops)."""
    encryption_uuid: str | None = None
    """The libvirt secret holding the key of a LUKS-encrypted disk (qemu's own LUKS: qcow2
    ``encrypt.format=luks``): ``<encryption format='luks'>`` in the source names it."""

    def element(self) -> ET.Element:
        disk = ET.Element("disk", type=self.source.kind.value, device="disk")
        driver_type = LIBVIRT_FORMATS.get(self.format, self.format)
        driver = ET.SubElement(disk, "driver", name="qemu", type=driver_type)
        for attribute, value in (("cache", self.cache), ("discard", self.discard), ("io", self.io)):
            if value is not None:
                driver.set(attribute, value)
        source_element = self._source()
        if self.encryption_uuid is not None:
            encryption = ET.SubElement(source_element, "encryption", format="luks")
            ET.SubElement(encryption, "secret", type="passphrase", uuid=self.encryption_uuid)
        disk.append(source_element)
        if self.backing is not None:
            backing, backing_format = self.backing
            store = ET.SubElement(disk, "backingStore", type=backing.kind.value)
            ET.SubElement(store, "format", type=backing_format)
            source = ET.SubElement(
                store, "source", file=_required(backing.path, "a backing file's path")
            )
            ET.SubElement(source, "seclabel", model="dac", relabel="no")
            ET.SubElement(store, "backingStore")  # the chain ends here: templates have no backing
        if self.source.user is not None and self.secret_uuid is not None:
            auth = ET.SubElement(disk, "auth", username=self.source.user)
            ET.SubElement(auth, "secret", type="ceph", uuid=self.secret_uuid)
        ET.SubElement(disk, "target", dev=self.target_dev, bus=self.bus)
        if self.iotune:
            limits = ET.SubElement(disk, "iotune")
            for name, limit in self.iotune:
                ET.SubElement(limits, name).text = str(limit)
        if self.boot_order is not None:
            ET.SubElement(disk, "boot", order=str(self.boot_order))
        if self.unit is not None:
            # Only with a unit: libvirt places unaddressed SCSI disks itself (Nova bug 1792077).
            ET.SubElement(
                disk,
                "address",
                type="drive",
                controller="0",
                bus="0",
                target="0",
                unit=str(self.unit),
            )
        return disk

    def to_xml(self) -> str:
        element = self.element()
        ET.indent(element)
        return ET.tostring(element, encoding="unicode")

    def _source(self) -> ET.Element:
        source = self.source
        if source.kind is SourceKind.FILE:
            return ET.Element("source", file=_required(source.path, "a file disk's path"))
        if source.kind is SourceKind.BLOCK:
            return ET.Element("source", dev=_required(source.path, "a block disk's device"))
        element = ET.Element(
            "source",
            protocol=_required(source.protocol, "a network disk's protocol"),
            name=_required(source.name, "a network disk's name"),
        )
        for host, port in source.hosts:
            ET.SubElement(element, "host", name=host, port=str(port))
        return element


def describe(
    source: DiskSource,
    fmt: str,
    *,
    target_dev: str,
    bus: str = "virtio",
    cache: str | None = "none",
    discard: str | None = None,
    boot_order: int | None = None,
    disk_unit: int | None = None,
    extra_specs: Mapping[str, object] | None = None,
    secret_uuid: str | None = None,
    backing: tuple[DiskSource, str] | None = None,
    encryption_uuid: str | None = None,
) -> DiskDevice:
    """The device for a disk kept at ``source`` in format ``fmt``, or ``InvalidInput``."""
    if bus not in BUSES:
        raise InvalidInput(f"bus {bus!r} is not one of {', '.join(BUSES)}")
    match = _TARGET.fullmatch(target_dev)
    if match is None:
        raise InvalidInput(
            f"target device {target_dev!r} is not a disk name like vda, sdb, hdc or xvdd"
        )
    if match["prefix"] != BUSES[bus]:
        raise InvalidInput(
            f"target device {target_dev!r} does not fit bus {bus}: its disks are {BUSES[bus]}*"
        )
    if cache is not None and cache not in CACHE_MODES:
        raise InvalidInput(f"cache mode {cache!r} is not one of {', '.join(CACHE_MODES)}")
    if discard is not None and discard not in DISCARD_MODES:
        raise InvalidInput(f"discard mode {discard!r} is not one of {', '.join(DISCARD_MODES)}")
    if boot_order is not None and (_not_int(boot_order) or boot_order < 1):
        raise InvalidInput(f"boot order {boot_order!r} is not a whole number from 1")
    if disk_unit is not None:
        if bus != "scsi":
            raise InvalidInput(f"a disk unit addresses a SCSI drive; bus {bus} has none")
        if _not_int(disk_unit) or not 0 <= disk_unit <= MAX_SCSI_UNIT:
            raise InvalidInput(f"disk unit {disk_unit!r} is not between 0 and {MAX_SCSI_UNIT}")
    if secret_uuid is not None:
        _check_uuid(secret_uuid)
    if encryption_uuid is not None:
        _check_uuid(encryption_uuid)
        if fmt != "qcow2" or backing is not None:
            raise InvalidInput("an encrypted disk is a standalone qcow2 image")
    return DiskDevice(
        source=source,
        format=fmt,
        target_dev=target_dev,
        bus=bus,
        cache=cache,
        discard=discard,
        io="native" if source.preallocated and cache in _DIRECT_CACHES else None,
        boot_order=boot_order,
        unit=disk_unit,
        iotune=iotune(extra_specs or {}),
        secret_uuid=secret_uuid,
        backing=backing,
        encryption_uuid=encryption_uuid,
    )


def iotune(extra_specs: Mapping[str, object]) -> tuple[tuple[str, int], ...]:
    """The ``<iotune>`` entries of a flavor's ``quota:disk_*`` extra specs (other keys belong to
    other parts of the flavor and are passed over), in a stable order."""
    tune: dict[str, int] = {}
    for key, raw in extra_specs.items():
        if not key.startswith("quota:disk_"):
            continue
        name = IOTUNE_SPECS.get(key)
        if name is None:
            known = ", ".join(sorted(IOTUNE_SPECS))
            raise InvalidInput(f"unknown disk QoS extra spec {key!r}; known: {known}")
        value = int(raw) if isinstance(raw, str) and raw.isascii() and raw.isdigit() else raw
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_IOTUNE:
            raise InvalidInput(
                f"extra spec {key}={raw!r} is not a whole number from 0 to {MAX_IOTUNE}"
            )
        tune[name] = value
    for what, limit in itertools.product(("bytes", "iops"), ("", "_max")):
        total, parts = (
            f"total_{what}_sec{limit}",
            (f"read_{what}_sec{limit}", f"write_{what}_sec{limit}"),
        )
        if tune.get(total) and any(tune.get(p) for p in parts):
            raise InvalidInput(
                f"quota:disk_{total} cannot be combined with quota:disk_{parts[0]} or "
                f"quota:disk_{parts[1]} (libvirt refuses both limits at once)"
            )
    order = list(IOTUNE_SPECS.values())
    return tuple(sorted(tune.items(), key=lambda item: order.index(item[0])))


def disks_in(domain_xml: str | ET.Element) -> dict[str, DiskSource]:
    """The disks a domain's XML (from libvirt, as text or parsed) gives its guest, by target
    device."""
    found: dict[str, DiskSource] = {}
    root = ET.fromstring(domain_xml) if isinstance(domain_xml, str) else domain_xml
    for disk in root.iterfind("./devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if disk.get("device", "disk") != "disk" or target is None or source is None:
            continue
        kind = disk.get("type")
        if kind == SourceKind.FILE:
            found[target.get("dev", "")] = DiskSource(SourceKind.FILE, path=source.get("file"))
        elif kind == SourceKind.BLOCK:
            found[target.get("dev", "")] = DiskSource(SourceKind.BLOCK, path=source.get("dev"))
        elif kind == SourceKind.NETWORK:
            found[target.get("dev", "")] = DiskSource(
                SourceKind.NETWORK, protocol=source.get("protocol"), name=source.get("name")
            )
    return found


def same_source(a: DiskSource, b: DiskSource) -> bool:
    """Whether two descriptions name the same storage (hosts, users and secrets aside)."""
    return (a.kind, a.path, a.protocol, a.name) == (b.kind, b.path, b.protocol, b.name)


def _required(value: str | None, what: str) -> str:
    if not value:
        raise InvalidInput(f"{what} is missing")
    return value


def _not_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)


def _check_uuid(value: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise InvalidInput(f"secret uuid {value!r} is not a UUID") from None
