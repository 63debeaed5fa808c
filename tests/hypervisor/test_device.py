"""The disk description's choices and refusals. That libvirt and qemu accept the XML is proven by
booting domains with it (tests/hypervisor/test_libvirt_engine.py), not here."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from diskledger.backends import DiskSource, SourceKind
from diskledger.errors import InvalidInput
from diskledger.hypervisor import IOTUNE_SPECS, describe, disks_in, same_source

FILE = DiskSource(SourceKind.FILE, path="/var/lib/diskledger/disks/vm-1/root")
RBD = DiskSource(
    SourceKind.NETWORK,
    protocol="rbd",
    name="diskledger/vm-1~root",
    hosts=(("10.0.0.1", 6789), ("10.0.0.2", 6789)),
    user="nova",
)
SECRET = "c2b6ab1f-6cd2-4b8c-9f5e-1c0d2b7d9a11"


def element(**choices: Any) -> ET.Element:
    source = choices.pop("source", FILE)
    fmt = choices.pop("fmt", "qcow2")
    choices.setdefault("target_dev", "vda")
    return ET.fromstring(describe(source, fmt, **choices).to_xml())


def test_a_file_disk_carries_the_recorded_format_and_the_callers_choices() -> None:
    disk = element(cache="writeback", discard="unmap", boot_order=1)
    assert disk.attrib == {"type": "file", "device": "disk"}
    driver = disk.find("driver")
    assert driver is not None
    assert driver.attrib == {
        "name": "qemu",
        "type": "qcow2",
        "cache": "writeback",
        "discard": "unmap",
    }
    assert disk.find("source").attrib == {"file": FILE.path}  # type: ignore[union-attr]
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}  # type: ignore[union-attr]
    assert disk.find("boot").attrib == {"order": "1"}  # type: ignore[union-attr]
    assert disk.find("address") is None and disk.find("iotune") is None


def test_a_block_disk_names_its_device() -> None:
    disk = element(source=DiskSource(SourceKind.BLOCK, path="/dev/vg/vm-1_root"), fmt="raw")
    assert disk.get("type") == "block"
    assert disk.find("source").attrib == {"dev": "/dev/vg/vm-1_root"}  # type: ignore[union-attr]


def test_an_rbd_disk_names_pool_image_monitors_and_authenticates_only_with_a_secret() -> None:
    disk = element(source=RBD, fmt="raw", secret_uuid=SECRET)
    source = disk.find("source")
    assert disk.get("type") == "network" and source is not None
    assert source.attrib == {"protocol": "rbd", "name": "diskledger/vm-1~root"}
    assert [h.attrib for h in source.iterfind("host")] == [
        {"name": "10.0.0.1", "port": "6789"},
        {"name": "10.0.0.2", "port": "6789"},
    ]
    auth = disk.find("auth")
    assert auth is not None and auth.get("username") == "nova"
    assert auth.find("secret").attrib == {"type": "ceph", "uuid": SECRET}  # type: ignore[union-attr]
    # A user without a secret (or a secret without a user) would make libvirt fail at boot.
    assert element(source=RBD, fmt="raw").find("auth") is None


def test_native_io_only_for_preallocated_disks_that_bypass_the_page_cache() -> None:
    preallocated = DiskSource(SourceKind.FILE, path="/d", preallocated=True)
    assert element(source=preallocated, cache="none").find("driver").get("io") == "native"  # type: ignore[union-attr]
    assert element(source=preallocated, cache="writeback").find("driver").get("io") is None  # type: ignore[union-attr]
    assert element(cache="none").find("driver").get("io") is None  # type: ignore[union-attr]


def test_a_scsi_drive_address_only_when_a_unit_is_given() -> None:
    assert element(target_dev="sda", bus="scsi").find("address") is None
    address = element(target_dev="sdb", bus="scsi", disk_unit=7).find("address")
    assert address is not None
    assert address.attrib == {
        "type": "drive",
        "controller": "0",
        "bus": "0",
        "target": "0",
        "unit": "7",
    }


def test_quota_extra_specs_become_iotune_and_other_specs_are_passed_over() -> None:
    specs = {
        "quota:disk_write_iops_sec": "200",
        "quota:disk_read_bytes_sec": 10485760,
        "quota:cpu_shares": "2048",  # a CPU quota, not the disk's business
        "hw:cpu_policy": "dedicated",
    }
    iotune = element(extra_specs=specs).find("iotune")
    assert iotune is not None
    assert [(e.tag, e.text) for e in iotune] == [
        ("read_bytes_sec", "10485760"),
        ("write_iops_sec", "200"),
    ]
    assert set(IOTUNE_SPECS) >= {
        f"quota:disk_{d}_{w}_sec" for d in ("read", "write", "total") for w in ("bytes", "iops")
    }


@pytest.mark.parametrize(
    ("choices", "message"),
    [
        ({"bus": "floppy"}, "bus 'floppy' is not one of"),
        ({"target_dev": "vda1"}, "is not a disk name"),
        ({"target_dev": "../etc"}, "is not a disk name"),
        ({"target_dev": "sda"}, "does not fit bus virtio: its disks are vd*"),
        ({"target_dev": "vdb", "bus": "ide"}, "does not fit bus ide: its disks are hd*"),
        ({"cache": "fast"}, "cache mode 'fast' is not one of"),
        ({"discard": "trim"}, "discard mode 'trim' is not one of"),
        ({"boot_order": 0}, "boot order 0 is not a whole number from 1"),
        ({"boot_order": True}, "boot order True is not a whole number"),
        ({"disk_unit": 1}, "a disk unit addresses a SCSI drive; bus virtio has none"),
        ({"target_dev": "sda", "bus": "scsi", "disk_unit": -1}, "disk unit -1 is not between"),
        ({"target_dev": "sda", "bus": "scsi", "disk_unit": 16384}, "is not between 0 and 16383"),
        ({"extra_specs": {"quota:disk_read_bytes_sec": "fast"}}, "is not a whole number from 0"),
        ({"extra_specs": {"quota:disk_read_bytes_sec": -5}}, "is not a whole number from 0"),
        ({"extra_specs": {"quota:disk_read_bytes_sec": "\u00b2"}}, "is not a whole number from 0"),
        ({"extra_specs": {"quota:disk_read_iops_sec": 10**15 + 1}}, "to 1000000000000000"),
        ({"extra_specs": {"quota:disk_read_byte_sec": "5"}}, "unknown disk QoS extra spec"),
        (
            {
                "extra_specs": {
                    "quota:disk_total_bytes_sec": "100",
                    "quota:disk_read_bytes_sec": "50",
                }
            },
            "cannot be combined with",
        ),
        ({"secret_uuid": "not-a-uuid"}, "is not a UUID"),
    ],
)
def test_bad_choices_are_refused_in_one_line(choices: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        element(**choices)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_an_overlay_names_its_template_and_its_format_and_keeps_libvirt_off_it() -> None:
    template = DiskSource(SourceKind.FILE, path="/var/lib/diskledger/templates/base")
    disk = element(backing=(template, "raw"))
    store = disk.find("backingStore")
    assert store is not None and store.get("type") == "file"
    assert store.find("format").attrib == {"type": "raw"}  # type: ignore[union-attr]
    source = store.find("source")
    assert source is not None and source.get("file") == template.path
    assert source.find("seclabel").attrib == {"model": "dac", "relabel": "no"}  # type: ignore[union-attr]
    end = store.find("backingStore")
    assert end is not None and len(end) == 0 and not end.attrib  # the chain ends there


def test_the_disks_of_a_domain_are_read_back_by_target_and_storage() -> None:
    file_disk = describe(FILE, "qcow2", target_dev="vda").to_xml()
    rbd_disk = describe(RBD, "raw", target_dev="sdb", bus="scsi", secret_uuid=SECRET).to_xml()
    cdrom = "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>"
    domain = f"<domain><devices>{file_disk}{rbd_disk}{cdrom}</devices></domain>"
    found = disks_in(domain)
    assert set(found) == {"vda", "sdb"}
    assert same_source(found["vda"], FILE)
    assert same_source(found["sdb"], RBD)
    assert not same_source(found["vda"], RBD)
