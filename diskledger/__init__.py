"""diskledger: virtual-machine disks whose every lifecycle transition is recorded in a ledger.

The embedding API is ``Engine``; everything a caller may catch is in ``diskledger.errors``.
"""

from typing import TYPE_CHECKING

from diskledger import lazy
from diskledger.errors import (
    BackendError,
    CephError,
    CephUnavailable,
    ConcurrencyError,
    Conflict,
    DiskAttached,
    DiskLedgerError,
    DiskNotFound,
    DomainNotFound,
    FeedGap,
    Fenced,
    HypervisorError,
    HypervisorUnavailable,
    IllegalTransition,
    ImageBusy,
    InvalidInput,
    InvalidName,
    InvalidSize,
    InvalidSource,
    KeyNotFound,
    NotFound,
    OperationPending,
    OwnershipLost,
    SnapshotNotFound,
    StoreError,
    TemplateNotFound,
    UnknownBackend,
    UnsafeImage,
    UnsafeKeyStore,
)

if TYPE_CHECKING:
    from diskledger.backends import Artifact, Backend, DiskSource, Observation
    from diskledger.engine import Config, DirectSnapshot, Engine, Export, parse_size
    from diskledger.engine.members import LeaseSettings
    from diskledger.engine.takeover import TakeoverReport
    from diskledger.events import Metadata, NewEvent, RecordedEvent
    from diskledger.keys import KeyProvider, LocalKeyDirectory
    from diskledger.progress import Progress, ProgressEvent
    from diskledger.states import (
        Attachment,
        DiskState,
        DiskView,
        Encryption,
        MemberState,
        MemberView,
        TemplateState,
        TemplateView,
    )
    from diskledger.store import EventStore, MemberRecord, open_store

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "Attachment",
    "Backend",
    "BackendError",
    "CephError",
    "CephUnavailable",
    "ConcurrencyError",
    "Config",
    "Conflict",
    "DirectSnapshot",
    "DiskAttached",
    "DiskLedgerError",
    "DiskNotFound",
    "DiskSource",
    "DiskState",
    "DiskView",
    "DomainNotFound",
    "Encryption",
    "Engine",
    "EventStore",
    "Export",
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
    "KeyProvider",
    "LeaseSettings",
    "LocalKeyDirectory",
    "MemberRecord",
    "MemberState",
    "MemberView",
    "Metadata",
    "NewEvent",
    "NotFound",
    "Observation",
    "OperationPending",
    "OwnershipLost",
    "Progress",
    "ProgressEvent",
    "RecordedEvent",
    "SnapshotNotFound",
    "StoreError",
    "TakeoverReport",
    "TemplateNotFound",
    "TemplateState",
    "TemplateView",
    "UnknownBackend",
    "UnsafeImage",
    "UnsafeKeyStore",
    "open_store",
    "parse_size",
]

_LAZY: dict[str, str] = {
    "Artifact": "diskledger.backends",
    "Attachment": "diskledger.states",
    "Backend": "diskledger.backends",
    "Config": "diskledger.engine",
    "DirectSnapshot": "diskledger.engine",
    "DiskSource": "diskledger.backends",
    "DiskState": "diskledger.states",
    "DiskView": "diskledger.states",
    "Encryption": "diskledger.states",
    "Engine": "diskledger.engine",
    "EventStore": "diskledger.store",
    "Export": "diskledger.engine",
    "KeyProvider": "diskledger.keys",
    "LeaseSettings": "diskledger.engine.members",
    "LocalKeyDirectory": "diskledger.keys",
    "MemberRecord": "diskledger.store",
    "MemberState": "diskledger.states",
    "MemberView": "diskledger.states",
    "Metadata": "diskledger.events",
    "NewEvent": "diskledger.events",
    "Observation": "diskledger.backends",
    "Progress": "diskledger.progress",
    "ProgressEvent": "diskledger.progress",
    "RecordedEvent": "diskledger.events",
    "TakeoverReport": "diskledger.engine.takeover",
    "TemplateState": "diskledger.states",
    "TemplateView": "diskledger.states",
    "open_store": "diskledger.store",
    "parse_size": "diskledger.engine",
}
"""Where each exported name lives. Its module is imported when the name is first asked for, not
when ``diskledger`` is: every ``diskledger.*`` import (the command line's too) imports this package
first, and a command should pay only for what it uses."""

if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy.exports(globals(), _LAZY)
