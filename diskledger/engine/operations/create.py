"""Making a disk: from a cached template or blank (``create``), or from a local image (``import``).

Both publish the new disk by an atomic rename (file rename, RBD rename), so a final name that
exists holds a whole disk; both record what the published disk looks like.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diskledger.backends import Backend, ChecksCapacity, Observation, TemplateSource
from diskledger.engine.decisions import Decision, Evidence, Rule
from diskledger.engine.inputs import check_disk, parse_size, readable_file
from diskledger.engine.operations.base import Operation
from diskledger.engine.operations.templates import FORMATS, cached_template
from diskledger.engine.protocol import (
    Plan,
    disk_after,
    disk_view,
    new_op_id,
    perform,
    refuse_pending,
    repeated,
)
from diskledger.engine.runtime import Runtime
from diskledger.errors import IllegalTransition, InvalidInput, InvalidSize
from diskledger.events import NewEvent
from diskledger.states import DiskState, DiskView, TemplateView
from diskledger.states.streams import disk_stream

__all__ = ["CREATE", "IMPORT", "created"]

FORWARD, BACK, OPERATOR = Decision.FORWARD, Decision.BACK, Decision.OPERATOR


def created(seen: Observation) -> dict[str, Any]:
    """What a create's or import's ``completed`` records: the published disk."""
    return {
        "format": seen.format,
        "size": seen.size,
        "backing": seen.backing,
        "location": seen.artifact.location,
        "allocated": seen.allocated,
    }


class _Publishes(Operation):
    publishes = True

    def recovered(
        self,
        rt: Runtime,
        backend: Backend,
        params: Mapping[str, Any],
        view: DiskView | TemplateView,
        evidence: Evidence,
    ) -> dict[str, Any]:
        (seen,) = evidence.finals
        return created(seen)


class Create(_Publishes):
    name = "create"
    rules = (
        # Publication is an atomic rename: a final name that exists holds a whole disk.
        Rule("create", "created as asked", FORWARD, "the disk was published whole"),
        Rule("create", "final names missing", BACK, "the disk was never published"),
        # A published disk of another size or format is not ours to adopt or to delete.
        Rule("create", "otherwise", OPERATOR, "a disk is published but not as the intent asked"),
    )

    def __call__(
        self,
        rt: Runtime,
        disk: str,
        *,
        template: str | None = None,
        size: int | str | None = None,
        op_id: str | None = None,
    ) -> DiskView:
        check_disk(disk)
        stream = disk_stream(disk)
        asked = None if size in (None, 0, "0") else parse_size(size)
        request = {"op": "create", "disk": disk, "template": template, "size": asked}
        if (done := repeated(rt, op_id, request)) is not None:
            return disk_after(rt, done)
        view = _absent(rt, disk, "disk.create.started")
        op_id = op_id or new_op_id()
        source: TemplateSource | None = None
        prelude: list[NewEvent] = []
        if template is None:
            if size is None:
                raise InvalidSize("a blank disk needs a size")
            wanted: int | None = parse_size(size)
        else:
            cached = cached_template(rt, template)
            assert cached.location and cached.format and cached.virtual_size is not None
            source = TemplateSource(cached.location, cached.format, cached.virtual_size)
            wanted = asked
            if wanted is not None and wanted < source.virtual_size:
                raise InvalidSize(
                    f"size {wanted} is smaller than template {template}'s virtual size "
                    f"{source.virtual_size}"
                )
            prelude.append(_bind(rt, template, cached, op_id))
        backend = rt.backend
        location = backend.disk_location(*disk.split("/"))
        size_needed = wanted or (source.virtual_size if source else None)
        if isinstance(backend, ChecksCapacity) and size_needed is not None:
            backend.check_capacity(size_needed)  # a disk that cannot fit is refused unrecorded
        params = {
            "disk": disk,
            "template": template,
            "size": size_needed,
            "format": backend.disk_format,
            "backend": backend.name,
            "location": location,
            "preallocated": backend.preallocates,
        }

        def create() -> dict[str, Any]:
            return created(backend.create(location, op_id, size=wanted, template=source))

        plan = Plan(
            stream,
            view,
            backend,
            op_id,
            params,
            create,
            backend.create_artifacts(location, op_id),
            prelude,
        )
        return perform(rt, self, plan, request)[0]


class Import(_Publishes):
    name = "import"
    rules = (
        # An import publishes by renaming, as a create does; its size is known only afterwards.
        Rule("import", "final names exist", FORWARD, "the disk was published whole"),
        Rule("import", "final names missing", BACK, "the disk was never published"),
    )

    def __call__(
        self,
        rt: Runtime,
        disk: str,
        source: str | os.PathLike[str],
        fmt: str,
        *,
        op_id: str | None = None,
    ) -> DiskView:
        check_disk(disk)
        if fmt not in FORMATS:
            raise InvalidInput(f"import format {fmt!r} is not one of {', '.join(FORMATS)}")
        request = {"op": "import", "disk": disk, "source": str(source), "format": fmt}
        if (done := repeated(rt, op_id, request)) is not None:
            return disk_after(rt, done)
        view = _absent(rt, disk, "disk.import.started")
        source_path = readable_file(Path(source))
        op_id = op_id or new_op_id()
        backend = rt.backend
        location = backend.disk_location(*disk.split("/"))
        params = {
            "disk": disk,
            "source": str(source_path),
            "source_format": fmt,
            "format": backend.disk_format,
            "location": location,
            "preallocated": backend.preallocates,
        }

        def import_() -> dict[str, Any]:
            seen = backend.import_file(
                location, op_id, str(source_path), fmt, max_virtual_size=rt.max_image_size
            )
            return created(seen)

        artifacts = backend.import_artifacts(location, op_id)
        plan = Plan(disk_stream(disk), view, backend, op_id, params, import_, artifacts)
        return perform(rt, self, plan, request)[0]


def _absent(rt: Runtime, disk: str, event_type: str) -> DiskView:
    """The view of ``disk``, which must not exist (an existing disk is never replaced)."""
    stream = disk_stream(disk)
    view = disk_view(rt, disk, must_exist=False)
    refuse_pending(stream, view)
    if view.state is not DiskState.ABSENT:
        raise IllegalTransition(stream, view.state, event_type, "the disk exists")
    return view


def _bind(rt: Runtime, template: str, cached: TemplateView, op_id: str) -> NewEvent:
    """``disk.template-bound``: the disk pins the template's recorded format and size."""
    return NewEvent(
        "disk.template-bound",
        {
            "template": template,
            "template_stream": rt.template_stream(template),
            "template_version": cached.version,
            "format": cached.format,
            "virtual_size": cached.virtual_size,
        },
        rt.metadata(op_id),
    )


CREATE = Create()
IMPORT = Import()
