"""Removing a disk and every snapshot of it (``delete``); its history stays in the ledger.

An encrypted disk's key is destroyed after its data, inside the effect (and in recovery's finish,
idempotently), before the outcome is recorded: a crash between the two leaves the delete pending,
and recovery finishes it, key included. A disk whose key is gone is never left behind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diskledger.backends import Artifact, Backend
from diskledger.engine import encryption
from diskledger.engine.decisions import Decision, Evidence, Rule
from diskledger.engine.inputs import check_disk
from diskledger.engine.operations.base import Operation
from diskledger.engine.protocol import Plan, on_live_disk
from diskledger.engine.runtime import Runtime
from diskledger.states import DiskView, TemplateView
from diskledger.states.streams import disk_stream

__all__ = ["DELETE"]


class Delete(Operation):
    name = "delete"
    while_attached = "detach it first"
    rules = (
        # Gone by name is not always gone: an RBD image whose removal was cut short no longer
        # opens but is still listed in its pool. Removing what is left is idempotent and finishes
        # that.
        Rule(
            "delete",
            "disk and snapshots gone",
            Decision.FINISH,
            "everything was removed, or is going",
        ),
        Rule("delete", "disk and snapshots all present", Decision.BACK, "nothing was removed"),
        # Half a delete is worse than either end: removing the rest is idempotent.
        Rule("delete", "otherwise", Decision.FINISH, "part was removed: remove the rest"),
    )

    def __call__(self, rt: Runtime, disk: str, *, op_id: str | None = None) -> DiskView:
        check_disk(disk)
        request = {"op": "delete", "disk": disk}

        def plan(view: DiskView, op_id: str) -> Plan[DiskView]:
            assert view.location and view.format
            location, fmt, snapshots = view.location, view.format, view.snapshot_names
            backend = rt.backend_of(view)

            made = view.encryption

            def delete() -> dict[str, Any]:
                backend.delete(location, fmt, snapshots)
                if made is None:
                    return {}
                encryption.destroy_key(rt, made, "delete")
                return {"key_destroyed": made.key}

            params: dict[str, Any] = {
                "location": location,
                "format": fmt,
                "snapshots": list(snapshots),
                "template": view.template,
            }
            if made is not None:
                encryption.provider(rt, made.provider)  # refused here when not configured
                params["encryption"] = made.to_json()
            return Plan(
                disk_stream(disk), view, backend, op_id, params, delete, durable_effect=True
            )

        return on_live_disk(rt, self, request, op_id, plan)

    def parts(self, backend: Backend, params: Mapping[str, Any]) -> tuple[Artifact, ...]:
        location = params.get("location")
        if location is None:
            return ()
        return backend.disk_artifacts(location, tuple(params.get("snapshots", ())))

    def finish(self, rt: Runtime, backend: Backend, params: Mapping[str, Any], op_id: str) -> None:
        backend.delete(params["location"], params["format"], tuple(params.get("snapshots", ())))
        made = encryption.encryption_of(params)
        if made is not None:
            encryption.destroy_key(rt, made, "delete")

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        made = encryption.encryption_of(params)
        return {"key_destroyed": made.key} if made is not None else {}


DELETE = Delete()
