"""Property tests: random operation sequences against the table, the machine and the store."""

from __future__ import annotations

import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diskledger.errors import IllegalTransition
from diskledger.events import Metadata, NewEvent
from diskledger.states import DISK_TABLE, DiskState, DiskView, evolve, fold
from diskledger.states.machine import Validator
from diskledger.store import open_store

SNAPS = ("a", "b", "c")
MACHINE = Validator(DISK_TABLE)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.integers(1, 8)),
        st.tuples(st.just("resize"), st.integers(1, 8)),
        st.tuples(
            st.sampled_from(["snapshot", "rollback", "remove-snapshot"]), st.sampled_from(SNAPS)
        ),
        st.tuples(st.sampled_from(["export", "delete"]), st.none()),
    ).flatmap(lambda op: st.tuples(st.just(op), st.booleans())),
    max_size=40,
)


def operation(
    view: DiskView, op: str, arg: Any, op_id: str, succeed: bool
) -> tuple[NewEvent, NewEvent]:
    """The intent and the outcome a well-behaved engine would record."""
    params: dict[str, Any] = {}
    if op in ("create", "resize"):
        params["size"] = arg * 512
    elif arg is not None:
        params["snapshot"] = arg
    meta = Metadata(op_id=op_id)
    started = NewEvent(f"disk.{op}.started", {"params": params, "artifacts": []}, meta)
    if not succeed:
        return started, NewEvent(f"disk.{op}.failed", {"error": "injected", "removed": []}, meta)
    data: dict[str, Any] = {}
    if op == "create":
        data = {"format": "raw", "size": params["size"], "location": "/d"}
    elif op == "resize":
        data = {"size": params["size"]}
    elif op in ("snapshot", "rollback"):
        data = {"size": view.size}
    return started, NewEvent(f"disk.{op}.completed", data, meta)


@given(steps)
@settings(max_examples=200, deadline=None)
def test_the_machine_and_evolve_agree_and_invariants_hold(
    sequence: list[tuple[tuple[str, Any], bool]],
) -> None:
    view = DiskView("vm/d")
    for n, ((op, arg), succeed) in enumerate(sequence):
        started, outcome = operation(view, op, arg, f"op-{n}", succeed)
        params = started.data["params"]
        allowed = MACHINE.target(view, started.type, params)
        try:
            after_intent = evolve(view, started)
        except IllegalTransition:
            assert allowed is None, (view.state, started.type, params)
            continue
        assert allowed == after_intent.state.value
        assert after_intent.pending is not None and after_intent.version == view.version + 1
        after = evolve(after_intent, outcome)
        assert after.pending is None and after.version == view.version + 2
        if not succeed:
            assert (after.state, after.size, after.snapshots) == (
                view.state,
                view.size,
                view.snapshots,
            )
        elif (
            after.state is not DiskState.ABSENT
            and view.size is not None
            and view.state is not DiskState.ABSENT
        ):
            assert after.size is not None and after.size >= view.size, "a disk never shrinks"
        names = after.snapshot_names
        assert len(names) == len(set(names))
        assert (after.state is DiskState.SNAPSHOTTED) == bool(names)
        view = after


@given(steps)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_stored_read_model_equals_the_fold_of_the_log(
    sequence: list[tuple[tuple[str, Any], bool]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = open_store(f"sqlite:///{directory}/ledger.db")
        try:
            view = DiskView("vm/d")
            for n, ((op, arg), succeed) in enumerate(sequence):
                started, outcome = operation(view, op, arg, f"op-{n}", succeed)
                try:
                    store.append("disk:vm/d", view.version, [started])
                except IllegalTransition:
                    continue
                store.append("disk:vm/d", view.version + 1, [outcome])
                view = fold(view, [started, outcome])
            stored = store.disk("disk:vm/d")
            if stored is not None:
                assert stored == fold(DiskView("vm/d"), store.read_stream("disk:vm/d")) == view
            assert [e.version for e in store.read_stream("disk:vm/d")] == list(
                range(1, store.head() + 1)
            )
            assert store.pending() == []
        finally:
            store.close()
