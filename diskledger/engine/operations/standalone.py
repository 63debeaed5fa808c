"""Making data standalone, where the storage supports it (RBD): ``flatten`` copies into a clone
what it shares with its template; ``direct-snapshot`` hands a standalone copy of a disk to the
snapshot pool, the way Nova gives Glance an image without a download."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diskledger.backends import Backend, Capability, DirectSnapshots, Flattens
from diskledger.engine.decisions import Decision, Evidence, Rule
from diskledger.engine.inputs import check_disk, check_name, check_snapshot
from diskledger.engine.operations.base import Operation, disk_parts
from diskledger.engine.protocol import (
    Plan,
    live_disk,
    new_op_id,
    on_live_disk,
    perform,
    repeated,
)
from diskledger.engine.runtime import Runtime
from diskledger.errors import InvalidInput
from diskledger.states import DiskView, TemplateView
from diskledger.states.streams import disk_stream

__all__ = ["DIRECT_SNAPSHOT", "FLATTEN", "DirectSnapshot"]


@dataclass(frozen=True, slots=True)
class DirectSnapshot:
    """A copy of a disk handed to the snapshot pool by ``Engine.direct_snapshot``."""

    disk: str
    url: str
    """``rbd://<fsid>/<pool>/<image>/snap``, the location Glance records."""
    size: int

    def to_json(self) -> dict[str, Any]:
        """The direct snapshot as JSON-ready data."""
        return {"disk": self.disk, "url": self.url, "size": self.size}


class Flatten(Operation):
    name = "flatten"
    while_attached = "detach it first"
    rules = (
        # librbd flattens in place and the result is the same however often it runs.
        Rule("flatten", "disk exists", Decision.FINISH, "a flatten is idempotent: run to the end"),
        Rule("flatten", "otherwise", Decision.OPERATOR, "the disk is missing"),
    )

    def __call__(self, rt: Runtime, disk: str, *, op_id: str | None = None) -> DiskView:
        check_disk(disk)
        request = {"op": "flatten", "disk": disk}

        def plan(view: DiskView, op_id: str) -> Plan[DiskView]:
            assert view.location and view.format
            backend = rt.backend_of(view)
            if Capability.FLATTEN not in backend.capabilities or not isinstance(backend, Flattens):
                raise InvalidInput(f"the {backend.name} backend cannot flatten a disk")
            flattens: Flattens = backend
            location, fmt = view.location, view.format

            def flatten() -> dict[str, Any]:
                seen = flattens.flatten(location, fmt)
                return {"size": seen.size, "backing": seen.backing}

            params = {"location": location, "format": fmt, "size": view.size}
            return Plan(disk_stream(disk), view, backend, op_id, params, flatten)

        return on_live_disk(rt, self, request, op_id, plan)

    parts = disk_parts

    def finish(self, rt: Runtime, backend: Backend, params: Mapping[str, Any], op_id: str) -> None:
        assert isinstance(backend, Flattens)
        backend.flatten(params["location"], params["format"])

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        (disk,) = backend.probe(backend.disk_artifacts(params["location"], ()))
        return {"size": disk.size, "backing": disk.backing}


class DirectSnapshotDisk(Operation):
    name = "direct-snapshot"
    publishes = True
    while_attached = "this backend cannot copy a disk a guest is writing; detach it first"
    in_use_snapshot = True
    rules = (
        # The copy is renamed into the image pool only after it was flattened and snapshotted;
        # the disk's short-lived snapshot is a temporary either way and goes.
        Rule(
            "direct-snapshot",
            "final names exist",
            Decision.FORWARD,
            "the copy was published whole",
        ),
        Rule(
            "direct-snapshot",
            "final names missing",
            Decision.BACK,
            "the copy was never published",
        ),
    )

    def __call__(
        self, rt: Runtime, disk: str, snapshot: str, image_id: str, *, op_id: str | None = None
    ) -> DirectSnapshot:
        check_disk(disk)
        check_snapshot(snapshot)
        check_name(image_id, "image id")
        request = {
            "op": "direct-snapshot",
            "disk": disk,
            "snapshot": snapshot,
            "image_id": image_id,
        }
        if (done := repeated(rt, op_id, request)) is not None:
            return DirectSnapshot(disk, done.data["url"], done.data["size"])
        view = live_disk(rt, disk, self)
        assert view.location and view.format and view.size is not None
        if view.snapshot(snapshot) is not None:
            raise InvalidInput(f"disk {disk} already has a snapshot {snapshot!r}")
        backend = rt.backend_of(view)
        if Capability.DIRECT_SNAPSHOT not in backend.capabilities or not isinstance(
            backend, DirectSnapshots
        ):
            raise InvalidInput(f"the {backend.name} backend cannot direct-snapshot a disk")
        direct: DirectSnapshots = backend
        location, fmt, size = view.location, view.format, view.size
        op_id = op_id or new_op_id()
        url = direct.direct_snapshot_url(image_id)
        params = {
            "location": location,
            "format": fmt,
            "snapshot": snapshot,
            "image_id": image_id,
            "url": url,
            "size": size,
        }

        def copy() -> dict[str, Any]:
            return {
                "url": direct.direct_snapshot(location, fmt, snapshot, image_id, op_id),
                "size": size,
            }

        artifacts = direct.direct_snapshot_artifacts(location, snapshot, image_id, op_id)
        plan = Plan(disk_stream(disk), view, backend, op_id, params, copy, artifacts)
        _, data = perform(rt, self, plan, request)
        return DirectSnapshot(disk, data["url"], data["size"])

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        return {"url": params["url"], "size": params["size"]}


FLATTEN = Flatten()
DIRECT_SNAPSHOT = DirectSnapshotDisk()
