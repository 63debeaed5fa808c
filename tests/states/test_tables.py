"""The lifecycle tables, table by table: every row, every state, and the diagram in the docs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from diskledger.errors import IllegalTransition
from diskledger.events import Metadata, NewEvent
from diskledger.states import (
    DISK_TABLE,
    MEMBER_TABLE,
    TEMPLATE_TABLE,
    Attachment,
    DiskState,
    DiskView,
    MemberState,
    MemberView,
    Snapshot,
    TemplateState,
    TemplateView,
    evolve,
    fold,
)
from diskledger.states.machine import Validator, states_markdown

DOCS = Path(__file__).parents[2] / "docs" / "states.md"


def ev(event_type: str, op_id: str = "op", **data: Any) -> NewEvent:
    return NewEvent(event_type, data, Metadata(op_id=op_id))


def intent(op: str, op_id: str = "op", **params: Any) -> NewEvent:
    return ev(f"disk.{op}.started", op_id, params=params, artifacts=[])


def test_disk_states_are_exactly_the_lifecycle() -> None:
    assert [s.value for s in DiskState] == [
        "absent",
        "template-cached",
        "created",
        "resized",
        "snapshotted",
    ]
    assert [s.value for s in TemplateState] == ["absent", "fetching", "cached"]


def test_every_state_is_reachable_and_every_live_state_can_be_deleted() -> None:
    reachable = {DISK_TABLE.initial}
    for _ in DiskState:
        reachable |= {t.dest for t in DISK_TABLE.transitions if t.source in reachable}
    assert reachable == set(DiskState)
    deletable = {
        t.source for t in DISK_TABLE.transitions if t.event_type == "disk.delete.completed"
    }
    assert deletable == {DiskState.CREATED, DiskState.RESIZED, DiskState.SNAPSHOTTED}


def test_every_operation_row_expands_to_the_protocol_phases() -> None:
    for table in (DISK_TABLE, TEMPLATE_TABLE):
        for row in table.rows:
            types = {
                t.event_type
                for t in table.transitions
                if t.event_type.startswith(f"{table.kind}.{row.op}")
            }
            if row.fact:
                assert types == {f"{table.kind}.{row.op}"}
            else:
                phases = [
                    "started",
                    "completed",
                    "failed",
                    "needs-operator",
                    "taken-over",
                    "compensating",
                ]
                if row.leased:
                    phases.append("lease-renewed")
                assert types == {f"{table.kind}.{row.op}.{p}" for p in phases}


# (state, snapshots, resized, event, params, expected destination or None for refused)
DISK_CASES = [
    (DiskState.ABSENT, (), False, "disk.template-bound", {}, DiskState.TEMPLATE_CACHED),
    (DiskState.TEMPLATE_CACHED, (), False, "disk.template-released", {}, DiskState.ABSENT),
    (DiskState.ABSENT, (), False, "disk.create.started", {}, DiskState.ABSENT),
    (DiskState.TEMPLATE_CACHED, (), False, "disk.create.started", {}, DiskState.TEMPLATE_CACHED),
    (DiskState.CREATED, (), False, "disk.create.started", {}, None),
    (DiskState.ABSENT, (), False, "disk.snapshot.started", {"snapshot": "s"}, None),
    (DiskState.ABSENT, (), False, "disk.resize.started", {"size": 10}, None),
    (DiskState.CREATED, (), False, "disk.resize.started", {"size": 10}, DiskState.CREATED),
    (DiskState.CREATED, (), False, "disk.resize.started", {"size": 1}, None),  # would shrink
    (DiskState.CREATED, (), False, "disk.snapshot.started", {"snapshot": "s"}, DiskState.CREATED),
    (DiskState.SNAPSHOTTED, ("s",), False, "disk.snapshot.started", {"snapshot": "s"}, None),
    (
        DiskState.SNAPSHOTTED,
        ("s",),
        False,
        "disk.rollback.started",
        {"snapshot": "s"},
        DiskState.SNAPSHOTTED,
    ),
    (DiskState.SNAPSHOTTED, ("s",), False, "disk.rollback.started", {"snapshot": "x"}, None),
    (DiskState.CREATED, (), False, "disk.rollback.started", {"snapshot": "s"}, None),
    (DiskState.CREATED, (), False, "disk.remove-snapshot.started", {"snapshot": "s"}, None),
    (DiskState.CREATED, (), False, "disk.delete.started", {}, DiskState.CREATED),
    (DiskState.TEMPLATE_CACHED, (), False, "disk.delete.started", {}, None),
    (DiskState.ABSENT, (), False, "disk.export.started", {}, None),
]


@pytest.mark.parametrize(("state", "snaps", "resized", "event_type", "params", "dest"), DISK_CASES)
def test_disk_table_row_by_row(
    state: DiskState,
    snaps: tuple[str, ...],
    resized: bool,
    event_type: str,
    params: dict[str, Any],
    dest: DiskState | None,
) -> None:
    view = DiskView(
        "i/d", state=state, size=5, snapshots=tuple(Snapshot(s, 5) for s in snaps), resized=resized
    )
    machine = Validator(DISK_TABLE)
    assert machine.target(view, event_type, params) == (dest.value if dest else None)
    data = {"params": params, "artifacts": []} if event_type.endswith(".started") else params
    event = ev(event_type, **data)
    if dest is None:
        with pytest.raises(IllegalTransition):
            evolve(view, event)
    else:
        assert evolve(view, event).state is dest


@pytest.mark.parametrize(
    ("snaps", "resized", "dest"),
    [
        (("a", "b"), False, DiskState.SNAPSHOTTED),
        (("a",), True, DiskState.RESIZED),
        (("a",), False, DiskState.CREATED),
    ],
)
def test_removing_a_snapshot_returns_to_the_state_the_guards_choose(
    snaps: tuple[str, ...], resized: bool, dest: DiskState
) -> None:
    view = DiskView(
        "i/d",
        state=DiskState.SNAPSHOTTED,
        size=5,
        snapshots=tuple(Snapshot(s, 5) for s in snaps),
        resized=resized,
    )
    view = fold(
        view, [intent("remove-snapshot", snapshot="a"), ev("disk.remove-snapshot.completed")]
    )
    assert view.state is dest
    assert "a" not in view.snapshot_names


def test_a_whole_disk_life_folds_to_the_expected_views() -> None:
    life = [
        ev("disk.template-bound", "c", template="base"),
        intent("create", "c", template="base", size=10),
        ev("disk.create.completed", "c", format="qcow2", size=10, location="/d", backing="/t"),
        intent("resize", "r", size=20),
        ev("disk.resize.completed", "r", size=20),
        intent("snapshot", "s", snapshot="s1"),
        ev("disk.snapshot.completed", "s", size=20),
        intent("delete", "x"),
        ev("disk.delete.completed", "x"),
    ]
    states = []
    view = DiskView("i/d")
    for event in life:
        view = evolve(view, event)
        states.append(view.state.value)
    assert states == [
        "template-cached",
        "template-cached",
        "created",
        "created",
        "resized",
        "resized",
        "snapshotted",
        "snapshotted",
        "absent",
    ]
    assert view.version == len(life) and view.pending is None and view.size is None


def test_an_outcome_must_match_the_pending_operation() -> None:
    view = fold(DiskView("i/d"), [intent("create", "op-1", size=1)])
    with pytest.raises(IllegalTransition, match="no such operation pending"):
        evolve(view, ev("disk.create.completed", "op-2", format="raw", size=1, location="/d"))
    with pytest.raises(IllegalTransition, match="pending"):
        evolve(view, intent("create", "op-3", size=1))


def test_template_table() -> None:
    view = TemplateView("base")
    fetching = evolve(
        view,
        NewEvent("template.fetch.started", {"params": {}, "artifacts": []}, Metadata(op_id="f")),
    )
    assert fetching.state is TemplateState.FETCHING
    failed = evolve(
        fetching, NewEvent("template.fetch.failed", {"error": "x"}, Metadata(op_id="f"))
    )
    assert failed.state is TemplateState.ABSENT
    cached = evolve(
        fetching,
        NewEvent(
            "template.fetch.completed",
            {"format": "raw", "virtual_size": 1, "location": "/t"},
            Metadata(op_id="f"),
        ),
    )
    assert cached.state is TemplateState.CACHED
    with pytest.raises(IllegalTransition):
        evolve(
            cached,
            NewEvent(
                "template.fetch.started", {"params": {}, "artifacts": []}, Metadata(op_id="g")
            ),
        )
    machine = Validator(TEMPLATE_TABLE)
    assert machine.target(cached, "template.fetch.started", {}) is None
    assert machine.target(view, "template.fetch.started", {}) == "fetching"


def test_the_machine_and_evolve_agree_on_every_state_and_event() -> None:
    machine = Validator(DISK_TABLE)
    for state in DiskState:
        for snaps in ((), ("s",), ("s", "t")):
            view = DiskView(
                "i/d", state=state, size=5, snapshots=tuple(Snapshot(s, 5) for s in snaps)
            )
            for event_type in sorted(DISK_TABLE.event_types):
                if not (
                    event_type.endswith(".started") or "." not in event_type.removeprefix("disk.")
                ):
                    continue
                params = {"snapshot": "s", "size": 10}
                data = (
                    {"params": params, "artifacts": []}
                    if event_type.endswith(".started")
                    else params
                )
                try:
                    got: str | None = evolve(view, ev(event_type, **data)).state.value
                except IllegalTransition:
                    got = None
                assert machine.target(view, event_type, params) == got, (state, snaps, event_type)


def test_docs_diagram_is_generated_from_the_tables() -> None:
    assert DOCS.read_text() == states_markdown(), (
        "docs/states.md is stale: run `python -m diskledger.states.machine > docs/states.md`"
    )


def test_needs_operator_keeps_the_operation_pending() -> None:
    view = fold(DiskView("i/d"), [intent("create", "op-1", size=512)])
    held = evolve(view, ev("disk.create.needs-operator", "op-1", reason="contradiction"))
    assert held.pending == view.pending and held.state is view.state
    with pytest.raises(IllegalTransition):
        evolve(held, intent("delete", "op-2"))
    done = evolve(held, ev("disk.create.completed", "op-1", format="raw", size=512, location="/d"))
    assert done.state is DiskState.CREATED and done.pending is None


ATTACHED = Attachment("guest-1", "6f1c2d0e-0000-4000-8000-000000000001", "vdb", "virtio")

# (attached?, event, params, allowed?): attachment is a fact beside the lifecycle state; what
# would change the disk under a running guest is refused by the table itself.
ATTACHMENT_CASES = [
    (False, "disk.attach.started", {}, True),
    (True, "disk.attach.started", {}, False),  # one domain at a time
    (True, "disk.detach.started", {}, True),
    (False, "disk.detach.started", {}, False),
    (True, "disk.delete.started", {}, False),
    (True, "disk.rollback.started", {"snapshot": "s"}, False),
    (False, "disk.rollback.started", {"snapshot": "s"}, True),
    (True, "disk.resize.started", {"size": 10}, True),  # live, through the hypervisor
    (True, "disk.snapshot.started", {"snapshot": "t"}, True),  # the engine asks the backend
]


@pytest.mark.parametrize(("attached", "event_type", "params", "allowed"), ATTACHMENT_CASES)
def test_attachment_rows(
    attached: bool, event_type: str, params: dict[str, Any], allowed: bool
) -> None:
    view = DiskView(
        "i/d",
        state=DiskState.SNAPSHOTTED,
        size=5,
        snapshots=(Snapshot("s", 5),),
        attachment=ATTACHED if attached else None,
    )
    target = Validator(DISK_TABLE).target(view, event_type, params)
    assert (target == DiskState.SNAPSHOTTED.value) is allowed


def test_attach_and_detach_fold_into_the_view_and_keep_the_state() -> None:
    view = DiskView("i/d", state=DiskState.RESIZED, size=5, resized=True)
    view = evolve(view, ev("disk.attach.started", params={}, artifacts=[]))
    assert view.pending is not None and view.attachment is None
    view = evolve(view, ev("disk.attach.completed", **ATTACHED.to_json()))
    assert view.attachment == ATTACHED and view.state is DiskState.RESIZED
    assert DiskView.from_json(view.to_json()) == view
    view = evolve(view, ev("disk.detach.started", params={}, artifacts=[]))
    view = evolve(view, ev("disk.detach.completed"))
    assert view.attachment is None and view.state is DiskState.RESIZED and view.pending is None


# (state, event, expected destination or None for refused): every row of the member table.
MEMBER_CASES = [
    (MemberState.ABSENT, "member.joined", MemberState.LIVE),
    (MemberState.LIVE, "member.joined", None),  # an epoch is given once
    (MemberState.LIVE, "member.client-added", MemberState.LIVE),
    (MemberState.FENCING, "member.client-added", None),  # a member being fenced adds nothing
    (MemberState.LIVE, "member.left", MemberState.LEFT),
    (MemberState.FENCING, "member.left", None),  # too late to leave cleanly
    (MemberState.LIVE, "member.fencing", MemberState.FENCING),
    (MemberState.FENCING, "member.fencing", MemberState.FENCING),  # its fencer died
    (MemberState.FENCED, "member.fencing", None),
    (MemberState.LEFT, "member.fencing", None),
    (MemberState.FENCING, "member.fenced", MemberState.FENCED),
    (MemberState.LIVE, "member.fenced", None),  # fenced only after `fencing` was recorded
    (MemberState.LIVE, "member.confirmed-down", MemberState.LIVE),
    (MemberState.FENCED, "member.confirmed-down", MemberState.FENCED),
    (MemberState.LIVE, "member.takeover-suspended", MemberState.LIVE),
    (MemberState.FENCING, "member.takeover-suspended", None),
]


@pytest.mark.parametrize(("state", "event_type", "expected"), MEMBER_CASES)
def test_member_table_row_by_row(
    state: MemberState, event_type: str, expected: MemberState | None
) -> None:
    view = MemberView("h/1", state=state)
    target = Validator(MEMBER_TABLE).target(view, event_type, {})
    assert target == (expected.value if expected else None)


def test_a_member_life_folds_to_the_expected_views() -> None:
    view = evolve(
        MemberView("h/1"),
        ev("member.joined", host="h", boot_id="b", pid=7, lease_ttl=3.0, ceph_clients=["a:1/2"]),
    )
    assert view.state is MemberState.LIVE and view.host == "h" and view.lease_ttl == 3.0
    view = evolve(view, ev("member.client-added", addresses=["a:1/2", "a:1/3"]))
    assert view.ceph_clients == ("a:1/2", "a:1/3")
    view = evolve(view, ev("member.fencing", by="g/2", by_epoch=9, reason="lease expired"))
    assert view.fencing_by == {"member": "g/2", "epoch": 9}
    view = evolve(view, ev("member.fenced", blocklisted=["a:1/2", "a:1/3"], osdmap_epoch=4))
    assert view.state is MemberState.FENCED and view.fence is not None
    assert MemberView.from_json(view.to_json()) == view
    with pytest.raises(IllegalTransition):
        evolve(view, ev("member.client-added", addresses=["a:1/4"]))


def test_a_takeover_changes_the_owner_and_keeps_the_operation_pending() -> None:
    view = DiskView("i/d", state=DiskState.CREATED, size=5)
    owner = {"member": "h/1", "epoch": 3}
    view = evolve(view, ev("disk.resize.started", params={"size": 9}, artifacts=[], owner=owner))
    assert view.pending is not None and view.pending.owner == owner
    view = evolve(view, ev("disk.resize.taken-over", by="g/2", by_epoch=8, **{"from": "h/1"}))
    assert view.pending is not None and view.pending.owner == {"member": "g/2", "epoch": 8}
    assert view.state is DiskState.CREATED
    view = evolve(view, ev("disk.resize.compensating"))
    assert view.pending is not None
    view = evolve(view, ev("disk.resize.failed", error="x"))
    assert view.pending is None and view.state is DiskState.CREATED
