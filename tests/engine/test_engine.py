"""The embedding API on real storage (qemu-img) and a real ledger, for both backends."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from diskledger.engine import Config, Engine
from diskledger.errors import (
    BackendError,
    Conflict,
    DiskNotFound,
    IllegalTransition,
    InvalidInput,
    InvalidSize,
    OperationPending,
    SnapshotNotFound,
    TemplateNotFound,
)
from diskledger.events import split_type
from diskledger.states import DiskState, TemplateState
from tests.backends.helpers import info as qemu_info

MiB = 1 << 20


def files_under(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("ledger.db")
    )


def test_add_template_records_format_and_virtual_size(engine: Engine, base: str) -> None:
    view = engine.template(base)
    assert view.state is TemplateState.CACHED
    assert (view.format, view.virtual_size) == ("qcow2", 64 * MiB)
    assert view.location and Path(view.location).is_file()
    types = [e.type for e in engine.history() if e.stream.startswith("template:")]
    assert types == ["template.fetch.started", "template.fetch.completed"]


def test_create_from_template_defaults_to_the_template_size(engine: Engine, base: str) -> None:
    view = engine.create("vm-1/root", template=base)
    assert view.state is DiskState.CREATED
    assert (view.size, view.format, view.template) == (64 * MiB, engine.backend.disk_format, base)
    assert view.location is not None
    info = qemu_info(view.location, engine.backend.disk_format)
    assert info["virtual-size"] == 64 * MiB
    if engine.backend.name == "qcow2":
        assert view.backing == engine.template(base).location == info["backing-filename"]
    else:
        assert view.backing is None and "backing-filename" not in info
    assert engine.template_users(base) == ["vm-1/root"]
    trail = [e.type for e in engine.history("vm-1/root")]
    assert trail == ["disk.template-bound", "disk.create.started", "disk.create.completed"]


def test_the_intent_names_every_artifact_before_storage_is_touched(
    engine: Engine, base: str
) -> None:
    view = engine.create("vm-1/root", template=base, size="128M")
    intent = engine.history("vm-1/root")[1]
    locations = {a["location"] for a in intent.data["artifacts"]}
    assert view.location in locations
    assert any(a.get("temporary") for a in intent.data["artifacts"])
    assert intent.data["params"]["size"] == 128 * MiB
    completed = engine.history("vm-1/root")[2]
    assert (
        completed.data["size"] == 128 * MiB
        and completed.data["format"] == engine.backend.disk_format
    )


def test_a_disk_smaller_than_its_template_is_refused_before_anything_is_created(
    engine: Engine, base: str
) -> None:
    head = engine.store.head()
    with pytest.raises(InvalidSize, match="smaller than template"):
        engine.create("vm-1/root", template=base, size="32M")
    assert engine.store.head() == head
    assert files_under(Path(engine.templates.root)) == ["templates/base"]


def test_blank_disks(engine: Engine) -> None:
    view = engine.create("vm-1/swap", size="16M")
    assert (view.state, view.size, view.template, view.backing) == (
        DiskState.CREATED,
        16 * MiB,
        None,
        None,
    )
    assert [e.type for e in engine.history("vm-1/swap")] == [
        "disk.create.started",
        "disk.create.completed",
    ]


def test_resize_grows_and_never_shrinks(engine: Engine, base: str) -> None:
    engine.create("vm-1/root", template=base)
    view = engine.resize("vm-1/root", "96M")
    assert (view.state, view.size) == (DiskState.RESIZED, 96 * MiB)
    assert (
        view.location
        and qemu_info(view.location, engine.backend.disk_format)["virtual-size"] == 96 * MiB
    )
    version = view.version
    assert engine.resize("vm-1/root", 96 * MiB).version == version  # same size: nothing to do
    with pytest.raises(InvalidSize, match="never shrink"):
        engine.resize("vm-1/root", "64M")
    assert engine.show("vm-1/root").version == version


def test_snapshot_rollback_and_remove(engine: Engine, base: str) -> None:
    engine.create("vm-1/root", template=base)
    view = engine.snapshot("vm-1/root", "s1")
    assert view.state is DiskState.SNAPSHOTTED and view.snapshot_names == ("s1",)
    with pytest.raises(IllegalTransition, match="exists"):
        engine.snapshot("vm-1/root", "s1")
    engine.resize("vm-1/root", "96M")
    view = engine.rollback("vm-1/root", "s1")
    assert view.size == 96 * MiB, "a rollback never shrinks the disk"
    assert (
        view.location
        and qemu_info(view.location, engine.backend.disk_format)["virtual-size"] == 96 * MiB
    )
    engine.snapshot("vm-1/root", "s2")
    assert engine.remove_snapshot("vm-1/root", "s1").state is DiskState.SNAPSHOTTED
    view = engine.remove_snapshot("vm-1/root", "s2")
    assert view.state is DiskState.RESIZED and view.snapshots == ()
    with pytest.raises(SnapshotNotFound):
        engine.rollback("vm-1/root", "s1")
    with pytest.raises(SnapshotNotFound):
        engine.remove_snapshot("vm-1/root", "s1")


def test_rollback_restores_the_data(engine: Engine, base: str, tmp_path: Path) -> None:
    engine.create("vm-1/root", template=base)
    engine.snapshot("vm-1/root", "clean")
    location = engine.show("vm-1/root").location
    assert location is not None
    fmt = engine.backend.disk_format
    subprocess.run(
        ["qemu-io", "-f", fmt, "-c", "write -P 0xab 0 4k", location],
        check=True,
        capture_output=True,
    )
    engine.rollback("vm-1/root", "clean")
    engine.export("vm-1/root", tmp_path / "out.raw", "raw")
    assert (tmp_path / "out.raw").read_bytes()[:8] == b"TEMPLATE"


def test_export_writes_a_standalone_copy(engine: Engine, base: str, tmp_path: Path) -> None:
    engine.create("vm-1/root", template=base, size="80M")
    result = engine.export("vm-1/root", tmp_path / "export.qcow2", "qcow2")
    assert (result.format, result.size) == ("qcow2", 80 * MiB)
    info = qemu_info(str(tmp_path / "export.qcow2"), "qcow2")
    assert "backing-filename" not in info and info["virtual-size"] == 80 * MiB
    assert list(tmp_path.glob("export.qcow2.tmp-*")) == []
    with pytest.raises(InvalidInput, match="already exists"):
        engine.export("vm-1/root", tmp_path / "export.qcow2")
    with pytest.raises(InvalidInput, match="directory"):
        engine.export("vm-1/root", tmp_path / "missing" / "x.raw")


def test_delete_removes_storage_keeps_history(engine: Engine, base: str) -> None:
    engine.create("vm-1/root", template=base)
    engine.snapshot("vm-1/root", "s1")
    view = engine.delete("vm-1/root")
    assert view.state is DiskState.ABSENT
    assert files_under(Path(engine.templates.root)) == ["templates/base"]
    assert engine.show("vm-1/root").state is DiskState.ABSENT
    assert engine.list() == [] and [d.disk for d in engine.list(include_deleted=True)] == [
        "vm-1/root"
    ]
    assert engine.template_users(base) == []
    with pytest.raises(DiskNotFound):
        engine.delete("vm-1/root")
    again = engine.create("vm-1/root", template=base)  # a deleted disk may be made again
    assert again.state is DiskState.CREATED and again.snapshots == ()


def test_lookups_of_unknown_things(engine: Engine) -> None:
    with pytest.raises(DiskNotFound):
        engine.show("vm-9/root")
    with pytest.raises(DiskNotFound):
        engine.history("vm-9/root")
    with pytest.raises(TemplateNotFound):
        engine.create("vm-9/root", template="nope")
    with pytest.raises(TemplateNotFound):
        engine.template("nope")


def test_an_existing_disk_is_never_recreated(engine: Engine, base: str) -> None:
    engine.create("vm-1/root", template=base)
    with pytest.raises(IllegalTransition, match="exists"):
        engine.create("vm-1/root", template=base)


def test_a_failing_effect_is_compensated_and_recorded(
    engine: Engine, base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise BackendError("simulated ENOSPC")

    monkeypatch.setattr(engine.backend, "create", broken)
    with pytest.raises(BackendError, match="ENOSPC"):
        engine.create("vm-1/root", template=base)
    types = [e.type for e in engine.history("vm-1/root")]
    assert types == [
        "disk.template-bound",
        "disk.create.started",
        "disk.create.failed",
        "disk.template-released",
    ]
    failed = engine.history("vm-1/root")[2]
    assert failed.data["error"] == "simulated ENOSPC" and failed.data["removed"]
    assert engine.show("vm-1/root").state is DiskState.ABSENT
    assert engine.store.pending() == []
    assert files_under(Path(engine.templates.root)) == ["templates/base"]


def test_a_disk_with_an_operation_in_flight_refuses_another(engine: Engine, base: str) -> None:
    view = engine.create("vm-1/root", template=base)
    from diskledger.events import Metadata, NewEvent

    engine.store.append(
        "disk:vm-1/root",
        view.version,
        [
            NewEvent(
                "disk.resize.started",
                {"params": {"size": 1 << 30}, "artifacts": []},
                Metadata(op_id="crashed"),
            )
        ],
    )
    with pytest.raises(OperationPending, match="crashed"):
        engine.snapshot("vm-1/root", "s1")
    assert engine.show("vm-1/root").pending is not None


def test_every_operation_has_an_intent_and_one_outcome(
    engine: Engine, base: str, tmp_path: Path
) -> None:
    engine.create("vm-1/root", template=base)
    engine.create("vm-1/eph", size="8M")
    engine.resize("vm-1/root", "72M")
    engine.snapshot("vm-1/root", "a")
    engine.rollback("vm-1/root", "a")
    engine.export("vm-1/root", tmp_path / "e.raw")
    engine.remove_snapshot("vm-1/root", "a")
    engine.delete("vm-1/root")
    phases: dict[str, list[str]] = {}
    for event in engine.history():
        _, _, phase = split_type(event.type)
        if phase and event.metadata.op_id:
            phases.setdefault(event.metadata.op_id, []).append(phase)
    assert all(p == ["started", "completed"] for p in phases.values()), phases
    assert engine.store.pending() == []


def test_engine_on_postgresql(
    postgres_url: str, tmp_path: Path, template_files: dict[str, Path]
) -> None:
    config = Config.load(root=tmp_path / "root", ledger=postgres_url, backend="qcow2", environ={})
    with Engine.open(config) as engine:
        engine.add_template("base", template_files["raw"], "raw")
        engine.create("vm-1/root", template="base", size="96M")
        engine.snapshot("vm-1/root", "s")
        assert engine.show("vm-1/root").state is DiskState.SNAPSHOTTED
        assert engine.store.url.startswith("postgresql+psycopg://")


def test_an_artifact_the_ledger_does_not_own_is_never_adopted_or_removed(
    engine: Engine, base: str
) -> None:
    location = Path(engine.backend.disk_location("vm-1", "root"))
    location.parent.mkdir(parents=True)
    location.write_bytes(b"someone else's data")
    head = engine.store.head()
    with pytest.raises(Conflict, match="does not own"):
        engine.create("vm-1/root", template=base)
    assert location.read_bytes() == b"someone else's data"
    assert engine.store.head() == head
