"""Every error diskledger raises, in one tree.

Callers catch the branch they can act on; the CLI maps every ``DiskLedgerError`` to one line on
stderr and exit status 1. Foreign exceptions (SQLAlchemy, ``OSError``, ``subprocess``) are
translated where they cross into diskledger, with ``raise ... from`` so the cause stays attached::

    DiskLedgerError
    ├── InvalidInput            bad input refused before anything is touched
    │   ├── InvalidName         an instance, disk, template or snapshot name that is not allowed
    │   ├── InvalidSize         a size that is unparsable, negative, zero, too small or a shrink
    │   ├── InvalidSource       a template source that is missing, unreadable or not a file
    │   ├── UnsafeImage         an image the safety inspection refuses
    │   ├── UnknownBackend      no backend of that name (built in, registered, or an entry point)
    │   ├── UnsafeKeyStore      keys could not be kept safely (a key directory others may read)
    │   └── Unsupported         the disk's backend cannot do that at all (resize a parallels disk)
    ├── NotFound
    │   ├── DiskNotFound
    │   ├── TemplateNotFound
    │   ├── SnapshotNotFound
    │   ├── DomainNotFound      libvirt has no such domain
    │   └── KeyNotFound         an encrypted disk's key is not with its key provider
    ├── IllegalTransition       the lifecycle table has no such transition from the current state
    ├── Conflict
    │   ├── ConcurrencyError    the stream moved since it was read (UNIQUE(stream_id, version))
    │   ├── OperationPending    the disk or template has an operation in flight
    │   ├── OwnershipLost       another member took over this process's operation (or is taking
    │   │                       over this member): it must record and remove nothing more
    │   └── DiskAttached        a domain uses the disk, and the operation would change it under
    │                           the guest (or the disk is attached elsewhere already)
    ├── StoreError              the ledger database failed or refused (e.g. append-only triggers)
    │   └── FeedGap             the change feed saw a position gap or a broken hash chain
    ├── Fenced                  this member lost its lease or was fenced: it stops all effects
    ├── HypervisorError         libvirt refused or failed (carries libvirt's error code)
    │   └── HypervisorUnavailable  libvirtd cannot be reached (or python3-libvirt is missing)
    └── BackendError            storage failed; carries the command and its stderr
        ├── CommandNotFound     a required tool (``qemu-img``) is not installed
        ├── CommandFailed       a tool exited non-zero
        ├── CommandTimedOut     a tool ran past its deadline
        ├── StorageIOError      the file system or the cluster refused (ENOSPC, EIO, EACCES...)
        └── CephError           the Ceph cluster refused an RBD request (carries the errno)
            ├── CephUnavailable no answer within the retry budget (timeouts, lost connection)
            └── ImageBusy       an image stayed in use (a client watches it) past the retry budget
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BackendError",
    "CephError",
    "CephUnavailable",
    "CommandFailed",
    "CommandNotFound",
    "CommandTimedOut",
    "ConcurrencyError",
    "Conflict",
    "DiskAttached",
    "DiskLedgerError",
    "DiskNotFound",
    "DomainNotFound",
    "FeedGap",
    "Fenced",
    "HypervisorError",
    "HypervisorUnavailable",
    "IllegalTransition",
    "ImageBusy",
    "InvalidInput",
    "InvalidName",
    "InvalidSize",
    "InvalidSource",
    "KeyNotFound",
    "NotFound",
    "OperationPending",
    "OwnershipLost",
    "SnapshotNotFound",
    "StorageIOError",
    "StoreError",
    "TemplateNotFound",
    "UnknownBackend",
    "UnsafeImage",
    "UnsafeKeyStore",
    "Unsupported",
]


class DiskLedgerError(Exception):
    """Base of every error diskledger raises on purpose."""


class InvalidInput(DiskLedgerError, ValueError):
    """Input refused before the ledger or storage was touched."""


class InvalidName(InvalidInput):
    """A name (instance, disk, template, snapshot) outside the allowed alphabet or length."""


class InvalidSize(InvalidInput):
    """A size that cannot be parsed, is out of range, or would shrink a disk."""


class InvalidSource(InvalidInput):
    """A template source file that is missing, unreadable or not a regular file."""


class UnsafeImage(InvalidInput):
    """An image refused by the safety inspection: a format other than the one declared, a
    reference to another file (backing file, data file, VMDK extent), truncated, empty, or a
    virtual size above the ceiling."""


class UnknownBackend(InvalidInput):
    """No backend has that name: not built in, not registered, and no installed distribution
    declares it in the ``diskledger.backends`` entry-point group. ``known`` lists those that
    are."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        super().__init__(f"unknown backend {name!r}; choose one of: {', '.join(known)}")
        self.name = name
        self.known = tuple(known)


class Unsupported(InvalidInput):
    """The disk's backend cannot do what was asked, whatever the input: its storage has no such
    operation (a ``parallels`` disk cannot be resized: qemu's parallels driver does not
    implement resize, see ``Capability.FIXED_SIZE``). Refused before anything is recorded or
    touched; ``disk``, ``backend`` and ``operation`` say what was refused, ``reason`` why."""

    def __init__(self, disk: str, backend: str, operation: str, reason: str) -> None:
        super().__init__(f"the {backend} backend cannot {operation} disk {disk}: {reason}")
        self.disk = disk
        self.backend = backend
        self.operation = operation
        self.reason = reason


