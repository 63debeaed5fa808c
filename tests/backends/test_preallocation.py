"""``DISKLEDGER_PREALLOCATE=space``: file disks get their whole virtual size allocated when made,
imported and grown (``fallocate --keep-size``), the ledger records it, and the disk's libvirt
description asks for native AIO."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from diskledger import Config, Engine, InvalidInput
from diskledger.backends import backend_for

MiB = 1 << 20


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_preallocated_disks_hold_their_space_when_made_imported_and_grown(
    fmt: str, tmp_path: Path, template_files: dict[str, Path]
) -> None:
    thin = backend_for(fmt, str(tmp_path / "thin"))
    thick = backend_for(fmt, str(tmp_path / "thick"), preallocate=True)
    assert (thin.preallocates, thick.preallocates) == (False, True)
    for backend in (thin, thick):
        backend.create(backend.disk_location("vm-1", "root"), "op-1", size=32 * MiB, template=None)
    thin_disk, thick_disk = (b.disk_location("vm-1", "root") for b in (thin, thick))
    assert allocated(thin_disk) < MiB
    assert allocated(thick_disk) >= 32 * MiB
    assert os.path.getsize(thick_disk) == os.path.getsize(thin_disk)  # the length is unchanged

    thick.resize(thick_disk, fmt, 48 * MiB)
    assert allocated(thick_disk) >= 48 * MiB

    imported = thick.disk_location("vm-1", "data")
    thick.import_file(imported, "op-2", str(template_files["raw"]), "raw", max_virtual_size=1 << 30)
    assert allocated(imported) >= 64 * MiB


def test_the_ledger_records_preallocation_and_the_description_uses_native_aio(
    tmp_path: Path, qemu_img: None
) -> None:
    environ = {"DISKLEDGER_PREALLOCATE": "space"}
    with Engine.open(Config.load(root=tmp_path, backend="raw", environ=environ)) as engine:
        view = engine.create("vm-1/root", size=16 * MiB)
        assert view.preallocated
        driver = ET.fromstring(engine.libvirt_disk("vm-1/root", target_dev="vda")).find("driver")
        assert driver is not None and driver.get("io") == "native"
        # native AIO needs the page cache bypassed: with writeback, qemu's default threads
        through_cache = engine.libvirt_disk("vm-1/root", target_dev="vda", cache="writeback")
        assert ET.fromstring(through_cache).find("driver").get("io") is None  # type: ignore[union-attr]
    with Engine.open(Config.load(root=tmp_path, backend="raw", environ={})) as engine:
        assert engine.show("vm-1/root").preallocated  # a fact of the disk, not of the config
        assert not engine.create("vm-1/data", size=16 * MiB).preallocated


def test_an_unknown_preallocation_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="DISKLEDGER_PREALLOCATE='full' is not one of none"):
        Config.load(root=tmp_path, environ={"DISKLEDGER_PREALLOCATE": "full"})
