"""Writing a standalone copy of a disk to a new file (``export``); the disk is unchanged."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diskledger.backends import Backend
from diskledger.engine import encryption
from diskledger.engine.decisions import Decision, Evidence, Rule
from diskledger.engine.inputs import check_disk
from diskledger.engine.operations.base import Operation
from diskledger.engine.operations.templates import FORMATS
from diskledger.engine.protocol import Plan, live_disk, new_op_id, perform, repeated
from diskledger.engine.runtime import Runtime
from diskledger.errors import InvalidInput
from diskledger.states import DiskView, TemplateView
from diskledger.states.streams import disk_stream

__all__ = ["EXPORT", "Export"]


@dataclass(frozen=True, slots=True)
class Export:
    """A standalone copy of a disk written by ``Engine.export``."""

    disk: str
    target: str
    format: str
    size: int

    def to_json(self) -> dict[str, Any]:
        """The export as JSON-ready data."""
        return {"disk": self.disk, "target": self.target, "format": self.format, "size": self.size}


class ExportDisk(Operation):
    name = "export"
    publishes = True
    while_attached = (
        "a copy of a disk the guest is writing is not consistent; detach it first "
        "(on rbd, direct-snapshot copies it crash-consistently)"
    )
    rules = (
        Rule("export", "final names exist", Decision.FORWARD, "the export was published whole"),
        Rule("export", "final names missing", Decision.BACK, "the export was never published"),
    )

    def __call__(
        self,
        rt: Runtime,
        disk: str,
        target: str | os.PathLike[str],
        fmt: str | None = None,
        *,
        op_id: str | None = None,
    ) -> Export:
        check_disk(disk)
        request = {
            "op": "export",
            "disk": disk,
            "target": str(Path(target).absolute()),
            "format": fmt,
        }
        if (done := repeated(rt, op_id, request)) is not None:
            return Export(disk, done.data["target"], done.data["format"], done.data["size"])
        view = live_disk(rt, disk, self)
        assert view.location and view.format
        # A copy outside the key's protection is a decision of its own (docs/encryption.md).
        encryption.refuse_encrypted(view, "export would write its data out unencrypted; refused")
        out_format = fmt or view.format
        if out_format not in FORMATS:
            raise InvalidInput(f"export format {out_format!r} is not one of {', '.join(FORMATS)}")
        target_path = str(_new_file_target(Path(target)))
        location, disk_format = view.location, view.format
        backend = rt.backend_of(view)
        op_id = op_id or new_op_id()
        params = {"target": target_path, "format": out_format, "location": location}

        def export() -> dict[str, Any]:
            seen = backend.export(location, disk_format, target_path, out_format, op_id)
            return {"target": target_path, "format": out_format, "size": seen.size}

        artifacts = backend.export_artifacts(target_path, op_id)
        plan = Plan(
            disk_stream(disk), view, backend, op_id, params, export, artifacts, durable_effect=True
        )
        _, data = perform(rt, self, plan, request)
        return Export(disk=disk, target=target_path, format=out_format, size=data["size"])

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        assert isinstance(view, DiskView)
        return {"target": params["target"], "format": params["format"], "size": view.size}


def _new_file_target(path: Path) -> Path:
    """An absolute export target that does not exist yet, in a directory that does."""
    path = path.absolute()
    if path.exists() or path.is_symlink():
        raise InvalidInput(f"export target {str(path)!r} already exists")
    if not path.parent.is_dir():
        raise InvalidInput(f"export target directory {str(path.parent)!r} does not exist")
    return path


EXPORT = ExportDisk()
