"""Making a disk: from a cached template or blank (``create``), or from a local image (``import``).

Both publish the new disk by an atomic rename (file rename, RBD rename), so a final name that
exists holds a whole disk; both record what the published disk looks like. A create from a
template at the template's size on a backend that ``ClonesInPlace`` (RBD) clones under the final
name instead: the ``completed`` event publishes it (nobody is given the location before), and the
intent names the clone (``RBD_CLONE``) beside the disk, so that recovery's probe reports the disk
only once the clone is whole and the same rules decide (a clone cut short is rolled back).

With ``encrypt`` the disk is encrypted (qcow2 with qemu's LUKS) under a new key made *before*
the intent, which records the key's reference (``params.encryption``); rolling the operation back
destroys the key after the data (``undone``). See ``diskledger.engine.encryption``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from diskledger.backends import Backend, ChecksCapacity, Observation, TemplateSource
from diskledger.backends.contract import ClonesInPlace
from diskledger.engine import encryption
from diskledger.engine.decisions import Decision, Evidence, Rule
from diskledger.engine.inputs import check_disk, human_size, parse_size, readable_file
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
from diskledger.errors import DiskLedgerError, IllegalTransition, InvalidInput, InvalidSize
from diskledger.events import NewEvent
from diskledger.keys import NewKey
from diskledger.states import DiskState, DiskView, Encryption, TemplateView
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

    def undone(self, rt: Runtime, params: Mapping[str, Any]) -> dict[str, Any]:
        # The disk is gone (or was never published): its key protects nothing any more.
        made = encryption.encryption_of(params)
        if made is None:
            return {}
        encryption.destroy_key(rt, made, self.name)
        return {"key_destroyed": made.key}

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
        # Publication is an atomic rename: a final name that exists holds a whole disk. A clone
        # in place is probed beside its RBD_CLONE: its final name exists only once whole.
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
        encrypt: bool = False,
        op_id: str | None = None,
    ) -> DiskView:
        check_disk(disk)
        stream = disk_stream(disk)
        asked = None if size in (None, 0, "0") else parse_size(size)
        request: dict[str, Any] = {
            "op": "create",
            "disk": disk,
            "template": template,
            "size": asked,
        }
        if encrypt:
            request["encrypt"] = True  # only then: earlier requests' idempotency keys still match
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
                    f"size {human_size(wanted)} is smaller than template {template} "
                    f"({human_size(source.virtual_size)}): give at least that, or no size to "
                    "take the template's"
                )
            prelude.append(_bind(rt, template, cached, op_id))
        backend = rt.backend
        location = backend.disk_location(*disk.split("/"))
        size_needed = wanted or (source.virtual_size if source else None)
        if isinstance(backend, ChecksCapacity) and size_needed is not None:
            backend.check_capacity(size_needed)  # a disk that cannot fit is refused unrecorded
        files = encryption.check_can_encrypt(rt, backend) if encrypt else None
        params: dict[str, Any] = {
            "disk": disk,
            "template": template,
            "size": size_needed,
            "format": backend.disk_format,
            "backend": backend.name,
            "location": location,
            "preallocated": backend.preallocates,
        }

        # At the template's own size, a backend that clones in place makes the disk under its
        # final name (nothing to grow after the clone, so a whole clone is the whole disk).
        in_place = (
            backend
            if isinstance(backend, ClonesInPlace)
            and source is not None
            and not encrypt
            and wanted in (None, source.virtual_size)
            else None
        )

        def create() -> dict[str, Any]:
            if in_place is not None and source is not None:
                return created(in_place.clone_template(location, op_id, source))
            return created(backend.create(location, op_id, size=wanted, template=source))

        if in_place is not None and source is not None:
            artifacts = in_place.clone_artifacts(location, op_id, source)
        else:
            artifacts = backend.create_artifacts(location, op_id)

        def plan(made: Encryption | None) -> Plan[DiskView]:
            effect = create
            if made is not None:
                assert files is not None

                def effect() -> dict[str, Any]:
                    with encryption.luks(rt, made) as luks:
                        seen = files.create(
                            location, op_id, size=wanted, template=source, luks=luks
                        )
                    return created(seen)

            return Plan(
                stream,
                view,
                backend,
                op_id,
                {**params, **({"encryption": made.to_json()} if made else {})},
                effect,
                artifacts,
                prelude,
                durable_effect=True,
            )

        return _with_key(rt, self.name, op_id, encrypt, plan, request)


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
        encrypt: bool = False,
        op_id: str | None = None,
    ) -> DiskView:
        check_disk(disk)
        if fmt not in FORMATS:
            raise InvalidInput(f"import format {fmt!r} is not one of {', '.join(FORMATS)}")
        request: dict[str, Any] = {
            "op": "import",
            "disk": disk,
            "source": str(source),
            "format": fmt,
        }
        if encrypt:
            request["encrypt"] = True
        if (done := repeated(rt, op_id, request)) is not None:
            return disk_after(rt, done)
        view = _absent(rt, disk, "disk.import.started")
        source_path = readable_file(Path(source))
        op_id = op_id or new_op_id()
        backend = rt.backend
        location = backend.disk_location(*disk.split("/"))
        files = encryption.check_can_encrypt(rt, backend) if encrypt else None
        params: dict[str, Any] = {
            "disk": disk,
            "source": str(source_path),
            "source_format": fmt,
            "format": backend.disk_format,
            "location": location,
            "preallocated": backend.preallocates,
        }
        artifacts = backend.import_artifacts(location, op_id)

        def plan(made: Encryption | None) -> Plan[DiskView]:
            def import_() -> dict[str, Any]:
                if made is None:
                    seen = backend.import_file(
                        location, op_id, str(source_path), fmt, max_virtual_size=rt.max_image_size
                    )
                    return created(seen)
                assert files is not None
                with encryption.luks(rt, made) as luks:
                    seen = files.import_file(
                        location,
                        op_id,
                        str(source_path),
                        fmt,
                        max_virtual_size=rt.max_image_size,
                        luks=luks,
                    )
                return created(seen)

            full = {**params, **({"encryption": made.to_json()} if made else {})}
            return Plan(
                disk_stream(disk),
                view,
                backend,
                op_id,
                full,
                import_,
                artifacts,
                durable_effect=True,
            )

        return _with_key(rt, self.name, op_id, encrypt, plan, request)


def _with_key(
    rt: Runtime,
    op: str,
    op_id: str,
    encrypt: bool,
    plan: Callable[[Encryption | None], Plan[DiskView]],
    request: Mapping[str, Any],
) -> DiskView:
    """Perform the create or import ``plan`` makes; with ``encrypt``, a new key is made first
    (before the intent that names it) and held until the operation has its outcome. Should the
    intent never be recorded (refused, or the ledger failed), the key goes again: nothing names
    it. When the ledger cannot say, it stays for recovery's sweep to judge."""
    if not encrypt:
        return perform(rt, CREATE if op == "create" else IMPORT, plan(None), request)[0]
    key: NewKey
    key, made = encryption.new_key(rt, op, op_id)
    try:
        return perform(rt, CREATE if op == "create" else IMPORT, plan(made), request)[0]
    except DiskLedgerError:
        try:
            recorded = bool(rt.store.read_operation(op_id))
        except DiskLedgerError:
            recorded = True  # cannot tell: recovery's sweep decides once the key is released
        if not recorded:
            encryption.provider(rt, made.provider).destroy(made.key)
        raise
    finally:
        key.release()


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
