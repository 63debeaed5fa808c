"""``Engine``: the embedding API, a façade over the runtime and the operations."""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, overload

from diskledger.backends import Backend, TemplateStore
from diskledger.engine.config import Config
from diskledger.engine.inputs import check_disk
from diskledger.engine.operations.attachment import ATTACH, DETACH, describe_disk
from diskledger.engine.operations.create import CREATE, IMPORT
from diskledger.engine.operations.delete import DELETE
from diskledger.engine.operations.export import EXPORT, Export
from diskledger.engine.operations.resize import RESIZE
from diskledger.engine.operations.snapshots import REMOVE_SNAPSHOT, ROLLBACK, SNAPSHOT
from diskledger.engine.operations.standalone import DIRECT_SNAPSHOT, FLATTEN, DirectSnapshot
from diskledger.engine.operations.templates import (
    FETCH,
    FORMATS,
    ensure_template,
    find_template,
)
from diskledger.engine.protocol import disk_view, live_disk
from diskledger.engine.recovery import RecoveryReport, recover
from diskledger.engine.runtime import Runtime, build
from diskledger.engine.takeover import Observer, TakeoverReport, confirm_down, take_over
from diskledger.errors import DiskNotFound
from diskledger.events import RecordedEvent
from diskledger.hypervisor import Hypervisor, secrets
from diskledger.states import DiskState, DiskView, TemplateState, TemplateView
from diskledger.states.streams import disk_stream
from diskledger.store import EventStore, MemberRecord
from diskledger.store.feed import Heartbeat, Subscription

if TYPE_CHECKING:
    from diskledger.engine.verify import VerifyReport

__all__ = ["FORMATS", "DirectSnapshot", "Engine", "Export"]


