"""The backend contract, run against every file backend and the real qemu-img."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from diskledger.backends import (
    Artifact,
    Backend,
    Capability,
    TemplateSource,
)
from tests.backends.helpers import MiB, has_pattern, info, temporaries, write_pattern

INTERNAL = Capability.INTERNAL_SNAPSHOTS


def new_disk(backend: Backend, size: int = MiB, name: str = "disk0") -> str:
    location = backend.disk_location("vm1", name)
    backend.create(location, "op-create", size=size, template=None)
    return location


def test_satisfies_the_protocol(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    assert backend.disk_format == backend.name


def test_blank_create(backend: Backend, tmp_path: Path) -> None:
    location = backend.disk_location("vm1", "disk0")
    temp, final = backend.create_artifacts(location, "op1")
    assert temp.temporary and not final.temporary and final.location == location

    seen = backend.create(location, "op1", size=2 * MiB, template=None)

    assert seen.exists and seen.size == 2 * MiB and seen.format == backend.disk_format
    assert seen.artifact == final and seen.backing is None
    assert info(location, backend.disk_format)["virtual-size"] == 2 * MiB
    assert not os.path.exists(temp.location)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("size", [None, 3 * MiB])
def test_create_from_template(
    backend: Backend, template: TemplateSource, tmp_path: Path, size: int | None
) -> None:
    location = backend.disk_location("vm1", "disk0")

    seen = backend.create(location, "op1", size=size, template=template)

    assert seen.size == (size or template.virtual_size)
    assert info(location, backend.disk_format)["virtual-size"] == seen.size
    assert has_pattern(location, backend.disk_format, 0x11)
    if Capability.BACKING_OVERLAY in backend.capabilities:
        assert seen.backing == template.location
        assert info(location, backend.disk_format)["backing-filename"] == template.location
    else:
        assert seen.backing is None
    assert temporaries(tmp_path) == []


def test_existing_disk_is_not_recreated(backend: Backend) -> None:
    location = new_disk(backend)
    write_pattern(location, backend.disk_format, 0x5A)

    seen = backend.create(location, "op-again", size=4 * MiB, template=None)

    assert seen.size == MiB
    assert has_pattern(location, backend.disk_format, 0x5A)


def test_resize_grows_and_is_idempotent(backend: Backend) -> None:
    location = new_disk(backend)
    fmt = backend.disk_format
    write_pattern(location, fmt, 0x22)

    assert backend.resize(location, fmt, 2 * MiB).size == 2 * MiB
    assert backend.resize(location, fmt, 2 * MiB).size == 2 * MiB
    assert backend.resize(location, fmt, MiB).size == 2 * MiB  # never shrinks
    assert info(location, fmt)["virtual-size"] == 2 * MiB
    assert has_pattern(location, fmt, 0x22)


def test_snapshot_and_rollback_restore_data(backend: Backend, tmp_path: Path) -> None:
    location = new_disk(backend)
    fmt = backend.disk_format
    write_pattern(location, fmt, 0xAB)

    seen = backend.snapshot(location, fmt, "s1", "op-snap")
    assert seen.exists and seen.size == MiB
    assert backend.snapshot(location, fmt, "s1", "op-snap2").exists  # idempotent
    write_pattern(location, fmt, 0xCD)
    assert has_pattern(location, fmt, 0xCD)

    after = backend.rollback(location, fmt, "s1", "op-rollback", size=MiB)

    assert after.size == MiB
    assert has_pattern(location, fmt, 0xAB)
    if INTERNAL in backend.capabilities:
        assert after.snapshots == ("s1",)
    assert temporaries(tmp_path) == []


def test_rollback_keeps_the_size_when_the_snapshot_was_smaller(backend: Backend) -> None:
    location = new_disk(backend)
    fmt = backend.disk_format
    write_pattern(location, fmt, 0xAB)
    backend.snapshot(location, fmt, "small", "op-snap")
    backend.resize(location, fmt, 3 * MiB)
    write_pattern(location, fmt, 0xCD, offset=2 * MiB)

    after = backend.rollback(location, fmt, "small", "op-rollback", size=3 * MiB)

    assert after.size == 3 * MiB
    assert info(location, fmt)["virtual-size"] == 3 * MiB
    assert has_pattern(location, fmt, 0xAB)
    assert has_pattern(location, fmt, 0x00, offset=2 * MiB)


def test_remove_snapshot_is_idempotent(backend: Backend) -> None:
    location = new_disk(backend)
    fmt = backend.disk_format
    backend.snapshot(location, fmt, "s1", "op-snap")
    backend.snapshot(location, fmt, "s2", "op-snap2")
    s1 = backend.snapshot_artifacts(location, "s1", "op-snap")[-1]

    backend.remove_snapshot(location, fmt, "s1")
    backend.remove_snapshot(location, fmt, "s1")

    s1_seen, s2_seen = backend.probe([s1, backend.snapshot_artifacts(location, "s2", "x")[-1]])
    assert not s1_seen.exists and s2_seen.exists
    if INTERNAL in backend.capabilities:
        assert info(location, fmt)["snapshots"][0]["name"] == "s2"


def test_delete_is_idempotent_and_leaves_nothing(backend: Backend, tmp_path: Path) -> None:
    location = new_disk(backend)
    fmt = backend.disk_format
    backend.snapshot(location, fmt, "s1", "op-snap")
    backend.snapshot(location, fmt, "s2", "op-snap2")

    backend.delete(location, fmt, ["s1", "s2"])
    backend.delete(location, fmt, ["s1", "s2"])

    assert list((tmp_path / "disks").iterdir()) == []


def test_delete_keeps_the_other_disks_of_the_instance(backend: Backend) -> None:
    one, two = new_disk(backend, name="one"), new_disk(backend, name="two")

    backend.delete(one, backend.disk_format, [])

    assert not os.path.exists(one) and os.path.exists(two)


@pytest.mark.parametrize("target_format", ["raw", "qcow2"])
def test_export_is_standalone(
    backend: Backend, template: TemplateSource, tmp_path: Path, target_format: str
) -> None:
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op1", size=2 * MiB, template=template)
    fmt = backend.disk_format
    write_pattern(location, fmt, 0x33, offset=MiB)
    target = str(tmp_path / f"export.{target_format}")
    temp, final = backend.export_artifacts(target, "op-export")
    assert temp.temporary and final.location == target

    seen = backend.export(location, fmt, target, target_format, "op-export")

    assert seen.exists and seen.size == 2 * MiB and seen.format == target_format
    assert "backing-filename" not in info(target, target_format)
    assert has_pattern(target, target_format, 0x11) and has_pattern(
        target, target_format, 0x33, MiB
    )
    compare = ["qemu-img", "compare", "-f", fmt, "-F", target_format, location, target]
    assert subprocess.run(compare, capture_output=True, check=False).returncode == 0
    assert temporaries(tmp_path) == []


def test_probe_reports_final_temporary_and_snapshot_artifacts(backend: Backend) -> None:
    location = backend.disk_location("vm1", "disk0")
    temp, final = backend.create_artifacts(location, "op1")
    assert [o.exists for o in backend.probe([temp, final])] == [False, False]

    os.makedirs(os.path.dirname(location))
    Path(temp.location).write_bytes(b"half")
    temp_seen, final_seen = backend.probe([temp, final])
    assert temp_seen.exists and temp_seen.format is None and not final_seen.exists

    os.unlink(temp.location)
    backend.create(location, "op1", size=MiB, template=None)
    final_seen, snap_seen = backend.probe(
        [final, backend.snapshot_artifacts(location, "s1", "t")[-1]]
    )
    assert final_seen.exists and final_seen.size == MiB and final_seen.format == backend.disk_format
    assert final_seen.allocated is not None
    assert not snap_seen.exists

    backend.snapshot(location, backend.disk_format, "s1", "t")
    (snap_seen,) = backend.probe([backend.snapshot_artifacts(location, "s1", "t")[-1]])
    assert snap_seen.exists


def test_remove_removes_every_named_artifact(backend: Backend, tmp_path: Path) -> None:
    location = backend.disk_location("vm1", "disk0")
    created = backend.create_artifacts(location, "op1")
    backend.create(location, "op1", size=MiB, template=None)
    snapped = backend.snapshot_artifacts(location, "s1", "op2")
    backend.snapshot(location, backend.disk_format, "s1", "op2")
    # A temporary name left by a crash, and another left half-written beside the snapshot.
    Path(created[0].location).write_bytes(b"partial")
    leftovers = [a for a in snapped if a.temporary]
    for artifact in leftovers:
        Path(artifact.location).write_bytes(b"partial")
    named = [*created, *snapped]

    backend.remove(named)
    backend.remove(named)

    assert not any(o.exists for o in backend.probe(named))
    assert temporaries(tmp_path) == []


def test_refuses_another_format(backend: Backend) -> None:
    location = new_disk(backend)
    other = "qcow2" if backend.disk_format == "raw" else "raw"
    with pytest.raises(ValueError, match="not"):
        backend.resize(location, other, 2 * MiB)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "x.tmp-1"])
def test_refuses_names_that_escape_or_mimic_temporaries(backend: Backend, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        backend.disk_location("vm1", bad)
    with pytest.raises(ValueError, match="invalid"):
        backend.disk_location(bad, "disk0")


def test_artifacts_round_trip_through_json(backend: Backend) -> None:
    location = backend.disk_location("vm1", "disk0")
    for artifact in [
        *backend.create_artifacts(location, "t"),
        *backend.snapshot_artifacts(location, "s1", "t"),
        *backend.rollback_artifacts(location, "s1", "t"),
        *backend.export_artifacts("/elsewhere/x.img", "t"),
    ]:
        assert Artifact.from_json(artifact.to_json()) == artifact
