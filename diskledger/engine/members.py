"""This engine as a member of a shared ledger: its join, its epoch, its one heartbeat lease.

On a ledger shared by several hosts (PostgreSQL), every engine that records an intent is a
*member*. It joins once (``member.joined``; the position of that event is its **epoch**, the
fencing token its intents carry as ``owner``), registers every Ceph client before the client
issues an OSD operation (``member.client-added``), and renews one lease for all its operations
from a heartbeat thread. Only the database's clock judges the lease (``EventStore.renew``).

A member that cannot renew fences **itself**: once a renewal reports the lease gone, or when no
renewal has succeeded for ``renew_deadline`` seconds of its own monotonic clock (counted from
the *sending* of the last good one), it kills the tools it runs, forbids new ones, and calls
``on_fenced`` — by default, it exits the process at once, as VDSM's storage watchdog does: the
takeover rule (``diskledger.engine.takeover``) waits a whole lease before fencing it on storage,
and ``renew_deadline < lease_ttl`` is what makes the member gone by then. It never reconnects to
shared storage without a valid lease.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from diskledger.backends import runner
from diskledger.backends.settings import seconds
from diskledger.engine.liveness import boot_id, current_process
from diskledger.errors import ConcurrencyError, DiskLedgerError, Fenced, InvalidInput
from diskledger.events import Metadata, NewEvent
from diskledger.states import MemberState
from diskledger.states.streams import member_stream
from diskledger.store import EventStore

__all__ = ["EXIT_FENCED", "LeaseSettings", "Membership"]

log = logging.getLogger(__name__)

EXIT_FENCED = 75
"""The exit status of a process that fenced itself (``EX_TEMPFAIL``: a supervisor may restart
it; the new process joins as a new member with a new epoch)."""


@dataclass(frozen=True, slots=True)
class LeaseSettings:
    """How long a member's lease runs and how it keeps it.

    ``ttl``: the lease; ``renew_every``: how often the heartbeat renews; ``renew_deadline``:
    after this long without a successful renewal the member fences itself. ``renew_deadline``
    must be below ``ttl`` (the margin tolerates a clock rate difference of ``ttl /
    renew_deadline`` between this host and the taker's), and above ``renew_every``.
    ``scan_every``: how often an agent looks for members to take over. All in seconds.

    Raises:
        InvalidInput: The settings break ``0 < renew_every < renew_deadline < ttl`` or
            ``scan_every`` is not positive (on construction).
    """

    ttl: float = 30.0
    renew_every: float = 5.0
    renew_deadline: float = 20.0
    scan_every: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_every < self.renew_deadline < self.ttl:
            raise InvalidInput(
                "lease settings need 0 < renew every < renew deadline < lease ttl, got "
                f"{self.renew_every:g} < {self.renew_deadline:g} < {self.ttl:g}"
            )
        if self.scan_every <= 0:
            raise InvalidInput(f"the takeover scan interval must be positive: {self.scan_every:g}")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> LeaseSettings:
        """``DISKLEDGER_LEASE_TTL``, ``DISKLEDGER_LEASE_RENEW``, ``DISKLEDGER_LEASE_DEADLINE``,
        ``DISKLEDGER_TAKEOVER_SCAN`` (seconds; defaults 30, 5, 20, 5).

        Raises:
            InvalidInput: A value is not a number of seconds in (0, 3600], or the settings
                break the rule of the class docstring.
        """
        return cls(
            ttl=seconds(environ, "DISKLEDGER_LEASE_TTL", 30.0),
            renew_every=seconds(environ, "DISKLEDGER_LEASE_RENEW", 5.0),
            renew_deadline=seconds(environ, "DISKLEDGER_LEASE_DEADLINE", 20.0),
            scan_every=seconds(environ, "DISKLEDGER_TAKEOVER_SCAN", 5.0),
        )


def exit_now(reason: str) -> None:
    """The default reaction to losing the lease: leave at once, running nothing more (no
    ``finally`` blocks, no atexit handlers: they could touch storage)."""
    log.critical("fenced: %s; exiting", reason)
    logging.shutdown()
    os._exit(EXIT_FENCED)


class Membership:
    """One engine incarnation on a shared ledger. Joins lazily, on the first ``owner()``."""

    def __init__(
        self,
        store: EventStore,
        host: str,
        settings: LeaseSettings,
        *,
        on_fenced: Callable[[str], None] = exit_now,
        actor: str = "diskledger",
    ) -> None:
        self.store = store
        self.host = host
        self.settings = settings
        self.member = f"{host}/{uuid.uuid4().hex[:12]}"
        self.stream = member_stream(self.member)
        self.epoch: int | None = None
        self.fenced: str | None = None
        """Why this member fenced itself (None while it holds its lease)."""
        self._on_fenced = on_fenced
        self._actor = actor
        self._version = 0
        self._lock = threading.RLock()
        self._fence_lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._storage_fences: list[Callable[[], None]] = []
        self._last_good = 0.0
        """When (monotonic) the last renewal that succeeded was sent."""

    # -- joining and leaving -------------------------------------------------------------------

    def owner(self) -> dict[str, Any]:
        """``{member, epoch}`` for an intent: who may record its outcome. Joins on first use."""
        self.check()
        with self._lock:
            if self.epoch is None:
                self._join()
            return {"member": self.member, "epoch": self.epoch}

    @property
    def joined(self) -> bool:
        return self.epoch is not None

    def _join(self) -> None:
        joined = NewEvent(
            "member.joined",
            {
                "host": self.host,
                "boot_id": boot_id(),
                "pid": os.getpid(),
                "process": current_process(),
                "lease_ttl": self.settings.ttl,
                "ceph_clients": [],
            },
            self.metadata(),
        )
        sent = time.monotonic()
        (recorded,) = self.store.append(self.stream, 0, [joined])
        self.epoch, self._version = recorded.position, recorded.version
        log.info("joined as member %s, epoch %d", self.member, self.epoch)
        self._last_good = sent  # the join started the lease
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"lease {self.member}", daemon=True
        )
        self._heartbeat.start()
        threading.Thread(target=self._watch, name=f"deadline {self.member}", daemon=True).start()

    def leave(self) -> None:
        """Stop the heartbeat and record ``member.left`` (a clean shutdown: nothing to take
        over). Does nothing for a member that never joined or fenced itself."""
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join()
        with self._lock:
            if self.epoch is None or self.fenced is not None:
                return
            try:
                self._append(NewEvent("member.left", {}, self.metadata()))
            except DiskLedgerError as exc:
                log.warning("member %s: recording its leaving failed: %s", self.member, exc)

    def metadata(self, op_id: str | None = None) -> Metadata:
        return Metadata(op_id=op_id, host=self.host, actor=self._actor, process=current_process())

    # -- shared storage ------------------------------------------------------------------------

    def register_clients(self, addresses: Sequence[str]) -> None:
        """Record a new storage client's addresses before it is used (a fence blocklists exactly
        the registered ones). Raises ``Fenced`` when this member may no longer use storage."""
        self.owner()  # joined, and not fenced
        with self._lock:
            self._append(
                NewEvent("member.client-added", {"addresses": list(addresses)}, self.metadata())
            )

    def record_suspension(self, suspended: Mapping[str, Any]) -> None:
        """Record ``member.takeover-suspended`` (once for the same set of stale members)."""
        self.owner()
        record = self.store.member(self.stream)
        if record is not None and record.view.suspended == dict(suspended):
            return
        with self._lock:
            self._append(NewEvent("member.takeover-suspended", dict(suspended), self.metadata()))

    def on_storage_fence(self, shut: Callable[[], None]) -> None:
        """Run ``shut`` (close a storage client) when this member fences itself."""
        self._storage_fences.append(shut)

    def _append(self, event: NewEvent) -> None:
        try:
            (recorded,) = self.store.append(self.stream, self._version, [event])
        except ConcurrencyError:
            # Only a taker appends to our stream: it is fencing us.
            self.fence_self(f"member {self.member} is being fenced by another member")
            raise Fenced(f"member {self.member} is being fenced") from None
        self._version = recorded.version

    # -- the lease -----------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``Fenced`` once this member has fenced itself."""
        if self.fenced is not None:
            raise Fenced(self.fenced)

    def renew_now(self) -> bool | None:
        """Renew the lease once: True when renewed; False when it is gone (and this member has
        fenced itself); None when the ledger did not answer."""
        try:
            renewed = self.store.renew(self.stream)
        except DiskLedgerError as exc:
            log.warning("member %s: lease renewal failed: %s", self.member, exc)
            return None
        if not renewed:
            state = self._state()
            self.fence_self(f"member {self.member} lost its lease ({state})")
        return renewed

    def _beat(self) -> None:
        settings = self.settings
        while not self._stop.wait(settings.renew_every):
            sent = time.monotonic()
            renewed = self.renew_now()  # may block for as long as the database is unreachable
            if renewed:
                self._last_good = max(self._last_good, sent)
            elif renewed is False:
                return

    def _watch(self) -> None:
        """The deadline, kept apart from the renewals: a renewal stuck on a dead connection
        (a partition: nothing answers, not even a refusal) must not hold the self-fence up."""
        settings = self.settings
        while not self._stop.wait(min(settings.renew_every, settings.renew_deadline / 4)):
            if time.monotonic() - self._last_good > settings.renew_deadline:
                self.fence_self(
                    f"member {self.member} could not renew its lease for "
                    f"{settings.renew_deadline:g} s"
                )
                return

    def _state(self) -> str:
        try:
            record = self.store.member(self.stream)
        except DiskLedgerError:
            return "the ledger did not answer"
        if record is None:
            return "no such member"
        if record.view.state is not MemberState.LIVE:
            return f"another member is fencing it: {record.view.state}"
        return "it expired"

    def fence_self(self, reason: str) -> None:
        """Stop every effect: kill running tools, forbid new ones, shut storage clients, then
        ``on_fenced`` (which by default exits the process)."""
        # Not self._lock: that one is held across ledger appends, which hang in a partition,
        # and the self-fence must not wait for them.
        with self._fence_lock:
            if self.fenced is not None:
                return
            self.fenced = reason
        self._stop.set()
        log.critical("%s: fencing itself", reason)
        # The default reaction ends the process; an embedder's own may keep it running, so
        # only this member's tools are stopped.
        runner.forbid(reason, None if self._on_fenced is exit_now else self.member)
        for shut in self._storage_fences:
            try:
                shut()
            except Exception:
                log.exception("member %s: shutting a storage client failed", self.member)
        self._on_fenced(reason)
