"""What the harness shakes (``Harness``: a backend, its settings, its storage, a domain) and
for how long (``budget``: Hypothesis settings from the environment)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from diskledger.backends import Backend
from diskledger.engine import Config, Engine, build
from diskledger.store import EventStore
from diskledger.testing.draws import MiB
from diskledger.testing.model import SECTOR
from diskledger.testing.storage import StorageAccess

__all__ = ["Harness", "budget"]


@dataclass(frozen=True)
class Harness:
    """What to shake.

    ``backend`` is a name the CLI knows (``raw``, ``qcow2``, ``rbd``; with ``environ`` for its
    settings) or a factory ``root -> Backend`` for a backend of your own. Crashes by SIGKILL of a
    real CLI process need a named backend; a factory gets in-process crashes only.
    ``store`` may wrap the event store (to test the harness itself); ``reset`` runs before and
    after every example (for shared storage: empty the pool).

    ``storage`` makes the ``StorageAccess`` guest bytes are written and read through, given the
    example's root; by default ``FileStorage(root)``, which serves backends whose disks are
    files. A backend whose disks are not files (RBD) must be given one; it is closed after each
    example when it has a ``close()``.

    ``domain`` names a running libvirt domain with a SCSI controller (virtio-scsi) that disks
    are attached to (at ``sda``..``sdf``) and detached from, and resized in while attached;
    without one, attach and detach are never drawn. Every disk is detached again after each
    example. qemu must reach the disks: give a ``workdir`` it can traverse (the examples'
    directories are made there, mode 0711).
    """

    name: str
    backend: str | Callable[[str], Backend]
    environ: Mapping[str, str] = field(default_factory=dict)
    ledger: Callable[[Path], str] | None = None
    store: Callable[[EventStore], EventStore] | None = None
    reset: Callable[[], None] | None = None
    template_size: int = 3 * MiB + 5 * SECTOR
    storage: Callable[[Path], StorageAccess] | None = None
    domain: str | None = None
    workdir: Path | None = None

    @property
    def kills_processes(self) -> bool:
        return isinstance(self.backend, str)

    def open(self, root: Path, ledger: str) -> Engine:
        environ = {**os.environ, **self.environ}
        name = self.backend if isinstance(self.backend, str) else "raw"
        config = Config.load(root=root, ledger=ledger, backend=name, environ=environ)
        own = None if isinstance(self.backend, str) else self.backend(str(root))
        return Engine(build(config, backend=own, store=self.store))

    def cli_environ(self, root: Path, ledger: str) -> dict[str, str]:
        assert isinstance(self.backend, str)
        return {
            **os.environ,
            **self.environ,
            "DISKLEDGER_ROOT": str(root),
            "DISKLEDGER_LEDGER": ledger,
            "DISKLEDGER_BACKEND": self.backend,
            "DISKLEDGER_RECOVER": "0",  # the harness decides when recovery runs
        }

    @property
    def snapshot_pool(self) -> str | None:
        """The pool direct snapshots go to, when the settings name one."""
        key = "DISKLEDGER_RBD_SNAPSHOT_POOL"
        return self.environ.get(key) or os.environ.get(key) or None


def budget(**overrides: Any) -> settings:
    """Hypothesis settings from ``DISKLEDGER_HARNESS_EXAMPLES`` and ``DISKLEDGER_HARNESS_STEPS``."""
    values: dict[str, Any] = {
        "max_examples": int(os.environ.get("DISKLEDGER_HARNESS_EXAMPLES", "5")),
        "stateful_step_count": int(os.environ.get("DISKLEDGER_HARNESS_STEPS", "30")),
        "deadline": None,
        "database": None,
        "suppress_health_check": list(HealthCheck),
    }
    values.update(overrides)
    return settings(**values)