class NotFound(DiskLedgerError, LookupError):
    """The ledger has no such object."""


class DiskNotFound(NotFound):
    """No disk of that name in the ledger (or it was deleted); ``disk`` names it."""

    def __init__(self, disk: str) -> None:
        super().__init__(f"no such disk: {disk}")
        self.disk = disk


class TemplateNotFound(NotFound):
    """No cached template of that name; ``template`` names it."""

    def __init__(self, template: str) -> None:
        super().__init__(f"no such template: {template}")
        self.template = template


class SnapshotNotFound(NotFound):
    """The disk has no snapshot of that name; ``disk`` and ``snapshot`` name them."""

    def __init__(self, disk: str, snapshot: str) -> None:
        super().__init__(f"disk {disk} has no snapshot {snapshot!r}")
        self.disk = disk
        self.snapshot = snapshot


class DomainNotFound(NotFound):
    """libvirt has no domain of that name; ``domain`` names it."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"no such domain: {domain}")
        self.domain = domain


class IllegalTransition(DiskLedgerError):
    """The lifecycle table allows no such event from the stream's current state."""

    def __init__(self, stream: str, state: str, event_type: str, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"{stream}: {event_type} is not allowed in state '{state}'{detail}")
        self.stream = stream
        self.state = state
        self.event_type = event_type


class Conflict(DiskLedgerError):
    """Another writer got there first."""


class ConcurrencyError(Conflict):
    """An append's expected version did not match the stream (the uniqueness gate fired)."""

    def __init__(self, stream: str, expected: int, actual: int | None = None) -> None:
        seen = "" if actual is None else f", found {actual}"
        super().__init__(f"{stream}: expected version {expected}{seen}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class OperationPending(Conflict):
    """The stream has an operation with an intent and no outcome; run ``diskledger recover``."""

    def __init__(self, stream: str, op: str, op_id: str) -> None:
        super().__init__(f"{stream}: operation {op} ({op_id}) is still in flight")
        self.stream = stream
        self.op = op
        self.op_id = op_id


class DiskAttached(Conflict):
    """A domain uses the disk: the operation would change it under the running guest (or attach
    it a second time). ``domain`` and ``target_dev`` say where it is attached."""

    def __init__(self, disk: str, domain: str, target_dev: str, refused: str) -> None:
        super().__init__(f"disk {disk} is attached to domain {domain} as {target_dev}: {refused}")
        self.disk = disk
        self.domain = domain
        self.target_dev = target_dev


class OwnershipLost(Conflict):
    """Another member claimed this operation (``<op>.taken-over``), or is fencing this member:
    the process that started it must not record or remove anything for it any more."""

    def __init__(self, stream: str, op_id: str, detail: str = "") -> None:
        extra = f": {detail}" if detail else ""
        super().__init__(f"{stream}: operation {op_id} is no longer ours{extra}")
        self.stream = stream
        self.op_id = op_id


class StoreError(DiskLedgerError):
    """The ledger database failed or refused a write."""


class FeedGap(StoreError):
    """A change-feed consumer saw a position out of sequence or an event whose ``prev_hash`` is
    not the hash of the event before it: the ledger is not what it was, so the feed stops."""

    def __init__(self, position: int, expected: int, reason: str) -> None:
        super().__init__(
            f"change feed broken at position {position} (expected {expected}): {reason}"
        )
        self.position = position
        self.expected = expected


class Fenced(DiskLedgerError):
    """This member's lease ran out or another member is fencing it: every effect stops, and it
    never reconnects to shared storage without a new membership."""


class HypervisorError(DiskLedgerError):
    """libvirt refused or failed. ``code`` is libvirt's error number (``virErrorNumber``)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class HypervisorUnavailable(HypervisorError):
    """libvirtd did not answer at the configured URI, or the libvirt binding is not installed."""


class BackendError(DiskLedgerError):
    """Storage failed. ``command`` and ``stderr`` are set when an external tool was involved."""

    def __init__(
        self,
        message: str,
        *,
        command: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.command = tuple(command)
        self.returncode = returncode
        self.stderr = stderr


class CommandNotFound(BackendError):
    """The tool is not installed (``qemu-img`` comes from Debian's ``qemu-utils``)."""


class CommandFailed(BackendError):
    """The tool exited with a non-zero status."""


class CommandTimedOut(BackendError):
    """The tool ran past its deadline and was killed."""


class StorageIOError(BackendError):
    """The file system refused: no space, I/O error, permission denied."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class CephError(BackendError):
    """The Ceph cluster refused an RBD or RADOS request. ``errno`` is librados' error number."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class CephUnavailable(CephError):
    """The cluster did not answer within the retry budget (timeouts, a lost connection)."""


class ImageBusy(CephError):
    """The image stayed in use past the retry budget: a client (a running VM) still watches it.
    Clones that depend on a snapshot are a permanent refusal instead (``CephError``, EBUSY)."""


class UnsafeKeyStore(InvalidInput):
    """The key provider cannot keep keys safely (a key directory others may read or that this
    process cannot write, a key file with loose permissions): refused before anything is
    recorded or touched."""


class KeyNotFound(NotFound):
    """The key an encrypted disk's stream names is not with its provider (destroyed, or lost)."""

    def __init__(self, ref: str, provider: str) -> None:
        super().__init__(f"key {ref} is not with the {provider} key provider")
        self.ref = ref
        self.provider = provider
