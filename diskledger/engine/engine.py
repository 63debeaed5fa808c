"""``Engine``: the embedding API, a façade over the runtime and the operations."""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta
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
from diskledger.engine.operations.template_gc import (
    DEFAULT_AGE,
    REMOVE,
    GcReport,
    collect_templates,
)
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
from diskledger.progress import Progress, reporting
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

    Errors: everything raised on purpose is a ``diskledger.errors.DiskLedgerError``; each method
    lists its own. Besides those, every operation that records an intent may raise
    ``StoreError`` (the ledger failed: nothing was done, or the intent stays pending for
    ``recover``) and ``ConcurrencyError`` (another writer changed the stream since it was read);
    on a ledger with members also ``Fenced`` (this member lost its lease: it does nothing more)
    and ``OwnershipLost`` (another member took the operation over). A
    ``BackendError`` (or ``HypervisorError``) from an operation's effect is raised after the
    operation was settled by its recovery rules, as ``recover`` would (mostly ``<op>.failed``,
    its artifacts removed; see docs/recovery.md). docs/embedding.md maps them to actions.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._observer = Observer()

    @classmethod
    def open(cls, config: Config | None = None, **overrides: Any) -> Engine:
        """Open an engine on the ledger and backend ``config`` names.

        Unless ``config.recover`` is false, operations left pending by dead processes are
        recovered before it returns (see ``recover``). Use it as a context manager, or ``close``.

        Args:
            config: Where the ledger and the disks are; None reads it from the environment
                (``Config.load(**overrides)``).
            **overrides: ``Config.load`` keywords (``root``, ``ledger``, ``backend``, ``actor``,
                ``recover``, ``environ``), when ``config`` is None.

        Returns:
            The open engine.

        Raises:
            InvalidInput: A ``DISKLEDGER_*`` setting is malformed (``Config.load``).
            UnknownBackend: No backend of the configured name.
            StoreError: The ledger cannot be opened, created or upgraded.
            BackendError: Recovery could not probe the storage of a pending operation.
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
        """The ledger (``EventStore``): its read models and its log, for reading."""
        return self.runtime.store

    @property
    def backend(self) -> Backend:
        """The configured backend: new disks are made here."""
        return self.runtime.backend

    @property
    def templates(self) -> TemplateStore:
        """Where cached templates are kept (the backend's template store)."""
        return self.runtime.templates

    @property
    def hypervisor(self) -> Hypervisor:
        """The libvirt connection attach, detach and live resize use (opened on first use)."""
        return self.runtime.hypervisor

    @property
    def host(self) -> str:
        """This host's name, as events and the template cache's scope record it."""
        return self.runtime.host

    def backend_of(self, disk: DiskView) -> Backend:
        """The backend that keeps ``disk``, as its stream recorded (a ledger may hold several).

        Raises:
            UnknownBackend: The recorded backend is not installed here.
            InvalidInput: That backend's ``DISKLEDGER_*`` settings are malformed.
        """
        return self.runtime.backend_of(disk)

    def recover(self, *, dry_run: bool = False) -> RecoveryReport:
        """Finish or undo every operation whose intent has no outcome and whose writer is dead.

        Decisions follow each operation's rules (``diskledger.engine.recovery.RULES``, documented
        in docs/recovery.md) and are recorded as events with the evidence the probe saw. An
        operation whose writer still runs is left alone (``in_flight``); one whose domain libvirt
        could not show stays pending (``deferred``); one the evidence cannot settle is recorded as
        ``needs-operator``. On a ledger with members, other members' operations are settled by a
        takeover when its rule allows (``take_over``).

        Args:
            dry_run: Decide and report without changing anything.

        Returns:
            A ``RecoveryReport``: what was found pending and what became of each operation.

        Raises:
            StoreError: The ledger failed.
            BackendError: The storage of a pending operation could not be probed.
            Fenced: This member lost its lease (a ledger with members).
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
        """Every member of the ledger, with its lease as the database judges it.

        Returns:
            One ``MemberRecord`` per member (none on a ledger without members).

        Raises:
            StoreError: The ledger failed.
        """
        return self.runtime.store.members()

    def take_over(self, *, member: str | None = None) -> TakeoverReport:
        """One takeover scan (see ``diskledger.engine.takeover``): fence the members whose lease
        ran out (and whose renewals this engine saw stop for a whole lease), then settle the
        operations they owned.

        Args:
            member: Consider that member only.

        Returns:
            A ``TakeoverReport``: who was fenced, what was settled, who is still waited for.

        Raises:
            InvalidInput: This ledger has no members.
            Fenced: This member lost its lease.
            StoreError: The ledger failed.
        """
        return take_over(self.runtime, self._observer, only=member)

    def confirm_down(self, member: str, *, by: str = "operator") -> MemberRecord:
        """Record an operator's word that ``member``'s host is down (powered off): takeover may
        then go past the circuit breaker and past in-place operations on unfenced storage.

        Args:
            member: The member id (see ``members``).
            by: Who confirms it, for the audit trail.

        Returns:
            The member's record, confirmed down (also when it already was).

        Raises:
            InvalidInput: No such member, or it left cleanly.
            Conflict: The member's stream kept changing under ten attempts.
            StoreError: The ledger failed.
        """
        return confirm_down(self.runtime, member, by=by)

    def verify(self) -> VerifyReport:
        """Check the hash chain, the read models against the log, and storage against the ledger.

        Returns:
            A ``VerifyReport``; ``ok`` is false when it found a problem (problems are reported,
            not raised).

        Raises:
            StoreError: The ledger could not be read.
            BackendError: The storage could not be probed.
        """
        from diskledger.engine.verify import verify  # only this command needs it

        return verify(self.runtime)

    def close(self) -> None:
        """Leave the ledger (as a member: cleanly), close the backends, libvirt and the ledger."""
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
        self,
        template: str,
        source: str | os.PathLike[str],
        fmt: str,
        *,
        op_id: str | None = None,
        sha256: str | None = None,
        progress: Progress | None = None,
    ) -> TemplateView:
        """Import ``source`` into the template store as ``template``, declared as ``fmt``.

        The copy is inspected before it is accepted (the declared format, no backing or data
        file, at most ``Config.max_template_size``). Several callers that may race for one
        template use ``ensure_template``.

        ``source`` is a local image file or an ``http://``/``https://`` URL, streamed to the
        template's temporary name and verified against ``sha256`` while it is written (see
        docs/templates.md for the timeouts, retries, redirects and ceilings).

        Args:
            template: The template's name.
            source: A local image file (not inside the engine's root), or an http(s) URL.
            fmt: ``raw`` or ``qcow2``.
            op_id: The idempotency key.
            sha256: The hex SHA-256 the source's bytes must have (None: not verified).
            progress: Called with a ``ProgressEvent`` as the copies of the fetch go
                (``what="fetch"``; steps ``download``, ``copy``, ``convert``), from this thread,
                a few times a second at most (see ``diskledger.progress``).

        Returns:
            The cached template.

        Raises:
            InvalidName: ``template`` or ``op_id`` is not a valid name.
            InvalidInput: ``fmt`` is not a template format.
            InvalidSource: ``source`` is missing, unreadable, inside the root, a URL of another
                scheme or with credentials (refused before anything is recorded); or the
                download failed, was cut short, too long, or its checksum did not match
                (recorded as ``template.fetch.failed``).
            IllegalTransition: The template is cached already.
            OperationPending: A fetch of it (or the operation ``op_id`` names) is in flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            UnsafeImage: The inspection refused the copy (recorded as ``template.fetch.failed``).
            BackendError: The copy failed (recorded as ``template.fetch.failed``).
        """
        with reporting(progress, "fetch"):
            return FETCH(self.runtime, template, source, fmt, op_id=op_id, sha256=sha256)

    def ensure_template(
        self,
        template: str,
        source: str | os.PathLike[str],
        fmt: str,
        *,
        timeout: float = 3600.0,
        sha256: str | None = None,
        progress: Progress | None = None,
    ) -> TemplateView:
        """The cached ``template``, fetched from ``source`` when nobody has.

        When another process is fetching it, wait for its outcome rather than fetch again; when
        that process has died or stopped renewing its lease, recover its fetch (removing the
        partial copy) and fetch it here. Many concurrent callers fetch a template exactly once.

        Args:
            template: The template's name.
            source: A local image file or an http(s) URL, used only when this call fetches.
            fmt: ``raw`` or ``qcow2``.
            timeout: Seconds to wait for another process's fetch.
            sha256: The hex SHA-256 the source's bytes must have, when this call fetches.
            progress: As ``add_template``'s, when this call fetches (waiting reports nothing).

        Returns:
            The cached template.

        Raises:
            Conflict: Another process's fetch was still in flight after ``timeout``.
            InvalidName: ``template`` is not a valid name.
            InvalidInput: ``fmt`` is not a template format.
            InvalidSource: As ``add_template`` refuses ``source``.
            UnsafeImage: The inspection refused the copy (recorded as ``template.fetch.failed``).
            BackendError: The copy failed (recorded as ``template.fetch.failed``).
        """
        with reporting(progress, "fetch"):
            return ensure_template(
                self.runtime,
                template,
                source,
                fmt,
                timeout=timeout,
                recover=self.recover,
                sha256=sha256,
            )

    def collect_templates(
        self,
        older_than: float | timedelta = DEFAULT_AGE,
        *,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> GcReport:
        """Remove the cached templates no live disk uses and none has used for ``older_than``.

        When a template was last used is the time of the ledger event that left it unused (the
        last ``disk.template-released`` naming it, the completed delete of the last disk made
        from it, or its own ``fetch.completed``), never a file time. A template in use or with
        an operation pending is kept. Each removal is a ``template.remove`` operation (intent,
        effect, outcome), refused when a disk binds the template first; see docs/templates.md.

        Args:
            older_than: Seconds, or a ``timedelta``; 24 hours by default (Nova's
                ``remove_unused_original_minimum_age_seconds``).
            dry_run: Decide, remove nothing (``would-remove`` in the report).
            now: The time ages are measured to (default: now, UTC).

        Returns:
            What became of each template of this engine's store.

        Raises:
            InvalidInput: ``older_than`` is negative.
            StoreError: The ledger failed.
        """
        return collect_templates(self.runtime, older_than, dry_run=dry_run, now=now)

    def remove_template(self, template: str, *, op_id: str | None = None) -> TemplateView:
        """Remove the cached ``template`` now, whatever its age (``collect_templates`` chooses
        by age). Refused while a live disk uses it.

        Raises:
            TemplateNotFound: It is not cached.
            OperationPending: An operation on it is in flight.
            Conflict: A disk uses it (or bound it during the removal: recorded as failed).
            StoreError: The ledger failed.
        """
        return REMOVE(self.runtime, template, op_id=op_id)

    def template(self, template: str) -> TemplateView:
        """The ledger's view of ``template`` (also while a fetch of it is in flight).

        Raises:
            InvalidName: ``template`` is not a valid name.
            TemplateNotFound: It was never fetched, or was evicted.
            StoreError: The ledger failed.
        """
        return find_template(self.runtime, template)

    def list_templates(self) -> builtins.list[TemplateView]:
        """Every template the ledger holds (cached, or being fetched).

        Raises:
            StoreError: The ledger failed.
        """
        return [t for t in self.store.templates() if t.state is not TemplateState.ABSENT]

    def template_users(self, template: str) -> builtins.list[str]:
        """The names of the live disks made from ``template`` (none for an unknown template).

        Raises:
            StoreError: The ledger failed.
        """
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
        """Create ``disk`` from a cached ``template`` or, without a template, blank.

        Args:
            disk: ``INSTANCE/NAME``.
            template: A cached template to make it from.
            size: Bytes or ``"10G"``; with a template at least its virtual size (None: exactly
                that); required without one.
            encrypt: LUKS-encrypt it (qcow2: qemu's LUKS; lvm: dm-crypt LUKS2) under a new key
                from the configured key provider; the template's data is copied in, not shared
                (docs/encryption.md).
            op_id: The idempotency key.

        Returns:
            The new disk's view (for a repeated ``op_id``: as it was after that create).

        Raises:
            InvalidName: ``disk`` or ``op_id`` is not a valid name.
            InvalidSize: ``size`` is malformed, missing for a blank disk, smaller than the
                template, or does not fit (lvm: the volume group's free space).
            InvalidInput: ``encrypt`` on a backend that cannot encrypt.
            UnsafeKeyStore: ``encrypt`` without a safe key provider.
            TemplateNotFound: ``template`` is not cached.
            IllegalTransition: The disk exists.
            OperationPending: The disk or the template (or the operation ``op_id`` names) has
                an operation in flight.
            Conflict: ``op_id`` was used for another request or for one that failed, or storage
                holds the disk's name although the ledger does not.
            BackendError: The storage failed; the create was settled by its recovery rules
                first (``disk.create.failed`` unless the disk was already whole).
        """
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
        progress: Progress | None = None,
    ) -> DiskView:
        """Create ``disk`` from the local image file ``source``, declared as ``fmt``.

        The file is copied and the copy inspected like a template (no backing or data file, the
        declared format), then converted into the backend's format (``encrypt``: into a new
        LUKS-encrypted disk, as ``create`` does). An existing disk is never replaced: delete it
        first (its history stays in the ledger).

        ``progress`` is called with a ``ProgressEvent`` as the copies go (``what="import"``;
        steps ``copy``, ``convert``), as ``add_template`` calls it.

        Returns:
            The new disk's view.

        Raises:
            InvalidName: ``disk`` or ``op_id`` is not a valid name.
            InvalidInput: ``fmt`` is not ``raw`` or ``qcow2``, or ``encrypt`` on a backend that
                cannot encrypt.
            InvalidSource: ``source`` is missing or unreadable.
            UnsafeKeyStore: ``encrypt`` without a safe key provider.
            IllegalTransition: The disk exists.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed, or storage
                holds the disk's name although the ledger does not.
            UnsafeImage: The inspection refused the copy (recorded as ``disk.import.failed``).
            BackendError: The copy or conversion failed (recorded as ``disk.import.failed``).
        """
        with reporting(progress, "import"):
            return IMPORT(self.runtime, disk, source, fmt, encrypt=encrypt, op_id=op_id)

    def resize(self, disk: str, size: int | str, *, op_id: str | None = None) -> DiskView:
        """Grow ``disk`` to ``size``. The same size changes nothing and records nothing.

        An attached disk whose domain runs is grown through its qemu (the guest sees it);
        otherwise the storage is resized offline.

        Returns:
            The disk's view at its new size.

        Raises:
            InvalidName: ``disk`` or ``op_id`` is not a valid name.
            InvalidSize: ``size`` is malformed, smaller than the disk (disks never shrink), or
                does not fit (lvm: the volume group's free space).
            Unsupported: The disk's backend keeps sizes fixed (parallels).
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            DiskAttached: Its domain runs but no longer shows the disk where it was attached.
            KeyNotFound: The disk is encrypted and its key is gone.
            HypervisorError: libvirt could not be asked, or refused the live resize.
            BackendError: The storage failed (the operation settled by its recovery rules).
        """
        return RESIZE(self.runtime, disk, size, op_id=op_id)

    def snapshot(self, disk: str, snapshot: str, *, op_id: str | None = None) -> DiskView:
        """Take a snapshot named ``snapshot`` (unique per disk).

        Returns:
            The disk's view, with the snapshot.

        Raises:
            InvalidName: ``disk``, ``snapshot`` (all digits too) or ``op_id`` is not valid.
            IllegalTransition: The disk has a snapshot of that name.
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            DiskAttached: A domain uses the disk and its backend cannot snapshot it in use.
            KeyNotFound: The disk is encrypted and its key is gone.
            BackendError: The storage failed; the snapshot was settled by its recovery rules
                first (``disk.snapshot.failed`` unless it was taken).
        """
        return SNAPSHOT(self.runtime, disk, snapshot, op_id=op_id)

    def rollback(self, disk: str, snapshot: str, *, op_id: str | None = None) -> DiskView:
        """Revert the disk's data to ``snapshot``; the disk keeps its current size.

        Returns:
            The disk's view after the rollback.

        Raises:
            InvalidName: ``disk``, ``snapshot`` or ``op_id`` is not a valid name.
            SnapshotNotFound: The disk has no such snapshot.
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            DiskAttached: A domain uses the disk.
            KeyNotFound: The disk is encrypted and its key is gone.
            BackendError: The storage failed (the operation settled by its recovery rules: a
                rollback whose copy was not published is undone, one in place is finished).
        """
        return ROLLBACK(self.runtime, disk, snapshot, op_id=op_id)

    def remove_snapshot(self, disk: str, snapshot: str, *, op_id: str | None = None) -> DiskView:
        """Remove the snapshot ``snapshot`` of ``disk``.

        Returns:
            The disk's view without the snapshot.

        Raises:
            InvalidName: ``disk``, ``snapshot`` or ``op_id`` is not a valid name.
            SnapshotNotFound: The disk has no such snapshot.
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            DiskAttached: A domain uses the disk and its backend cannot change it in use.
            KeyNotFound: The disk is encrypted and its key is gone.
            BackendError: The storage failed (the operation settled by its recovery rules).
        """
        return REMOVE_SNAPSHOT(self.runtime, disk, snapshot, op_id=op_id)

    def delete(self, disk: str, *, op_id: str | None = None) -> DiskView:
        """Remove the disk and all its snapshots; the disk's history stays in the ledger.

        An encrypted disk's key is destroyed after its data.

        Returns:
            The disk's view, ``absent``.

        Raises:
            InvalidName: ``disk`` or ``op_id`` is not a valid name.
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            DiskAttached: A domain uses the disk: detach it first.
            UnsafeKeyStore: The disk is encrypted and its key provider is not configured here.
            BackendError: The storage failed (the operation settled by its recovery rules: a
                delete that removed nothing is undone, a partial one is finished).
        """
        return DELETE(self.runtime, disk, op_id=op_id)

    def export(
        self,
        disk: str,
        target: str | os.PathLike[str],
        fmt: str | None = None,
        *,
        op_id: str | None = None,
        progress: Progress | None = None,
    ) -> Export:
        """Write a standalone copy of ``disk`` (no backing file) to a new file ``target``.

        Args:
            disk: ``INSTANCE/NAME``.
            target: A file that does not exist yet, in a directory that does.
            fmt: ``raw`` or ``qcow2`` (None: the disk's format).
            op_id: The idempotency key.
            progress: Called with a ``ProgressEvent`` as the copy goes (``what="export"``,
                step ``convert``: ``qemu-img convert``; a raw disk copied to raw by ``cp`` or
                a backend's own copy reports nothing), as ``add_template`` calls it.

        Returns:
            The ``Export``: where it was written, its format and size.

        Raises:
            InvalidName: ``disk`` or ``op_id`` is not a valid name.
            InvalidInput: ``fmt`` is not ``raw`` or ``qcow2``, ``target`` exists or its
                directory does not, or the disk is encrypted (its data would leave unencrypted).
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            DiskAttached: A domain uses the disk.
            BackendError: The copy failed; the export was settled by its recovery rules
                first (``disk.export.failed`` unless the copy was whole).
        """
        with reporting(progress, "export"):
            return EXPORT(self.runtime, disk, target, fmt, op_id=op_id)

    def flatten(
        self, disk: str, *, op_id: str | None = None, progress: Progress | None = None
    ) -> DiskView:
        """Copy the data ``disk`` shares with its template into it, so that it no longer depends
        on the template (RBD clones). A disk that is already flat is left as it is.

        ``progress`` is called with a ``ProgressEvent`` as librbd copies (``what="flatten"``,
        step ``flatten``), from librbd's threads (see ``diskledger.progress``).

        Returns:
            The disk's view, without a backing template.

        Raises:
            InvalidName: ``disk`` or ``op_id`` is not a valid name.
            InvalidInput: The disk's backend cannot flatten (every backend but rbd).
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            DiskAttached: A domain uses the disk.
            BackendError: The cluster failed (``CephError``); the flatten was settled by its
                recovery rules first.
        """
        with reporting(progress, "flatten"):
            return FLATTEN(self.runtime, disk, op_id=op_id)

    def direct_snapshot(
        self, disk: str, snapshot: str, image_id: str, *, op_id: str | None = None
    ) -> DirectSnapshot:
        """Hand a standalone copy of ``disk``'s current data to the snapshot pool as the image
        ``image_id`` with a protected snapshot ``snap`` (what Nova gives Glance).

        ``snapshot`` names the short-lived snapshot of the disk the copy is cloned from; it is
        removed again, also when the operation fails.

        Returns:
            The ``DirectSnapshot``, with its ``rbd://fsid/pool/image/snap`` URL.

        Raises:
            InvalidName: ``disk``, ``snapshot``, ``image_id`` or ``op_id`` is not valid.
            InvalidInput: The disk has a snapshot ``snapshot`` already, or its backend cannot
                direct-snapshot (every backend but rbd).
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            DiskAttached: A domain uses the disk and its backend cannot copy it in use.
            BackendError: The cluster failed (``CephError``); the operation was settled by
                its recovery rules first (``failed`` unless the copy was published).
        """
        return DIRECT_SNAPSHOT(self.runtime, disk, snapshot, image_id, op_id=op_id)

    def show(self, disk: str) -> DiskView:
        """The ledger's view of ``disk`` (also of a deleted one: it shows as ``absent``).

        Raises:
            InvalidName: ``disk`` is not ``INSTANCE/NAME``.
            DiskNotFound: The ledger never held it.
            StoreError: The ledger failed.
        """
        check_disk(disk)
        return disk_view(self.runtime, disk, must_exist=True)

    def list(self, *, include_deleted: bool = False) -> builtins.list[DiskView]:
        """Every disk the ledger holds; ``include_deleted``: the deleted ones too (``absent``).

        Raises:
            StoreError: The ledger failed.
        """
        return [d for d in self.store.disks() if include_deleted or d.state is not DiskState.ABSENT]

    def history(self, disk: str | None = None) -> builtins.list[RecordedEvent]:
        """The audit trail: every event of ``disk``'s stream, or of the whole ledger, in order.

        Each operation shows as its intent (``<op>.started``) and its outcome (``completed``,
        ``failed``, or ``needs-operator``; recovery's carry ``data["recovery"]``), with the
        operation id, host, process and actor in ``metadata``.

        Raises:
            InvalidName: ``disk`` is not ``INSTANCE/NAME``.
            DiskNotFound: The ledger never held it.
            StoreError: The ledger failed.
        """
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
        it commits, checked against the hash chain; heartbeats when asked for; ends when
        ``stop`` is set or the subscription is closed. The contract is
        ``EventStore.subscribe``'s. Orchestrators wait here for their operation's outcome.

        Args:
            after_position: The last position already seen (0: from the start).
            heartbeat: Seconds between ``Heartbeat`` items while nothing commits (None: none).
            stop: Ends the feed when set.
            batch: Events read per query.

        Returns:
            An iterable ``Subscription`` (close it, or set ``stop``).

        Raises:
            InvalidInput: A negative ``after_position``, or a ``heartbeat`` or ``batch`` that
                is not positive.
            FeedGap: While iterating: a gap in positions or a break in the hash chain.
            StoreError: While iterating: the ledger cannot be read or watched.
        """
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
        ``<iotune>`` limits. Nothing is recorded.

        Returns:
            The ``<disk>`` element, as XML text.

        Raises:
            InvalidName: ``disk`` is not ``INSTANCE/NAME``.
            InvalidInput: A bad bus, cache or discard mode, boot order, disk unit or extra
                spec, or an RBD user without ``rbd_secret_uuid``.
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk has an operation in flight.
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

        Returns:
            The disk's view, with its ``attachment``.

        Raises:
            InvalidName: ``disk``, ``domain`` or ``op_id`` is not a valid name.
            InvalidInput: A bad device choice (as ``libvirt_disk``), or the domain has the disk
                at another device or another disk at ``target_dev``.
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            DiskAttached: The disk is attached already.
            KeyNotFound: The disk is encrypted and its key is gone.
            DomainNotFound: libvirt has no such domain.
            HypervisorError: libvirt refused or failed (``HypervisorUnavailable``: unreachable).
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

        Returns:
            The disk's view, without an attachment.

        Raises:
            InvalidName: ``disk`` or ``op_id`` is not a valid name.
            InvalidInput: The disk is not attached.
            DiskNotFound: No such disk, or it was deleted.
            OperationPending: The disk (or the operation ``op_id`` names) has an operation in
                flight.
            Conflict: ``op_id`` was used for another request or for one that failed.
            HypervisorError: libvirt refused or failed, or the guest kept the disk past
                ``Config.detach_timeout`` (``HypervisorUnavailable``: unreachable).
        """
        return DETACH(self.runtime, disk, op_id=op_id)

    def define_ceph_secret(self) -> str:
        """Define (or update) the libvirt secret that holds the configured RBD user's key, so
        that qemu can reach the cluster as that user; its UUID (``rbd_secret_uuid`` when set).

        The secret is private (libvirt never shows its value) and named
        ``client.<user> secret``, as Nova's deployment guides name it.

        Returns:
            The secret's UUID.

        Raises:
            InvalidInput: The backend is not rbd with a cephx user and key, or a secret of that
                name exists with a UUID other than ``rbd_secret_uuid``.
            HypervisorError: libvirt refused or failed (``HypervisorUnavailable``: unreachable).
        """
        return secrets.define_ceph_secret(
            self.hypervisor, self.backend, secret_uuid=self.runtime.rbd_secret_uuid
        )

    def undefine_ceph_secret(self) -> str | None:
        """Remove the secret ``define_ceph_secret`` made; its UUID, or None when there was none.

        Raises:
            InvalidInput: The backend is not rbd with a cephx user.
            HypervisorError: libvirt refused or failed (``HypervisorUnavailable``: unreachable).
        """
        return secrets.undefine_ceph_secret(self.hypervisor, self.backend)
