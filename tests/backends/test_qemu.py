from __future__ import annotations

from pathlib import Path

import pytest

from diskledger.backends import Qcow2Backend, qemu
from diskledger.errors import BackendError
from tests.backends.helpers import MiB, has_pattern, info, make_image, write_pattern


def test_header_and_snapshot_table_agree_with_qemu_img(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    make_image(base, "raw", MiB)
    # A comma in the path also exercises the image-opts escaping.
    image = tmp_path / "odd,name" / "disk.qcow2"
    image.parent.mkdir()
    qemu.create(str(image), "qcow2", 2 * MiB, backing=str(base), backing_fmt="raw")
    for name in ["first", "zweite-ü", "x" * 300]:
        qemu.snapshot_create(str(image), name)

    size, backing = qemu.read_qcow2_header(str(image))
    listed = qemu.snapshot_list(str(image))

    data = info(str(image), "qcow2")
    assert (size, backing) == (data["virtual-size"], data["backing-filename"])
    assert [(s.id, s.name) for s in listed] == [(s["id"], s["name"]) for s in data["snapshots"]]


def test_header_reader_refuses_non_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    make_image(raw, "raw", MiB)
    with pytest.raises(BackendError, match="not a qcow2"):
        qemu.read_qcow2_header(str(raw))


def test_snapshot_helpers(tmp_path: Path) -> None:
    image = str(tmp_path / "d.qcow2")
    qemu.create(image, "qcow2", MiB)
    write_pattern(image, "qcow2", 0x44)
    qemu.snapshot_create(image, "s")
    write_pattern(image, "qcow2", 0x55)
    qemu.snapshot_apply(image, "s")
    assert has_pattern(image, "qcow2", 0x44)
    qemu.snapshot_delete(image, "s")
    assert qemu.snapshot_list(image) == ()


def test_a_snapshot_name_that_is_another_snapshots_id_is_refused(tmp_path: Path) -> None:
    backend = Qcow2Backend(str(tmp_path))
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op", size=MiB, template=None)
    for name in ["a", "b", "2"]:  # ids 1, 2, 3: "-a 2" would apply "b"
        backend.snapshot(location, "qcow2", name, "op")
    with pytest.raises(BackendError, match="id"):
        backend.rollback(location, "qcow2", "2", "op", size=MiB)
    with pytest.raises(BackendError, match="id"):
        backend.remove_snapshot(location, "qcow2", "2")
    assert len(qemu.snapshot_list(location)) == 3


def test_rollback_to_a_missing_snapshot_fails(tmp_path: Path) -> None:
    backend = Qcow2Backend(str(tmp_path))
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op", size=MiB, template=None)
    with pytest.raises(BackendError, match="no internal snapshot"):
        backend.rollback(location, "qcow2", "nope", "op", size=MiB)


def test_create_with_backing_needs_its_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        qemu.create(str(tmp_path / "x.qcow2"), "qcow2", backing=str(tmp_path / "base"))


def test_create_only_writes_what_it_is_asked(
    commands: list[tuple[str, ...]], tmp_path: Path
) -> None:
    backend = Qcow2Backend(str(tmp_path))
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op", size=MiB, template=None)
    backend.resize(location, "qcow2", 2 * MiB)
    backend.snapshot(location, "qcow2", "s", "op")
    # Observations read the header: one qemu-img process per effect, none to look.
    assert [argv[1] for argv in commands] == ["create", "resize", "snapshot"]
