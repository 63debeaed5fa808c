"""diskledger: virtual-machine disks whose every lifecycle transition is recorded in a ledger.

The embedding API is ``Engine``; everything a caller may catch is in ``diskledger.errors``.
"""

from diskledger.backends import Artifact, Backend, DiskSource, Observation
from diskledger.engine import Config, DirectSnapshot, Engine, Export, parse_size
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
    HypervisorError,
    HypervisorUnavailable,
    IllegalTransition,
    ImageBusy,
    InvalidInput,
    InvalidName,
    InvalidSize,
    InvalidSource,
    NotFound,
    OperationPending,
    SnapshotNotFound,
    StoreError,
    TemplateNotFound,
    UnknownBackend,
    UnsafeImage,
)
from diskledger.events import Metadata, NewEvent, RecordedEvent
from diskledger.states import Attachment, DiskState, DiskView, TemplateState, TemplateView
from diskledger.store import EventStore, open_store

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
    "Engine",
    "EventStore",
    "Export",
    "HypervisorError",
    "HypervisorUnavailable",
    "IllegalTransition",
    "ImageBusy",
    "InvalidInput",
    "InvalidName",
    "InvalidSize",
    "InvalidSource",
    "Metadata",
    "NewEvent",
    "NotFound",
    "Observation",
    "OperationPending",
    "RecordedEvent",
    "SnapshotNotFound",
    "StoreError",
    "TemplateNotFound",
    "TemplateState",
    "TemplateView",
    "UnknownBackend",
    "UnsafeImage",
    "open_store",
    "parse_size",
]
