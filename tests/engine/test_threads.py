"""One ``Engine`` shared by many threads (a boot storm in an orchestrator's process): every call
runs in its own transactions, writers queue, and two operations on one disk never interleave."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from diskledger.engine import Engine
from diskledger.errors import ConcurrencyError, OperationPending

THREADS = 8


def test_threads_sharing_an_engine_create_every_disk_once(engine: Engine, base: str) -> None:
    disks = [f"vm-{n}/root" for n in range(40)]
    with ThreadPoolExecutor(THREADS) as pool:
        made = list(pool.map(lambda disk: engine.create(disk, template=base), disks))
    assert sorted(view.disk for view in made) == sorted(disks)
    assert sorted(view.disk for view in engine.list()) == sorted(disks)
    assert engine.verify().ok
    assert engine.recover(dry_run=True).pending == []


def test_threads_racing_on_one_disk_never_interleave(engine: Engine, base: str) -> None:
    """Eight threads resize one disk to eight sizes at once: each either completes or is refused
    (another operation holds the disk); the disk ends at a size one of them completed with."""
    engine.create("vm-1/root", template=base)
    start = threading.Barrier(THREADS)
    completed: list[int] = []
    refused: list[Exception] = []

    def grow(n: int) -> None:
        size = (128 + n) << 20
        start.wait()
        try:
            engine.resize("vm-1/root", size)
            completed.append(size)
        except (OperationPending, ConcurrencyError) as exc:
            refused.append(exc)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(grow, range(THREADS)))
    assert completed and len(completed) + len(refused) == THREADS
    history = engine.history("vm-1/root")
    resized = [e for e in history if e.type == "disk.resize.completed"]
    assert len(resized) == len(completed)
    started = [e.metadata.op_id for e in history if e.type == "disk.resize.started"]
    assert started == [e.metadata.op_id for e in resized]  # each intent followed by its outcome
    assert engine.show("vm-1/root").size == resized[-1].data["size"]
    assert engine.verify().ok
