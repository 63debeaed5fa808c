"""Recovery, verify and idempotency keys through the API (the crash tests are in tests/recovery)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from diskledger.engine import Engine
from diskledger.engine.recovery import RULES, rules_markdown
from diskledger.errors import Conflict, OperationPending, StorageIOError
from diskledger.events import Metadata, NewEvent
from diskledger.faults import armed
from diskledger.states import DiskState

DEAD = "no-such-boot:999999:1"
DOCS = Path(__file__).parents[2] / "docs" / "recovery.md"


def crashed_intent(
    engine: Engine,
    disk: str,
    op: str,
    params: dict[str, object],
    artifacts: list[dict[str, object]] | None = None,
    *,
    process: str = DEAD,
    request: dict[str, object] | None = None,
) -> str:
    """Record an intent as a process that then died would have left it."""
    view = engine.show(disk)
    op_id = f"crashed-{op}"
    meta = Metadata(op_id=op_id, host=engine.host, pid=999999, process=process)
    data = {"params": params, "artifacts": artifacts or [], "request": request or {}}
    event = NewEvent(f"disk.{op}.started", data, meta)
    engine.store.append(f"disk:{disk}", view.version, [event])
    return op_id


def crashed_resize(engine: Engine, disk: str, size: int, *, process: str = DEAD) -> str:
    view = engine.show(disk)
    params = {
        "size": size,
        "previous_size": view.size,
        "location": view.location,
        "format": view.format,
    }
    return crashed_intent(engine, disk, "resize", params, process=process)


def test_a_dead_writers_resize_that_never_ran_is_rolled_back(engine: Engine, base: str) -> None:
    view = engine.create("vm-1/root", template=base)
    assert view.location and view.size
    crashed_resize(engine, "vm-1/root", view.size * 2)
    report = engine.recover()
    assert [o.decision for o in report.rolled_back] == ["roll-back"]
    assert engine.show("vm-1/root").pending is None
    assert engine.show("vm-1/root").size == view.size
    last = engine.history("vm-1/root")[-1]
    assert last.type == "disk.resize.failed" and last.data["recovery"]["decision"] == "roll-back"
    assert last.metadata.actor == "diskledger-recover" and last.metadata.causation
    assert engine.verify().ok


def test_a_dead_writers_resize_that_ran_is_rolled_forward(engine: Engine, base: str) -> None:
    view = engine.create("vm-1/root", template=base)
    assert view.location and view.size and view.format
    crashed_resize(engine, "vm-1/root", view.size * 2)
    engine.backend_of(view).resize(view.location, view.format, view.size * 2)
    report = engine.recover()
    assert [o.op for o in report.rolled_forward] == ["resize"]
    assert engine.show("vm-1/root").state is DiskState.RESIZED
    assert engine.verify().ok


def test_contradictory_evidence_needs_an_operator_and_is_reported_once(
    engine: Engine, base: str
) -> None:
    view = engine.create("vm-1/root", template=base)
    assert view.location and view.size
    crashed_resize(engine, "vm-1/root", view.size * 4)
    engine.backend_of(view).resize(view.location, view.format or "", view.size * 2)
    first = engine.recover()
    assert [o.decision for o in first.needs_operator] == ["needs-operator"]
    second = engine.recover()
    assert len(second.needs_operator) == 1
    types = [e.type for e in engine.history("vm-1/root")]
    assert types.count("disk.resize.needs-operator") == 1
    assert engine.show("vm-1/root").pending is not None


def test_a_live_writers_operation_is_left_alone(engine: Engine, base: str) -> None:
    from diskledger.engine.liveness import current_process

    view = engine.create("vm-1/root", template=base)
    crashed_resize(engine, "vm-1/root", (view.size or 0) * 2, process=current_process())
    report = engine.recover()
    assert [o.decision for o in report.in_flight] == ["in-flight"]
    assert report.rolled_back == [] and engine.show("vm-1/root").pending is not None


def test_dry_run_changes_nothing(engine: Engine, base: str) -> None:
    view = engine.create("vm-1/root", template=base)
    crashed_resize(engine, "vm-1/root", (view.size or 0) * 2)
    head = engine.store.head()
    report = engine.recover(dry_run=True)
    assert report.dry_run and len(report.rolled_back) == 1
    assert engine.store.head() == head


def test_verify_finds_orphans_and_drift(engine: Engine, base: str) -> None:
    view = engine.create("vm-1/root", template=base)
    assert engine.verify().ok
    root = Path(engine.templates.root)
    (root / "disks" / "vm-1" / "stray").write_bytes(b"x")
    report = engine.verify()
    assert not report.ok and report.orphans == [str(root / "disks" / "vm-1" / "stray")]
    (root / "disks" / "vm-1" / "stray").unlink()
    assert view.location
    Path(view.location).unlink()
    report = engine.verify()
    assert [d["problem"] for d in report.drift] == ["missing"]


def tamper(engine: Engine, *statements: str) -> None:
    """What an attacker with write access to the SQLite file does: drop the guards, then edit."""
    url = engine.store.url
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute("DROP TRIGGER events_no_delete")
        for statement in statements:
            conn.execute(statement)


@pytest.mark.parametrize(
    ("statements", "bad_position", "says"),
    [
        (
            ["UPDATE events SET data = replace(data, '67108864', '67108865') WHERE position = 4"],
            4,
            "edited",
        ),
        (["DELETE FROM events WHERE position = 3"], 4, "missing"),
        (
            [
                "UPDATE events SET position = 100 WHERE position = 3",
                "UPDATE events SET position = 3 WHERE position = 4",
                "UPDATE events SET position = 4 WHERE position = 100",
            ],
            3,
            "",
        ),
        (
            [
                "INSERT INTO events SELECT position + 1, stream_id, version + 1, type, schema, data, metadata, op_id, recorded_at, hash, hash FROM events WHERE position = (SELECT max(position) FROM events)"
            ],
            6,
            "edited",
        ),
    ],
    ids=["edited-payload", "deleted-event", "reordered-events", "forged-append"],
)
def test_verify_names_the_first_tampered_position(
    engine: Engine, base: str, statements: list[str], bad_position: int, says: str
) -> None:
    engine.create("vm-1/root", template=base)
    if not engine.store.url.startswith("sqlite"):
        pytest.skip("tampering is exercised on the SQLite file")
    tamper(engine, *statements)
    report = engine.verify()
    assert not report.ok
    assert report.first_bad_position == bad_position, report.chain_error
    assert says in (report.chain_error or "")


def test_idempotency_keys(engine: Engine, base: str) -> None:
    first = engine.create("vm-1/root", template=base, op_id="create-1")
    head = engine.store.head()
    again = engine.create("vm-1/root", template=base, op_id="create-1")
    assert again == first and engine.store.head() == head
    with pytest.raises(Conflict, match="was used for create vm-1/root"):
        engine.create("vm-1/other", template=base, op_id="create-1")
    grown = engine.resize("vm-1/root", "128M", op_id="grow-1")
    engine.resize("vm-1/root", "256M")
    assert engine.resize("vm-1/root", "128M", op_id="grow-1") == grown  # the recorded result
    request = {"op": "snapshot", "disk": "vm-1/root", "snapshot": "s"}
    crashed_intent(engine, "vm-1/root", "snapshot", {"snapshot": "s"}, request=request)
    with pytest.raises(OperationPending):
        engine.snapshot("vm-1/root", "s", op_id="crashed-snapshot")


def test_a_failed_create_from_a_template_is_not_taken_for_one_in_flight(
    engine: Engine, base: str
) -> None:
    # Its last event is the template's release, recorded after its outcome under its op id.
    with armed("create@mid-effect:eio"), pytest.raises(StorageIOError):
        engine.create("vm-1/root", template=base, op_id="create-eio")
    assert engine.history("vm-1/root")[-1].type == "disk.template-released"
    with pytest.raises(Conflict, match=r"failed: .*retry with a new op id") as refused:
        engine.create("vm-1/root", template=base, op_id="create-eio")
    assert not isinstance(refused.value, OperationPending)


def test_the_recovery_table_is_documented() -> None:
    assert rules_markdown() in DOCS.read_text(), (
        "docs/recovery.md is stale: run `python -m diskledger.engine.recovery`"
    )
    assert {r.op for r in RULES} == {
        "create",
        "resize",
        "snapshot",
        "rollback",
        "remove-snapshot",
        "delete",
        "export",
        "import",
        "flatten",
        "direct-snapshot",
        "attach",
        "detach",
        "fetch",
        "remove",
    }
