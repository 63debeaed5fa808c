"""The engine: the one place that joins the ledger, the lifecycle and storage."""

from __future__ import annotations

import base64
import binascii
import builtins
import dataclasses
import os
import stat
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from diskledger import faults
from diskledger.backends import (
    Artifact,
    Backend,
    Capability,
    CephConfig,
    DirectSnapshots,
    DiskSource,
    Fences,
    Flattens,
    SourceKind,
    TemplateSource,
    TemplateStore,
    backend_for,
    template_store_for,
)
from diskledger.backends.rbd.cluster import client_key
from diskledger.engine import outcomes
from diskledger.engine.attachments import (
    refuse_while_attached,
    source_json,
    uses,
)
from diskledger.engine.config import Config
from diskledger.engine.inputs import check_disk, check_name, check_snapshot, parse_size
from diskledger.engine.leases import LeaseKeeper, expired, expiry
from diskledger.engine.liveness import abandon, abandoned, current_process, is_alive
from diskledger.engine.recovery import RecoveryReport, recover, settle
from diskledger.engine.verify import VerifyReport, verify
from diskledger.errors import (
    ConcurrencyError,
    Conflict,
    DiskAttached,
    DiskLedgerError,
    DiskNotFound,
    IllegalTransition,
    InvalidInput,
    InvalidSize,
    InvalidSource,
    OperationPending,
    SnapshotNotFound,
    TemplateNotFound,
)
from diskledger.events import (
    COMPLETED,
    FAILED,
    STARTED,
    Metadata,
    NewEvent,
    RecordedEvent,
    operation_event,
    split_type,
)
from diskledger.hypervisor import DiskDevice, Hypervisor, describe, same_source
from diskledger.states import (
    DISK_TABLE,
    TEMPLATE_TABLE,
    Attachment,
    DiskState,
    DiskView,
    TemplateState,
    TemplateView,
    evolve,
    fold,
    params_of,
)
from diskledger.states.machine import Validator
from diskledger.states.streams import DISK, TEMPLATE, disk_stream, empty_view, template_stream
from diskledger.store import EventStore, open_store

__all__ = ["FORMATS", "DirectSnapshot", "Engine", "Export"]

FORMATS = ("raw", "qcow2")
"""Formats a template may be declared as and an export may be written in."""

View = TypeVar("View", DiskView, TemplateView)

_DISK_VALIDATOR: Validator[DiskState] = Validator(DISK_TABLE)
_TEMPLATE_VALIDATOR: Validator[TemplateState] = Validator(TEMPLATE_TABLE)


@dataclass(frozen=True, slots=True)
class Export:
    """A standalone copy of a disk written by ``Engine.export``."""

    disk: str
    target: str
    format: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"disk": self.disk, "target": self.target, "format": self.format, "size": self.size}


@dataclass(frozen=True, slots=True)
class DirectSnapshot:
    """A copy of a disk handed to the snapshot pool by ``Engine.direct_snapshot``."""

    disk: str
    url: str
    """``rbd://<fsid>/<pool>/<image>/snap``, the location Glance records."""
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"disk": self.disk, "url": self.url, "size": self.size}


