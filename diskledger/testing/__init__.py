"""Tools for test authors: a property-based harness that shakes a disk backend with random
operations and crashes (``harness``), and the backend contract as a conformance suite any backend
can run (``contract``).
"""

from diskledger.testing.harness import (
    INVARIANTS,
    STATS,
    DiskLifecycle,
    Harness,
    HarnessStats,
    InvariantViolation,
    budget,
    lifecycle_machine,
    lifecycle_test_case,
    run_lifecycle,
)

__all__ = [
    "INVARIANTS",
    "STATS",
    "DiskLifecycle",
    "Harness",
    "HarnessStats",
    "InvariantViolation",
    "budget",
    "lifecycle_machine",
    "lifecycle_test_case",
    "run_lifecycle",
]