class Engine:
    """The embedding API: every disk and template operation, recorded in the ledger.

    Each operation that touches storage follows the protocol of DESIGN.md: the intent
    (``<op>.started``, naming every artifact the operation may create) is durable before storage
    is touched; the outcome (``completed`` with what was observed, or ``failed`` after the named
    artifacts were removed) is recorded after. Bad input raises an ``InvalidInput``/``NotFound``/
    ``IllegalTransition`` before anything is written; a second operation on a busy disk raises
    ``OperationPending`` or ``ConcurrencyError`` and is never interleaved.

    Every operation method takes an optional ``op_id``, its idempotency key: repeating a request
    that completed with the same key returns its result and records nothing; the same key for
    another request is a ``Conflict``.

    Disks are named ``INSTANCE/NAME``; sizes are bytes (or strings like ``"10G"``).

    Threads may share one engine: each call runs its own transactions on pooled connections,
    writers to a SQLite ledger queue for it (threads and processes alike), and the rule above
    holds between threads as between hosts. A forked child opens its own engine; the parent's
    connections stay the parent's.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._observer = Observer()

    @classmethod
    def open(cls, config: Config | None = None, **overrides: Any) -> Engine:
        """An engine for ``config`` (default: from the environment, see ``Config``).

        Unless ``config.recover`` is false, operations left pending by dead processes are
        recovered before it returns (see ``recover``).
        """
        config = config or Config.load(**overrides)
        engine = cls(build(config))
        if config.recover:
            try:
                engine.recover()
            except BaseException:
                engine.close()
                raise
        return engine

    @property
    def store(self) -> EventStore:
        return self.runtime.store

    @property
    def backend(self) -> Backend:
        """The configured backend: new disks are made here."""
        return self.runtime.backend

    @property
    def templates(self) -> TemplateStore:
        return self.runtime.templates

    @property
    def hypervisor(self) -> Hypervisor:
        return self.runtime.hypervisor

    @property
    def host(self) -> str:
        return self.runtime.host

    def backend_of(self, disk: DiskView) -> Backend:
        """The backend that keeps ``disk``, as its stream recorded."""
        return self.runtime.backend_of(disk)

    def recover(self, *, dry_run: bool = False) -> RecoveryReport:
        """Finish or undo every operation whose intent has no outcome and whose writer is dead.

        Decisions follow each operation's rules (``diskledger.engine.recovery.RULES``, documented
        in docs/recovery.md) and are recorded as events with the evidence the probe saw.
        ``dry_run`` decides and reports without changing anything.
        """
        return recover(self.runtime, dry_run=dry_run, observer=self._observer)

    # -- members of a shared ledger ------------------------------------------------------------

    @property
    def member(self) -> str | None:
        """This engine's member id on a shared ledger (None without members, or before its
        first intent: it joins then)."""
        membership = self.runtime.membership
        return membership.member if membership is not None and membership.joined else None

    def members(self) -> builtins.list[MemberRecord]:
        """Every member of the ledger, with its lease as the database judges it."""
        return self.runtime.store.members()

    def take_over(self, *, member: str | None = None) -> TakeoverReport:
        """One takeover scan (see ``diskledger.engine.takeover``): fence the members whose lease
        ran out (and whose renewals this engine saw stop for a whole lease), then settle the
        operations they owned. ``member``: consider that member only."""
        return take_over(self.runtime, self._observer, only=member)

    def confirm_down(self, member: str, *, by: str = "operator") -> MemberRecord:
        """Record an operator's word that ``member``'s host is down (powered off): takeover may
        then go past the circuit breaker and past in-place operations on unfenced storage."""
        return confirm_down(self.runtime, member, by=by)

    def verify(self) -> VerifyReport:
        """Check the hash chain, the read models against the log, and storage against the ledger."""
        from diskledger.engine.verify import verify  # only this command needs it

        return verify(self.runtime)

    def close(self) -> None:
        self.runtime.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- templates -------------------------------------------------------------------------------

    def add_template(
        self, template: str, source: str | os.PathLike[str], fmt: str, *, op_id: str | None = None
    ) -> TemplateView:
        """Import ``source`` into the template store as ``template``, declared as ``fmt``."""
        return FETCH(self.runtime, template, source, fmt, op_id=op_id)

    def ensure_template(
        self, template: str, source: str | os.PathLike[str], fmt: str, *, timeout: float = 3600.0
    ) -> TemplateView:
        """The cached ``template``, fetched from ``source`` when nobody has.

        When another process is fetching it, wait for its outcome rather than fetch again; when
        that process has died or stopped renewing its lease, recover its fetch (removing the
        partial copy) and fetch it here. Many concurrent callers fetch a template exactly once.
        """
        return ensure_template(
            self.runtime, template, source, fmt, timeout=timeout, recover=self.recover
        )

    def template(self, template: str) -> TemplateView:
        return find_template(self.runtime, template)

    def list_templates(self) -> builtins.list[TemplateView]:
        return [t for t in self.store.templates() if t.state is not TemplateState.ABSENT]

    def template_users(self, template: str) -> builtins.list[str]:
        """Live disks made from ``template``."""
        return [
            d
            for d in self.store.template_users(template)
            if (view := self.store.disk(disk_stream(d))) and view.state is not DiskState.ABSENT
        ]

    # -- disks -----------------------------------------------------------------------------------

    def create(
        self,
        disk: str,
        *,
        template: str | None = None,
        size: int | str | None = None,
        encrypt: bool = False,
        op_id: str | None = None,
    ) -> DiskView:
        """Create ``disk`` from a cached ``template`` (at least the template's virtual size; no
        size means exactly that) or, without a template, blank with ``size``.

        ``encrypt``: LUKS-encrypt it (qcow2: qemu's LUKS; lvm: dm-crypt LUKS2) under a new key
        from the configured key provider; the template's data is copied in, not shared
        (docs/encryption.md)."""
        return CREATE(
            self.runtime, disk, template=template, size=size, encrypt=encrypt, op_id=op_id
        )

    def import_disk(
        self,
        disk: str,
        source: str | os.PathLike[str],
        fmt: str,
        *,
        encrypt: bool = False,
        op_id: str | None = None,
    ) -> DiskView:
        """Create ``disk`` from the local image file ``source``, declared as ``fmt``.

        The file is copied and the copy inspected like a template (no backing or data file, the
        declared format), then converted into the backend's format (``encrypt``: into a new
        LUKS-encrypted disk, as ``create`` does). An existing disk is never replaced: delete it
        first (its history stays in the ledger).
        """
        return IMPORT(self.runtime, disk, source, fmt, encrypt=encrypt, op_id=op_id)

    def resize(self, disk: str, size: int | str, *, op_id: str | None = None) -> DiskView:
        """Grow ``disk`` to ``size``. The same size changes nothing; a smaller one is refused.
        An attached disk whose domain runs is grown through its qemu (the guest sees it)."""
        return RESIZE(self.runtime, disk, size, op_id=op_id)

    def snapshot(self, disk: str, snapshot: str, *, op_id: str | None = None) -> DiskView:
        """Take a snapshot named ``snapshot`` (unique per disk)."""
        return SNAPSHOT(self.runtime, disk, snapshot, op_id=op_id)

    def rollback(self, disk: str, snapshot: str, *, op_id: str | None = None) -> DiskView:
        """Revert the disk's data to ``snapshot``; the disk keeps its current size."""
        return ROLLBACK(self.runtime, disk, snapshot, op_id=op_id)

    def remove_snapshot(self, disk: str, snapshot: str, *, op_id: str | None = None) -> DiskView:
        return REMOVE_SNAPSHOT(self.runtime, disk, snapshot, op_id=op_id)

    def delete(self, disk: str, *, op_id: str | None = None) -> DiskView:
        """Remove the disk and all its snapshots; the disk's history stays in the ledger."""
        return DELETE(self.runtime, disk, op_id=op_id)

    def export(
        self,
        disk: str,
        target: str | os.PathLike[str],
        fmt: str | None = None,
        *,
        op_id: str | None = None,
    ) -> Export:
        """Write a standalone copy of ``disk`` (no backing file) to a new file ``target``."""
        return EXPORT(self.runtime, disk, target, fmt, op_id=op_id)

    def flatten(self, disk: str, *, op_id: str | None = None) -> DiskView:
        """Copy the data ``disk`` shares with its template into it, so that it no longer depends
        on the template (RBD clones). A disk that is already flat is left as it is."""
        return FLATTEN(self.runtime, disk, op_id=op_id)

    def direct_snapshot(
        self, disk: str, snapshot: str, image_id: str, *, op_id: str | None = None
    ) -> DirectSnapshot:
        """Hand a standalone copy of ``disk``'s current data to the snapshot pool as the image
        ``image_id`` with a protected snapshot ``snap`` (what Nova gives Glance), and return its
        ``rbd://fsid/pool/image/snap`` URL. ``snapshot`` names the short-lived snapshot of the
        disk the copy is cloned from; it is removed again, also when the operation fails."""
        return DIRECT_SNAPSHOT(self.runtime, disk, snapshot, image_id, op_id=op_id)

    def show(self, disk: str) -> DiskView:
        """The ledger's view of ``disk`` (also of a deleted one: it shows as ``absent``)."""
        check_disk(disk)
        return disk_view(self.runtime, disk, must_exist=True)

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

    @overload
    def subscribe(
        self,
        after_position: int = 0,
        *,
        heartbeat: None = None,
        stop: threading.Event | None = None,
        batch: int = 1000,
    ) -> Subscription[RecordedEvent]: ...

    @overload
    def subscribe(
        self,
        after_position: int = 0,
        *,
        heartbeat: float,
        stop: threading.Event | None = None,
        batch: int = 1000,
    ) -> Subscription[RecordedEvent | Heartbeat]: ...

    def subscribe(
        self,
        after_position: int = 0,
        *,
        heartbeat: float | None = None,
        stop: threading.Event | None = None,
        batch: int = 1000,
    ) -> Subscription[Any]:
        """The ledger's change feed: every event after ``after_position``, then each new one as
        it commits, checked against the hash chain (``FeedGap`` on a gap or a break); heartbeats
        when asked for; ends when ``stop`` is set or the subscription is closed. The contract is
        ``EventStore.subscribe``'s. Orchestrators wait here for their operation's outcome."""
        if heartbeat is None:
            return self.store.subscribe(after_position, stop=stop, batch=batch)
        return self.store.subscribe(after_position, heartbeat=heartbeat, stop=stop, batch=batch)

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
        view = live_disk(self.runtime, disk)
        return describe_disk(
            self.runtime,
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
        return ATTACH(
            self.runtime,
            disk,
            domain,
            target_dev=target_dev,
            bus=bus,
            cache=cache,
            discard=discard,
            disk_unit=disk_unit,
            extra_specs=extra_specs,
            op_id=op_id,
        )

    def detach(self, disk: str, *, op_id: str | None = None) -> DiskView:
        """Record that no domain uses ``disk`` any more: ``disk.detach``.

        When the domain is running with the disk, it is hot-unplugged first and the engine waits
        (``Config.detach_timeout``) for the guest to let go of it; a guest that does not keeps
        the disk, and the detach fails. A domain that is gone, or no longer has the disk, is only
        recorded.
        """
        return DETACH(self.runtime, disk, op_id=op_id)

    def define_ceph_secret(self) -> str:
        """Define (or update) the libvirt secret that holds the configured RBD user's key, so
        that qemu can reach the cluster as that user; its UUID (``rbd_secret_uuid`` when set).

        The secret is private (libvirt never shows its value) and named
        ``client.<user> secret``, as Nova's deployment guides name it.
        """
        return secrets.define_ceph_secret(
            self.hypervisor, self.backend, secret_uuid=self.runtime.rbd_secret_uuid
        )

    def undefine_ceph_secret(self) -> str | None:
        """Remove the secret ``define_ceph_secret`` made; its UUID, or None when there was none."""
        return secrets.undefine_ceph_secret(self.hypervisor, self.backend)
