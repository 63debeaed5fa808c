"""Tools for test authors: a property-based harness that shakes a disk backend with random
operations and crashes (``harness``, the state machine; what it shakes and for how long in
``config``, what it draws in ``draws``, what a rule may act on in ``preconditions``, its
``model`` of the bytes, its ``invariants`` and their ``checks``, and the ``stats`` it counts,
planted bugs caught apart from unexpected violations; guest bytes through ``storage``), and the
backend contract as a conformance suite any backend can run (``contract``; the sample disks and
images it shares with a backend's own tests in ``samples``).
"""

from diskledger.testing.contract import BackendContract
from diskledger.testing.harness import (
    DiskLifecycle,
    Harness,
    budget,
    lifecycle_machine,
    lifecycle_test_case,
    run_lifecycle,
)
from diskledger.testing.invariants import INVARIANTS, InvariantViolation
from diskledger.testing.stats import STATS, HarnessStats, planted_bug
from diskledger.testing.storage import (
    FileStorage,
    ImageFacts,
    InspectingFileStorage,
    RbdStorage,
    StorageAccess,
    StorageInspection,
)

__all__ = [
    "INVARIANTS",
    "STATS",
    "BackendContract",
    "DiskLifecycle",
    "FileStorage",
    "Harness",
    "HarnessStats",
    "ImageFacts",
    "InspectingFileStorage",
    "InvariantViolation",
    "RbdStorage",
    "StorageAccess",
    "StorageInspection",
    "budget",
    "lifecycle_machine",
    "lifecycle_test_case",
    "planted_bug",
    "run_lifecycle",
]