class Engine:
    """The embedding API: every disk and template operation, recorded in the ledger.

    Each operation that touches storage follows the protocol of DESIGN.md: the intent
    (``<op>.started``, naming every artifact the operation may create) is durable before storage
    is touched; the outcome (``completed`` with what was observed, or ``failed`` after the named
    artifacts were removed) is recorded after. Bad input raises an ``InvalidInput``/``NotFound``/
    ``IllegalTransition`` before anything is written; a second operation on a busy disk raises
    ``OperationPending`` or ``ConcurrencyError`` and is never interleaved.

    Disks are named ``INSTANCE/NAME``; sizes are bytes (or strings like ``"10G"``).
    """

    def __init__(
        self,
        store: EventStore,
        backend: Backend,
        templates: TemplateStore,
        *,
        host: str,
        actor: str = "diskledger",
        ceph: CephConfig | None = None,
        max_image_size: int = 16 << 40,
        hypervisor: Hypervisor | None = None,
        rbd_secret_uuid: str | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.templates = templates
        self.host = host
        self.actor = actor
        self.max_image_size = max_image_size
        self.hypervisor = hypervisor or Hypervisor()
        """libvirtd, for attached disks (connected on first use)."""
        self.rbd_secret_uuid = rbd_secret_uuid
        """The libvirt secret network disk descriptions authenticate with."""
        self._ceph = ceph
        self._backends: dict[str, Backend] = {backend.name: backend}

    @classmethod
    def open(cls, config: Config | None = None, **overrides: Any) -> Engine:
        """An engine for ``config`` (default: from the environment, see ``Config``).

        Unless ``config.recover`` is false, operations left pending by dead processes are
        recovered before it returns (see ``recover``).
        """
        config = config or Config.load(**overrides)
        backend = backend_for(
            config.backend, str(config.root), ceph=config.ceph, preallocate=config.preallocate
        )
        config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = open_store(config.ledger)
        engine = cls(
            store,
            backend,
            template_store_for(
                backend, str(config.root), max_virtual_size=config.max_template_size
            ),
            host=config.host,
            actor=config.actor,
            ceph=config.ceph,
            max_image_size=config.max_template_size,
            hypervisor=Hypervisor(config.libvirt_uri, detach_timeout=config.detach_timeout),
            rbd_secret_uuid=config.rbd_secret_uuid,
        )
        if config.recover:
            try:
                engine.recover()
            except BaseException:
                engine.close()
                raise
        return engine

    def recover(self, *, dry_run: bool = False) -> RecoveryReport:
        """Finish or undo every operation whose intent has no outcome and whose writer is dead.

        Decisions follow ``diskledger.engine.recovery.RULES`` (documented in docs/recovery.md) and
        are recorded as events with the evidence the probe saw. ``dry_run`` decides and reports
        without changing anything.
        """
        return recover(self, dry_run=dry_run)

    def verify(self) -> VerifyReport:
        """Check the hash chain, the read models against the log, and storage against the ledger."""
        return verify(self)

    def backend_named(self, name: str | None) -> Backend:
        """The backend called ``name`` (the configured one when None): a disk is always handled
        by the backend that made it, as the ledger recorded."""
        if name is None:
            return self.backend
        backend = self._backends.get(name)
        if backend is None:
            backend = self._backends[name] = backend_for(
                name,
                self.templates.root,
                ceph=self._ceph,
                preallocate=self.backend.preallocates,
            )
        return backend

    def backend_of(self, disk: DiskView) -> Backend:
        """The backend that keeps ``disk`` (ledgers from before the ``backend`` field recorded
        only the format, which then names a file backend)."""
        return self.backend_named(disk.backend or disk.format)

    def template_stream(self, template: str) -> str:
        """The stream of ``template`` in this engine's template store."""
        return template_stream(self.templates.scope or self.host, template)

    def recovery_metadata(self, op_id: str, run_id: str) -> Metadata:
        """Metadata for an outcome recorded by recovery on behalf of a dead writer."""
        return self._metadata(op_id, causation=run_id, actor="diskledger-recover")

    def close(self) -> None:
        try:
            for backend in self._backends.values():
                backend.close()
            self.hypervisor.close()
        finally:
            self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- templates -----------------------------------------------------------------------------

    def add_template(
        self,
        template: str,
        source: str | os.PathLike[str],
        fmt: str,
        *,
        op_id: str | None = None,
    ) -> TemplateView:
        """Import ``source`` into the template cache as ``template``, declared as ``fmt``."""
        check_name(template, "template")
        if fmt not in FORMATS:
            raise InvalidInput(f"template format {fmt!r} is not one of {', '.join(FORMATS)}")
        stream = self.template_stream(template)
        request = {"op": "template add", "template": template, "source": str(source), "format": fmt}
        if (done := self._repeat(op_id, request)) is not None:
            return self._template_after(done)
        source_path = _readable_file(Path(source))
        view = self.store.template(stream) or TemplateView(template=template)
        self._refuse_pending(stream, view)
        if view.state is not TemplateState.ABSENT:
            raise IllegalTransition(stream, view.state, "template.fetch.started", "already cached")

        op_id = op_id or _new_op_id()
        artifacts = self.templates.import_artifacts(template, op_id)
        params = {
            "template": template,
            "source": str(source_path),
            "format": fmt,
            "lease_expires": expiry(),
        }

        def fetch() -> dict[str, Any]:
            return outcomes.fetched(
                self.templates.cached_format(fmt),
                self.templates.import_file(str(source_path), fmt, template, op_id),
            )

        view, _ = self._operate(
            self.backend,
            stream,
            view,
            "fetch",
            op_id,
            params,
            artifacts,
            fetch,
            request=request,
            leased=True,
        )
        return view

    def ensure_template(
        self,
        template: str,
        source: str | os.PathLike[str],
        fmt: str,
        *,
        timeout: float = 3600.0,
    ) -> TemplateView:
        """The cached ``template``, fetched from ``source`` when nobody has.

        When another process is fetching it, wait for its outcome rather than fetch again; when
        that process has died or stopped renewing its lease, recover its fetch (removing the
        partial copy) and fetch it here. Many concurrent callers fetch a template exactly once.
        """
        check_name(template, "template")
        stream = self.template_stream(template)
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            view = self.store.template(stream)
            if view is not None and view.state is TemplateState.CACHED:
                return view
            if view is None or view.pending is None:
                try:
                    return self.add_template(template, source, fmt)
                except (ConcurrencyError, OperationPending, IllegalTransition):
                    raced = self.store.template(stream)
                    if raced is None or (
                        raced.pending is None and raced.state is TemplateState.ABSENT
                    ):
                        raise  # not a race: nobody else is fetching or has fetched it
                    continue  # another process started the fetch first: wait for it
            if self._abandoned(view):
                self.recover()
                continue
            if time.monotonic() > deadline:
                raise Conflict(f"{stream}: still being fetched after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _abandoned(self, view: TemplateView) -> bool:
        """Whether the fetch in flight has lost its writer (dead, or its lease ran out)."""
        assert view.pending is not None
        if expired(view.lease_expires):
            return True
        if abandoned(view.pending.op_id):
            return True
        intent = self.store.read_operation(view.pending.op_id)
        meta = intent[0].metadata if intent else None
        return meta is not None and not is_alive(meta.process, meta.host, self.host)

    def template(self, template: str) -> TemplateView:
        check_name(template, "template")
        view = self.store.template(self.template_stream(template))
        if view is None or view.state is TemplateState.ABSENT:
            raise TemplateNotFound(template)
        return view

    def list_templates(self) -> builtins.list[TemplateView]:
        return [t for t in self.store.templates() if t.state is not TemplateState.ABSENT]

    def template_users(self, template: str) -> builtins.list[str]:
        """Live disks made from ``template``."""
        return [
            d
            for d in self.store.template_users(template)
            if (view := self.store.disk(disk_stream(d))) and view.state is not DiskState.ABSENT
        ]

    # -- disks ---------------------------------------------------------------------------------

    def create(
        self,
        disk: str,
        *,
        template: str | None = None,
        size: int | str | None = None,
        op_id: str | None = None,
    ) -> DiskView:
        """Create ``disk`` from a cached ``template`` (at least the template's virtual size; no
        size means exactly that) or, without a template, blank with ``size``."""
        check_disk(disk)
        stream = disk_stream(disk)
        asked = None if size in (None, 0, "0") else parse_size(size)
        request = {"op": "create", "disk": disk, "template": template, "size": asked}
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._disk_view(disk, must_exist=False)
        self._refuse_pending(stream, view)
        if view.state is not DiskState.ABSENT:
            raise IllegalTransition(stream, view.state, "disk.create.started", "the disk exists")

        source: TemplateSource | None = None
        prelude: list[NewEvent] = []
        op_id = op_id or _new_op_id()
        if template is None:
            if size is None:
                raise InvalidSize("a blank disk needs a size")
            wanted: int | None = parse_size(size)
        else:
            cached = self.template(template)
            if cached.pending is not None:
                raise OperationPending(
                    self.template_stream(template), cached.pending.op, cached.pending.op_id
                )
            if cached.state is not TemplateState.CACHED:
                raise TemplateNotFound(template)
            assert cached.location and cached.format and cached.virtual_size is not None
            source = TemplateSource(cached.location, cached.format, cached.virtual_size)
            wanted = asked
            if wanted is not None and wanted < source.virtual_size:
                raise InvalidSize(
                    f"size {wanted} is smaller than template {template}'s virtual size "
                    f"{source.virtual_size}"
                )
            prelude.append(
                NewEvent(
                    "disk.template-bound",
                    {
                        "template": template,
                        "template_stream": self.template_stream(template),
                        "template_version": cached.version,
                        "format": cached.format,
                        "virtual_size": cached.virtual_size,
                    },
                    self._metadata(op_id),
                )
            )

        instance, name = disk.split("/")
        location = self.backend.disk_location(instance, name)
        artifacts = self.backend.create_artifacts(location, op_id)
        params = {
            "disk": disk,
            "template": template,
            "size": wanted or (source.virtual_size if source else None),
            "format": self.backend.disk_format,
            "backend": self.backend.name,
            "location": location,
            "preallocated": self.backend.preallocates,
        }

        def create() -> dict[str, Any]:
            seen = self.backend.create(location, op_id, size=wanted, template=source)
            return outcomes.created(seen)

        view, _ = self._operate(
            self.backend,
            stream,
            view,
            "create",
            op_id,
            params,
            artifacts,
            create,
            prelude=prelude,
            request=request,
        )
        return view

    def resize(self, disk: str, size: int | str, *, op_id: str | None = None) -> DiskView:
        """Grow ``disk`` to ``size``. The same size changes nothing; a smaller one is refused."""
        check_disk(disk)
        wanted = parse_size(size)
        request = {"op": "resize", "disk": disk, "size": wanted}
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._live_disk(disk, for_op="resize")
        assert view.size is not None and view.location and view.format
        if wanted < view.size:
            raise InvalidSize(
                f"disk {disk} is {view.size} bytes; disks never shrink (asked {wanted})"
            )
        if wanted == view.size:
            return view
        location, fmt = view.location, view.format
        backend = self.backend_of(view)
        op_id = op_id or _new_op_id()
        params: dict[str, Any] = {
            "size": wanted,
            "previous_size": view.size,
            "location": location,
            "format": fmt,
        }
        live = self._running_with(view)
        if live is None:

            def resize() -> dict[str, Any]:
                return {"size": backend.resize(location, fmt, wanted).size}

        else:
            # qemu holds the image: only it may change the size, and then the guest sees it.
            domain, target_dev = live
            params["live"] = {"domain": domain, "target_dev": target_dev}

            def resize() -> dict[str, Any]:
                return {"size": self.hypervisor.block_resize(domain, target_dev, wanted)}

        view, _ = self._operate(
            backend, disk_stream(disk), view, "resize", op_id, params, (), resize, request=request
        )
        return view

    def snapshot(self, disk: str, snapshot: str, *, op_id: str | None = None) -> DiskView:
        """Take a snapshot named ``snapshot`` (unique per disk)."""
        check_disk(disk)
        check_snapshot(snapshot)
        request = {"op": "snapshot", "disk": disk, "snapshot": snapshot}
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._live_disk(disk, for_op="snapshot")
        if view.snapshot(snapshot) is not None:
            raise IllegalTransition(
                disk_stream(disk),
                view.state,
                "disk.snapshot.started",
                f"snapshot {snapshot!r} exists",
            )
        assert view.location and view.format
        location, fmt = view.location, view.format
        backend = self.backend_of(view)
        op_id = op_id or _new_op_id()
        artifacts = backend.snapshot_artifacts(location, snapshot, op_id)
        params = {"snapshot": snapshot, "location": location, "format": fmt}
        view, _ = self._operate(
            backend,
            disk_stream(disk),
            view,
            "snapshot",
            op_id,
            params,
            artifacts,
            lambda: {"size": backend.snapshot(location, fmt, snapshot, op_id).size},
            request=request,
        )
        return view

    def rollback(self, disk: str, snapshot: str, *, op_id: str | None = None) -> DiskView:
        """Revert the disk's data to ``snapshot``; the disk keeps its current size."""
        check_disk(disk)
        check_snapshot(snapshot)
        request = {"op": "rollback", "disk": disk, "snapshot": snapshot}
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._live_disk(disk, for_op="rollback")
        self._existing_snapshot(disk, view, snapshot)
        assert view.location and view.format and view.size is not None
        location, fmt, size = view.location, view.format, view.size
        backend = self.backend_of(view)
        op_id = op_id or _new_op_id()
        artifacts = backend.rollback_artifacts(location, snapshot, op_id)
        params = {"snapshot": snapshot, "location": location, "format": fmt, "size": size}
        view, _ = self._operate(
            backend,
            disk_stream(disk),
            view,
            "rollback",
            op_id,
            params,
            artifacts,
            lambda: {"size": backend.rollback(location, fmt, snapshot, op_id, size=size).size},
            request=request,
        )
        return view

    def remove_snapshot(self, disk: str, snapshot: str, *, op_id: str | None = None) -> DiskView:
        check_disk(disk)
        check_snapshot(snapshot)
        request = {"op": "remove-snapshot", "disk": disk, "snapshot": snapshot}
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._live_disk(disk, for_op="remove-snapshot")
        self._existing_snapshot(disk, view, snapshot)
        assert view.location and view.format
        location, fmt = view.location, view.format
        backend = self.backend_of(view)

        def remove() -> dict[str, Any]:
            backend.remove_snapshot(location, fmt, snapshot)
            return {}

        params = {"snapshot": snapshot, "location": location, "format": fmt}
        view, _ = self._operate(
            backend,
            disk_stream(disk),
            view,
            "remove-snapshot",
            op_id or _new_op_id(),
            params,
            (),
            remove,
            request=request,
        )
        return view

    def delete(self, disk: str, *, op_id: str | None = None) -> DiskView:
        """Remove the disk and all its snapshots; the disk's history stays in the ledger."""
        check_disk(disk)
        request = {"op": "delete", "disk": disk}
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._live_disk(disk, for_op="delete")
        assert view.location and view.format
        location, fmt, snapshots = view.location, view.format, view.snapshot_names
        backend = self.backend_of(view)

        def delete() -> dict[str, Any]:
            backend.delete(location, fmt, snapshots)
            return {}

        params = {
            "location": location,
            "format": fmt,
            "snapshots": list(snapshots),
            "template": view.template,
        }
        view, _ = self._operate(
            backend,
            disk_stream(disk),
            view,
            "delete",
            op_id or _new_op_id(),
            params,
            (),
            delete,
            request=request,
        )
        return view

    def export(
        self,
        disk: str,
        target: str | os.PathLike[str],
        fmt: str | None = None,
        *,
        op_id: str | None = None,
    ) -> Export:
        """Write a standalone copy of ``disk`` (no backing file) to a new file ``target``."""
        check_disk(disk)
        request = {
            "op": "export",
            "disk": disk,
            "target": str(Path(target).absolute()),
            "format": fmt,
        }
        if (done := self._repeat(op_id, request)) is not None:
            return Export(disk, done.data["target"], done.data["format"], done.data["size"])
        view = self._live_disk(disk, for_op="export")
        assert view.location and view.format
        out_format = fmt or view.format
        if out_format not in FORMATS:
            raise InvalidInput(f"export format {out_format!r} is not one of {', '.join(FORMATS)}")
        target_path = _new_file_target(Path(target))
        location, disk_format = view.location, view.format
        backend = self.backend_of(view)
        op_id = op_id or _new_op_id()
        artifacts = backend.export_artifacts(str(target_path), op_id)
        params = {"target": str(target_path), "format": out_format, "location": location}

        def export() -> dict[str, Any]:
            seen = backend.export(location, disk_format, str(target_path), out_format, op_id)
            return {"target": str(target_path), "format": out_format, "size": seen.size}

        _, data = self._operate(
            backend,
            disk_stream(disk),
            view,
            "export",
            op_id,
            params,
            artifacts,
            export,
            request=request,
        )
        return Export(disk=disk, target=str(target_path), format=out_format, size=data["size"])

    def import_disk(
        self,
        disk: str,
        source: str | os.PathLike[str],
        fmt: str,
        *,
        op_id: str | None = None,
    ) -> DiskView:
        """Create ``disk`` from the local image file ``source``, declared as ``fmt``.

        The file is copied and the copy inspected like a template (no backing or data file, the
        declared format), then converted into the backend's format. An existing disk is never
        replaced: delete it first (its history stays in the ledger).
        """
        check_disk(disk)
        if fmt not in FORMATS:
            raise InvalidInput(f"import format {fmt!r} is not one of {', '.join(FORMATS)}")
        stream = disk_stream(disk)
        request = {"op": "import", "disk": disk, "source": str(source), "format": fmt}
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._disk_view(disk, must_exist=False)
        self._refuse_pending(stream, view)
        if view.state is not DiskState.ABSENT:
            raise IllegalTransition(stream, view.state, "disk.import.started", "the disk exists")
        source_path = _readable_file(Path(source))
        op_id = op_id or _new_op_id()
        instance, name = disk.split("/")
        backend = self.backend
        location = backend.disk_location(instance, name)
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
                location, op_id, str(source_path), fmt, max_virtual_size=self.max_image_size
            )
            return outcomes.created(seen)

        view, _ = self._operate(
            backend,
            stream,
            view,
            "import",
            op_id,
            params,
            backend.import_artifacts(location, op_id),
            import_,
            request=request,
        )
        return view

    def flatten(self, disk: str, *, op_id: str | None = None) -> DiskView:
        """Copy the data ``disk`` shares with its template into it, so that it no longer depends
        on the template (RBD clones). A disk that is already flat is left as it is."""
        check_disk(disk)
        request = {"op": "flatten", "disk": disk}
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._live_disk(disk, for_op="flatten")
        assert view.location and view.format
        backend = self.backend_of(view)
        if Capability.FLATTEN not in backend.capabilities or not isinstance(backend, Flattens):
            raise InvalidInput(f"the {backend.name} backend cannot flatten a disk")
        flattens: Flattens = backend
        location, fmt = view.location, view.format

        def run() -> dict[str, Any]:
            seen = flattens.flatten(location, fmt)
            return {"size": seen.size, "backing": seen.backing}

        view, _ = self._operate(
            backend,
            disk_stream(disk),
            view,
            "flatten",
            op_id or _new_op_id(),
            {"location": location, "format": fmt, "size": view.size},
            (),
            run,
            request=request,
        )
        return view

    def direct_snapshot(
        self, disk: str, snapshot: str, image_id: str, *, op_id: str | None = None
    ) -> DirectSnapshot:
        """Hand a standalone copy of ``disk``'s current data to the snapshot pool as the image
        ``image_id`` with a protected snapshot ``snap`` (what Nova gives Glance), and return its
        ``rbd://fsid/pool/image/snap`` URL. ``snapshot`` names the short-lived snapshot of the
        disk the copy is cloned from; it is removed again, also when the operation fails."""
        check_disk(disk)
        check_snapshot(snapshot)
        check_name(image_id, "image id")
        request = {
            "op": "direct-snapshot",
            "disk": disk,
            "snapshot": snapshot,
            "image_id": image_id,
        }
        if (done := self._repeat(op_id, request)) is not None:
            return DirectSnapshot(disk, done.data["url"], done.data["size"])
        view = self._live_disk(disk, for_op="direct-snapshot")
        assert view.location and view.format and view.size is not None
        if view.snapshot(snapshot) is not None:
            raise InvalidInput(f"disk {disk} already has a snapshot {snapshot!r}")
        backend = self.backend_of(view)
        if Capability.DIRECT_SNAPSHOT not in backend.capabilities or not isinstance(
            backend, DirectSnapshots
        ):
            raise InvalidInput(f"the {backend.name} backend cannot direct-snapshot a disk")
        direct: DirectSnapshots = backend
        location, fmt, size = view.location, view.format, view.size
        op_id = op_id or _new_op_id()
        artifacts = direct.direct_snapshot_artifacts(location, snapshot, image_id, op_id)
        url = direct.direct_snapshot_url(image_id)
        params = {
            "location": location,
            "format": fmt,
            "snapshot": snapshot,
            "image_id": image_id,
            "url": url,
            "size": size,
        }

        def run() -> dict[str, Any]:
            return {
                "url": direct.direct_snapshot(location, fmt, snapshot, image_id, op_id),
                "size": size,
            }

        _, data = self._operate(
            backend,
            disk_stream(disk),
            view,
            "direct-snapshot",
            op_id,
            params,
            artifacts,
            run,
            request=request,
        )
        return DirectSnapshot(disk, data["url"], data["size"])

    # -- libvirt ---------------------------------------------------------------------------------

    def libvirt_disk(
        self,
        disk: str,
        *,
        target_dev: str,
        bus: str = "virtio",
        cache: str | None = "none",
        discard: str | None = None,
        boot_order: int | None = None,
        disk_unit: int | None = None,
        extra_specs: Mapping[str, object] | None = None,
    ) -> str:
        """The libvirt ``<disk>`` element that gives a guest ``disk`` at ``target_dev``.

        The driver type is the format the ledger recorded (never probed); the source is where the
        disk's backend keeps it (a file, or an RBD image with the cluster's monitors, and the
        ``rbd_secret_uuid`` secret when a cephx user is configured). ``io='native'`` is set for
        preallocated disks; ``disk_unit`` addresses a SCSI drive (controller 0) and needs
        ``bus='scsi'``; ``extra_specs`` are a flavor's, whose ``quota:disk_*`` keys become
        ``<iotune>`` limits. Bad choices raise ``InvalidInput``; nothing is recorded.
        """
        view = self._live_disk(disk)
        return self._device(
            view,
            target_dev=target_dev,
            bus=bus,
            cache=cache,
            discard=discard,
            boot_order=boot_order,
            disk_unit=disk_unit,
            extra_specs=extra_specs,
        ).to_xml()

    def attach(
        self,
        disk: str,
        domain: str,
        *,
        target_dev: str,
        bus: str = "virtio",
        cache: str | None = "none",
        discard: str | None = None,
        disk_unit: int | None = None,
        extra_specs: Mapping[str, object] | None = None,
        op_id: str | None = None,
    ) -> DiskView:
        """Record that ``domain`` uses ``disk`` at ``target_dev``: ``disk.attach``.

        A domain that already has the disk there (it was booted with ``libvirt_disk``'s XML) is
        only recorded; a domain without it gets it hot-plugged first (and into its stored
        definition, if it has one). From then on the disk cannot be deleted, rolled back,
        exported or flattened, a resize goes through the running guest, and snapshots are taken
        only where the storage allows it under a running guest (RBD) — see ``DiskAttached``.
        """
        check_disk(disk)
        check_name(domain, "domain")
        request = {
            "op": "attach",
            "disk": disk,
            "domain": domain,
            "target_dev": target_dev,
            "bus": bus,
            "cache": cache,
            "discard": discard,
            "disk_unit": disk_unit,
            "extra_specs": dict(extra_specs or {}),
        }
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._live_disk(disk, for_op="attach")
        device = self._device(
            view,
            target_dev=target_dev,
            bus=bus,
            cache=cache,
            discard=discard,
            disk_unit=disk_unit,
            extra_specs=extra_specs,
        )
        info = self.hypervisor.domain(domain)
        plugged = {dev for dev, source in info.disks.items() if same_source(source, device.source)}
        if plugged - {target_dev}:
            raise InvalidInput(
                f"domain {domain} has disk {disk} as {', '.join(sorted(plugged))}, not {target_dev}"
            )
        if target_dev in info.disks and target_dev not in plugged:
            raise InvalidInput(f"domain {domain} already has another disk as {target_dev}")
        present = target_dev in plugged
        xml = device.to_xml()
        attachment = Attachment(info.name, info.uuid, target_dev, bus)

        def attach() -> dict[str, Any]:
            if not present:
                self.hypervisor.attach(info.name, xml)
            return {**attachment.to_json(), "added": not present}

        view, _ = self._operate(
            self.backend_of(view),
            disk_stream(disk),
            view,
            "attach",
            op_id or _new_op_id(),
            _attachment_params(view, attachment, device),
            (),
            attach,
            request=request,
        )
        return view

    def detach(self, disk: str, *, op_id: str | None = None) -> DiskView:
        """Record that no domain uses ``disk`` any more: ``disk.detach``.

        When the domain is running with the disk, it is hot-unplugged first and the engine waits
        (``Config.detach_timeout``) for the guest to let go of it; a guest that does not keeps
        the disk, and the detach fails. A domain that is gone, or no longer has the disk, is only
        recorded.
        """
        check_disk(disk)
        request = {"op": "detach", "disk": disk}
        if (done := self._repeat(op_id, request)) is not None:
            return self._disk_after(done)
        view = self._live_disk(disk)
        attachment = view.attachment
        if attachment is None:
            raise InvalidInput(f"disk {disk} is not attached to a domain")
        device = self._device(
            view, addresses=False, target_dev=attachment.target_dev, bus=attachment.bus
        )
        info = self.hypervisor.find(attachment.domain)
        present = uses(info, attachment.domain_uuid, attachment.target_dev, device.source)
        xml = device.to_xml()

        def detach() -> dict[str, Any]:
            if present:
                self.hypervisor.detach(attachment.domain, xml, attachment.target_dev)
            return {"domain": attachment.domain, "removed": present}

        view, _ = self._operate(
            self.backend_of(view),
            disk_stream(disk),
            view,
            "detach",
            op_id or _new_op_id(),
            _attachment_params(view, attachment, device),
            (),
            detach,
            request=request,
        )
        return view

    def define_ceph_secret(self) -> str:
        """Define (or update) the libvirt secret that holds the configured RBD user's key, so
        that qemu can reach the cluster as that user; its UUID (``rbd_secret_uuid`` when set).

        The secret is private (libvirt never shows its value) and named
        ``client.<user> secret``, as Nova's deployment guides name it.
        """
        ceph = self._ceph_config()
        try:
            key = base64.b64decode(client_key(ceph), validate=True)
        except binascii.Error as exc:
            raise InvalidInput(
                f"the key of client.{ceph.user} in {ceph.keyring} is not base64: {exc}"
            ) from exc
        return self.hypervisor.define_ceph_secret(
            _secret_usage(ceph), key, secret_uuid=self.rbd_secret_uuid
        )

    def undefine_ceph_secret(self) -> str | None:
        """Remove the secret ``define_ceph_secret`` made; its UUID, or None when there was none."""
        return self.hypervisor.undefine_secret(_secret_usage(self._ceph_config()))

    def _ceph_config(self) -> CephConfig:
        if self._ceph is None or not self._ceph.user:
            raise InvalidInput(
                "the libvirt ceph secret holds the key of the rbd backend's cephx user: "
                "set DISKLEDGER_BACKEND=rbd, DISKLEDGER_RBD_USER and DISKLEDGER_CEPH_KEYRING"
            )
        return self._ceph

    def _device(self, view: DiskView, *, addresses: bool = True, **choices: Any) -> DiskDevice:
        """The ``<disk>`` for ``view``; ``addresses=False``: only enough to name it to libvirt
        (an unplug), looked up nowhere."""
        assert view.location and view.format
        source = self.backend_of(view).disk_source(view.location, addresses=addresses)
        if view.preallocated:
            source = dataclasses.replace(source, preallocated=True)
        device = describe(
            source,
            view.format,
            secret_uuid=self.rbd_secret_uuid,
            backing=self._backing_of(view, source),
            **choices,
        )
        if addresses and source.user is not None and self.rbd_secret_uuid is None:
            raise InvalidInput(
                f"qemu reaches the cluster as client.{source.user} with a libvirt secret: run "
                "`diskledger libvirt define-secret` and set DISKLEDGER_RBD_SECRET_UUID"
            )
        return device

    def _backing_of(self, view: DiskView, source: DiskSource) -> tuple[DiskSource, str] | None:
        """The template under a file overlay, with the format its stream recorded: libvirt is
        told the chain instead of probing it, and told not to take the shared template over."""
        if source.kind is not SourceKind.FILE or not view.backing or not view.template:
            return None
        cached = self.store.template(self.template_stream(view.template))
        if cached is None or cached.format is None:
            return None
        return DiskSource(SourceKind.FILE, path=view.backing), cached.format

    def _running_with(self, view: DiskView) -> tuple[str, str] | None:
        """(domain, target device) when a running domain uses the disk now; None when no domain
        does (the disk may then be changed offline). Raises when libvirt cannot be asked."""
        attachment = view.attachment
        if attachment is None:
            return None
        assert view.location
        info = self.hypervisor.find(attachment.domain)
        if info is None or not info.active:
            return None
        source = self.backend_of(view).disk_source(view.location, addresses=False)
        if not uses(info, attachment.domain_uuid, attachment.target_dev, source):
            raise DiskAttached(
                view.disk,
                attachment.domain,
                attachment.target_dev,
                "the domain runs but no longer shows the disk there; detach it to record that",
            )
        return attachment.domain, attachment.target_dev

    def show(self, disk: str) -> DiskView:
        """The ledger's view of ``disk`` (also of a deleted one: it shows as ``absent``)."""
        check_disk(disk)
        return self._disk_view(disk, must_exist=True)

    def list(self, *, include_deleted: bool = False) -> builtins.list[DiskView]:
        return [d for d in self.store.disks() if include_deleted or d.state is not DiskState.ABSENT]

    def history(self, disk: str | None = None) -> builtins.list[RecordedEvent]:
        """Every event of ``disk``'s stream, or of the whole ledger, in order."""
        if disk is None:
            return list(self.store.read_all())
        check_disk(disk)
        events = self.store.read_stream(disk_stream(disk))
        if not events:
            raise DiskNotFound(disk)
        return events

    # -- the operation protocol ----------------------------------------------------------------

    def _operate(
        self,
        backend: Backend,
        stream: str,
        view: View,
        op: str,
        op_id: str,
        params: Mapping[str, Any],
        artifacts: Sequence[Artifact],
        effect: Callable[[], dict[str, Any]],
        *,
        prelude: Sequence[NewEvent] = (),
        request: Mapping[str, Any] | None = None,
        leased: bool = False,
    ) -> tuple[View, dict[str, Any]]:
        """Intent, effect, outcome. Returns the view after the outcome and the observed data."""
        kind = DISK if isinstance(view, DiskView) else TEMPLATE
        meta = self._metadata(op_id)
        # Who the writer is to shared storage, for recovery to fence it should it die.
        writer = {"writer": backend.writer()} if isinstance(backend, Fences) else {}
        intent = operation_event(
            kind,
            op,
            STARTED,
            {
                "params": {**params, "backend": backend.name, **writer},
                "artifacts": [a.to_json() for a in artifacts],
                "request": dict(request or {}),
            },
            meta,
        )
        self._validate(stream, view, [*prelude, intent])
        self._refuse_unowned(backend, stream, artifacts)
        view = fold(view, self.store.append(stream, view.version, [*prelude, intent]))
        keeper = LeaseKeeper(self.store, stream, view.version, kind, op, meta) if leased else None
        try:
            faults.reach("after-intent", op)
            if keeper is None:
                observed = effect()
            else:
                with keeper:
                    observed = effect()
                view = self._reread(stream, view)
            faults.reach("after-effect", op)
        except faults.Crash:
            abandon(op_id)  # died on the spot: no compensation, recovery decides
            raise
        except BaseException as exc:
            if keeper is not None:
                view = self._reread(stream, view)
            try:
                # The same probe, decision table and compensation a crash recovery runs.
                settle(self, stream, view, meta, error=exc)
            except DiskLedgerError as ledger_exc:
                # The intent stays pending; a recovery in another process will resolve it.
                exc.add_note(f"recording the outcome also failed: {ledger_exc}")
            raise
        outcome = operation_event(kind, op, COMPLETED, observed, meta)
        view = fold(view, self.store.append(stream, view.version, [outcome]))
        faults.reach("after-outcome", op)
        return view, observed

    def _reread(self, stream: str, view: View) -> View:
        """The stream's view as stored now (a lease keeper appended renewals meanwhile)."""
        stored = (
            self.store.disk(stream) if isinstance(view, DiskView) else self.store.template(stream)
        )
        assert stored is not None
        return stored

    def _repeat(self, op_id: str | None, request: Mapping[str, Any]) -> RecordedEvent | None:
        """The outcome of an earlier operation with idempotency key ``op_id``, when it made the
        same request and completed; None when ``op_id`` is new. Anything else is refused."""
        if op_id is None:
            return None
        check_name(op_id, "op id")
        events = self.store.read_operation(op_id)
        intent = next((e for e in events if split_type(e.type)[2] == STARTED), None)
        if intent is None:
            return None
        if intent.data.get("request") != dict(request):
            raise Conflict(
                f"op id {op_id} was used for {_describe(intent.data.get('request', {}))}, "
                f"not {_describe(request)}"
            )
        outcome = events[-1]
        _, op, phase = split_type(outcome.type)
        if phase == COMPLETED:
            return outcome
        if phase == FAILED:
            raise Conflict(
                f"operation {op_id} failed: {outcome.data.get('error')}; retry with a new op id"
            )
        raise OperationPending(intent.stream, op, op_id)

    def _disk_after(self, event: RecordedEvent) -> DiskView:
        events = self.store.read_stream(event.stream)
        return fold(DiskView(disk=event.stream.partition(":")[2]), events[: event.version])

    def _template_after(self, event: RecordedEvent) -> TemplateView:
        events = self.store.read_stream(event.stream)
        view = empty_view(event.stream)
        assert isinstance(view, TemplateView)
        return fold(view, events[: event.version])

    @staticmethod
    def _refuse_unowned(backend: Backend, stream: str, artifacts: Sequence[Artifact]) -> None:
        """Refuse to start when a final artifact the intent names already exists.

        The ledger does not own it (no disk or template here names it), and compensation would
        remove it: it is drift for ``verify`` and the operator, never something to adopt or
        overwrite silently.
        """
        finals = [a for a in artifacts if not a.temporary]
        for seen in backend.probe(finals) if finals else ():
            if seen.exists:
                where = seen.artifact.location + (
                    f" @{seen.artifact.name}" if seen.artifact.name else ""
                )
                raise Conflict(f"{stream}: {where} exists but the ledger does not own it")

    @staticmethod
    def _validate(stream: str, view: DiskView | TemplateView, events: Sequence[NewEvent]) -> None:
        validator: Validator[Any] = (
            _DISK_VALIDATOR if isinstance(view, DiskView) else _TEMPLATE_VALIDATOR
        )
        for event in events:
            if validator.target(view, event.type, params_of(view, event)) is None:
                raise IllegalTransition(stream, view.state, event.type)
            view = evolve(view, event)

    def _metadata(
        self, op_id: str, *, causation: str | None = None, actor: str | None = None
    ) -> Metadata:
        return Metadata(
            op_id=op_id,
            host=self.host,
            pid=os.getpid(),
            actor=actor or self.actor,
            causation=causation,
            process=current_process(),
        )

    # -- lookups -------------------------------------------------------------------------------

    def _disk_view(self, disk: str, *, must_exist: bool) -> DiskView:
        view = self.store.disk(disk_stream(disk))
        if view is None:
            if must_exist:
                raise DiskNotFound(disk)
            return DiskView(disk=disk)
        return view

    def _live_disk(self, disk: str, *, for_op: str | None = None) -> DiskView:
        """The view of an existing disk with nothing in flight, that ``for_op`` may change."""
        check_disk(disk)
        view = self._disk_view(disk, must_exist=True)
        self._refuse_pending(disk_stream(disk), view)
        if view.state in (DiskState.ABSENT, DiskState.TEMPLATE_CACHED):
            raise DiskNotFound(disk)
        if for_op is not None:
            refuse_while_attached(view, for_op, self.backend_of(view))
        return view

    @staticmethod
    def _refuse_pending(stream: str, view: DiskView | TemplateView) -> None:
        if view.pending is not None:
            raise OperationPending(stream, view.pending.op, view.pending.op_id)

    @staticmethod
    def _existing_snapshot(disk: str, view: DiskView, snapshot: str) -> None:
        check_snapshot(snapshot)
        if view.snapshot(snapshot) is None:
            raise SnapshotNotFound(disk, snapshot)


def _attachment_params(
    view: DiskView, attachment: Attachment, device: DiskDevice
) -> dict[str, Any]:
    """An attach or detach intent: the attachment, and the storage recovery looks for in it."""
    return {
        **attachment.to_json(),
        "source": source_json(device.source),
        "location": view.location,
        "format": view.format,
    }


def _secret_usage(ceph: CephConfig) -> str:
    return f"client.{ceph.user} secret"


def _describe(request: Mapping[str, Any]) -> str:
    words = [request.get("op"), *(v for k, v in request.items() if k != "op")]
    return " ".join(str(w) for w in words if w is not None) or "another request"


def _new_op_id() -> str:
    return uuid.uuid4().hex


def _readable_file(path: Path) -> Path:
    """The absolute path of ``path`` if it exists and, when a regular file, can be read.

    A missing or unreadable source is a typo and changes nothing. Anything else that is not a
    plain regular file (a symlink, a directory, a FIFO) is a hostile source: it goes on to the
    fetch, which refuses it there, so that the refusal is recorded for the audit trail.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError as exc:
        raise InvalidSource(f"source file {str(path)!r} does not exist") from exc
    except OSError as exc:
        raise InvalidSource(f"source file {str(path)!r} cannot be read: {exc.strerror}") from exc
    if stat.S_ISREG(mode):
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise InvalidSource(
                f"source file {str(path)!r} cannot be read: {exc.strerror}"
            ) from exc
    return path.absolute()


def _new_file_target(path: Path) -> Path:
    """An absolute export target that does not exist yet, in a directory that does."""
    path = path.absolute()
    if path.exists() or path.is_symlink():
        raise InvalidInput(f"export target {str(path)!r} already exists")
    if not path.parent.is_dir():
        raise InvalidInput(f"export target directory {str(path.parent)!r} does not exist")
    return path
