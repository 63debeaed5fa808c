"""A disk's snapshots: take one (``snapshot``), revert to one (``rollback``), remove one
(``remove-snapshot``).

Where snapshots live is the backend's business (inside a qcow2 image, beside a raw file, in the
RBD image); what the ledger keeps is their names and the size the disk had when each was taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diskledger.backends import Artifact, Backend
from diskledger.engine import encryption
from diskledger.engine.decisions import Decision, Rule
from diskledger.engine.inputs import check_disk, check_snapshot
from diskledger.engine.operations.base import Operation, disk_parts, observed_size
from diskledger.engine.protocol import Plan, existing_snapshot, on_live_disk
from diskledger.engine.runtime import Runtime
from diskledger.errors import IllegalTransition
from diskledger.states import DiskView
from diskledger.states.streams import disk_stream

__all__ = ["REMOVE_SNAPSHOT", "ROLLBACK", "SNAPSHOT"]

FORWARD, FINISH, BACK, OPERATOR = Decision


class Snapshot(Operation):
    name = "snapshot"
    opens_disk = True
    while_attached = (
        "this backend cannot snapshot a disk a guest is writing (a qcow2 internal snapshot "
        "needs the whole domain's state, a raw copy would be torn); detach it first, or "
        "snapshot the domain through libvirt"
    )
    in_use_snapshot = True
    rules = (
        Rule("snapshot", "final names exist", FORWARD, "the snapshot was taken"),
        Rule("snapshot", "final names missing", BACK, "the snapshot was never published"),
    )

    def __call__(
        self, rt: Runtime, disk: str, snapshot: str, *, op_id: str | None = None
    ) -> DiskView:
        check_disk(disk)
        check_snapshot(snapshot)
        request = {"op": "snapshot", "disk": disk, "snapshot": snapshot}

        def plan(view: DiskView, op_id: str) -> Plan[DiskView]:
            if view.snapshot(snapshot) is not None:
                raise IllegalTransition(
                    disk_stream(disk),
                    view.state,
                    "disk.snapshot.started",
                    f"snapshot {snapshot!r} exists",
                )
            assert view.location and view.format
            location, fmt = view.location, view.format
            backend = rt.backend_of(view)
            made = encryption.usable(rt, view)

            def take() -> dict[str, Any]:
                with encryption.keyed(rt, made, backend) as keyed:
                    return {"size": keyed.snapshot(location, fmt, snapshot, op_id).size}

            return Plan(
                disk_stream(disk),
                view,
                backend,
                op_id,
                {"snapshot": snapshot, "location": location, "format": fmt},
                take,
                backend.snapshot_artifacts(location, snapshot, op_id),
                durable_effect=True,
            )

        return on_live_disk(rt, self, request, op_id, plan)

    recovered = observed_size


class Rollback(Operation):
    name = "rollback"
    opens_disk = True
    while_attached = "reverting it would change the data under the running guest; detach it first"
    rules = (
        # A raw rollback publishes by renaming its temporary copy over the disk: while the copy
        # survives, the disk was not touched.
        Rule(
            "rollback", "a temporary name survives", BACK, "the reverted copy was never published"
        ),
        # Otherwise the disk may or may not hold the snapshot's data (qcow2 reverts in place), and
        # the old data is gone if it does: running the rollback again is the only way to a known
        # state.
        Rule("rollback", "disk exists", FINISH, "a rollback is idempotent: run to the end"),
        Rule("rollback", "otherwise", OPERATOR, "the disk is missing"),
    )

    def __call__(
        self, rt: Runtime, disk: str, snapshot: str, *, op_id: str | None = None
    ) -> DiskView:
        check_disk(disk)
        check_snapshot(snapshot)
        request = {"op": "rollback", "disk": disk, "snapshot": snapshot}

        def plan(view: DiskView, op_id: str) -> Plan[DiskView]:
            existing_snapshot(disk, view, snapshot)
            assert view.location and view.format and view.size is not None
            location, fmt, size = view.location, view.format, view.size
            backend = rt.backend_of(view)
            made = encryption.usable(rt, view)

            def revert() -> dict[str, Any]:
                with encryption.keyed(rt, made, backend) as keyed:
                    return {"size": keyed.rollback(location, fmt, snapshot, op_id, size=size).size}

            return Plan(
                disk_stream(disk),
                view,
                backend,
                op_id,
                {"snapshot": snapshot, "location": location, "format": fmt, "size": size},
                revert,
                backend.rollback_artifacts(location, snapshot, op_id),
            )

        return on_live_disk(rt, self, request, op_id, plan)

    parts = disk_parts

    def finish(self, rt: Runtime, backend: Backend, params: Mapping[str, Any], op_id: str) -> None:
        backend.rollback(
            params["location"], params["format"], params["snapshot"], op_id, size=params["size"]
        )

    recovered = observed_size


class RemoveSnapshot(Operation):
    name = "remove-snapshot"
    opens_disk = True
    while_attached = "qemu holds the image open; detach it first"
    in_use_snapshot = True
    rules = (
        # Gone by name is not always gone: librbd moves a snapshot it removes to the trash first,
        # and a removal cut short leaves it there. Removing it again is idempotent and finishes
        # that.
        Rule(
            "remove-snapshot",
            "snapshot gone, disk present",
            FINISH,
            "the snapshot is gone or going: remove the rest",
        ),
        Rule("remove-snapshot", "snapshot and disk present", BACK, "the snapshot is still there"),
        Rule("remove-snapshot", "otherwise", OPERATOR, "the disk is missing"),
    )

    def __call__(
        self, rt: Runtime, disk: str, snapshot: str, *, op_id: str | None = None
    ) -> DiskView:
        check_disk(disk)
        check_snapshot(snapshot)
        request = {"op": "remove-snapshot", "disk": disk, "snapshot": snapshot}

        def plan(view: DiskView, op_id: str) -> Plan[DiskView]:
            existing_snapshot(disk, view, snapshot)
            assert view.location and view.format
            location, fmt = view.location, view.format
            backend = rt.backend_of(view)
            made = encryption.usable(rt, view)

            def remove() -> dict[str, Any]:
                with encryption.keyed(rt, made, backend) as keyed:
                    keyed.remove_snapshot(location, fmt, snapshot)
                return {}

            params = {"snapshot": snapshot, "location": location, "format": fmt}
            return Plan(
                disk_stream(disk), view, backend, op_id, params, remove, durable_effect=True
            )

        return on_live_disk(rt, self, request, op_id, plan)

    def parts(self, backend: Backend, params: Mapping[str, Any]) -> tuple[Artifact, ...]:
        location = params.get("location")
        if location is None:
            return ()
        return backend.disk_artifacts(location, (params["snapshot"],))

    def finish(self, rt: Runtime, backend: Backend, params: Mapping[str, Any], op_id: str) -> None:
        backend.remove_snapshot(params["location"], params["format"], params["snapshot"])


SNAPSHOT = Snapshot()
ROLLBACK = Rollback()
REMOVE_SNAPSHOT = RemoveSnapshot()
