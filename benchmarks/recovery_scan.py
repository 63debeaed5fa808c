"""Recovery scan: finding and deciding what a crash left pending, in a big ledger.

A ledger of 100,000 created disks, 100 of them with a resize intent whose writer is dead, is
written straight into the tables (events, the disks read model, the pending index), as
``store.append`` would have left them. Side A is ``Engine.recover(dry_run=True)``: the pending
index, then per pending operation its intent, its view and a probe. The time spent inside the
backend's probe is measured separately and subtracted, as the target excludes it. Side B finds
the same pending operations the way a ledger without the index would: folding every event.
"""

from __future__ import annotations

import socket
import sqlite3
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.timing import Report, Row, interleave
from diskledger.backends import Artifact, Observation
from diskledger.engine import Config, Engine
from diskledger.states import DiskState, DiskView, PendingOperation, evolve
from diskledger.states.streams import empty_view
from diskledger.store import canonical_json, open_store

DEFAULT_DISKS = 100_000
PENDING = 100
DEFAULT_TRIALS = 10
TARGET_MS = 100.0
DEAD = "no-such-boot:999999:1"
HOST = socket.gethostname()  # the engine judges only its own host's writers
MiB = 1 << 20


def run(disks: int = DEFAULT_DISKS, trials: int = DEFAULT_TRIALS) -> Report:
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-recovery-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        _build(root, disks)
        built = time.perf_counter() - started
        a, b, probe = _measure(root, trials)
    return Report(
        title="Recovery scan: 100 pending operations among many disks",
        method=(
            f"{disks:,} disks, {PENDING} with a resize intent whose writer is dead; "
            f"{trials} trials per side, interleaved; medians in ms. "
            "A: Engine.recover(dry_run=True) through the pending index, probe time subtracted. "
            "B: finding the same pending operations by folding every event (no index)."
        ),
        columns=("recover ms (A)", "fold the log ms (B)", "B / A"),
        rows=[Row("scan", f"{a * 1e3:.1f}", f"{b * 1e3:.1f}", f"{b / a:.0f}x")],
        target=f"A <= {TARGET_MS:.0f} ms (measured {a * 1e3:.1f} ms)",
        met=a * 1e3 <= TARGET_MS,
        notes=(
            f"ledger built in {built:.1f} s straight into the tables; probe time excluded from A: "
            f"median {probe * 1e3:.2f} ms",
        ),
    )


def _build(root: Path, disks: int) -> None:
    open_store(f"sqlite:///{root}/ledger.db").close()
    db = sqlite3.connect(root / "ledger.db")
    db.execute("PRAGMA synchronous=OFF")
    events: list[tuple[Any, ...]] = []
    views: list[tuple[Any, ...]] = []
    pending: list[tuple[Any, ...]] = []
    position = 0
    now = "2026-01-01T00:00:00.000000+00:00"
    for n in range(disks):
        disk = f"vm-{n}/root"
        stream = f"disk:{disk}"
        location = str(root / "disks" / f"vm-{n}" / "root")
        meta = canonical_json({"op_id": f"c{n}", "host": HOST, "pid": 1, "process": DEAD})
        create = {
            "params": {"size": 64 * MiB, "format": "raw", "location": location},
            "artifacts": [],
        }
        done = {"format": "raw", "size": 64 * MiB, "location": location}
        rows: list[tuple[str, dict[str, Any], str]] = [
            ("disk.create.started", create, f"c{n}"),
            ("disk.create.completed", done, f"c{n}"),
        ]
        view = DiskView(disk, DiskState.CREATED, 2, "raw", 64 * MiB, None, None, location)
        if n % (disks // PENDING) == 0:
            params = {
                "size": 128 * MiB,
                "previous_size": 64 * MiB,
                "location": location,
                "format": "raw",
            }
            rows.append(("disk.resize.started", {"params": params, "artifacts": []}, f"r{n}"))
            op = PendingOperation("resize", f"r{n}", params, (), 3)
            Path(location).parent.mkdir(parents=True)
            with open(location, "wb") as disk_file:  # probed: a raw disk at its old size
                disk_file.truncate(64 * MiB)
            view = DiskView(
                disk, DiskState.CREATED, 3, "raw", 64 * MiB, None, None, location, pending=op
            )
            pending.append(
                (f"r{n}", stream, "resize", position + 3, now, canonical_json(op.to_json()))
            )
        for version, (event_type, data, op_id) in enumerate(rows, start=1):
            position += 1
            op_meta = meta.replace(f'"c{n}"', f'"{op_id}"')
            events.append(
                (
                    position,
                    stream,
                    version,
                    event_type,
                    1,
                    canonical_json(data),
                    op_meta,
                    op_id,
                    now,
                    "0" * 64,
                    "0" * 64,
                )
            )
        views.append(
            (stream, disk, view.state.value, view.version, None, canonical_json(view.to_json()))
        )
    db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?)", events)
    db.executemany("INSERT INTO disks VALUES (?,?,?,?,?,?)", views)
    # Columns named: the index grows columns (owner, since members) that a bare VALUES would miss.
    db.executemany(
        "INSERT INTO pending_operations"
        " (op_id, stream_id, op, started_position, started_at, operation) VALUES (?,?,?,?,?,?)",
        pending,
    )
    db.execute("UPDATE ledger_head SET position = ?", (position,))
    db.commit()
    db.close()


def _measure(root: Path, trials: int) -> tuple[float, float, float]:
    config = Config.load(root=root, backend="raw", environ={}, recover=False)
    engine = Engine.open(config)
    probing = [0.0]
    original = engine.backend.probe

    def timed_probe(artifacts: Sequence[Artifact]) -> tuple[Observation, ...]:
        start = time.perf_counter()
        try:
            return original(artifacts)
        finally:
            probing[0] += time.perf_counter() - start

    engine.backend.probe = timed_probe  # type: ignore[method-assign]
    probes: list[float] = []

    def recover(trial: int) -> Mapping[str, float]:
        probing[0] = 0.0
        start = time.perf_counter()
        report = engine.recover(dry_run=True)
        total = time.perf_counter() - start
        if len(report.rolled_back) != PENDING:
            raise AssertionError(f"expected {PENDING} roll-backs, got {len(report.rolled_back)}")
        probes.append(probing[0])
        return {"scan": total - probing[0]}

    def fold_everything(trial: int) -> Mapping[str, float]:
        start = time.perf_counter()
        views: dict[str, Any] = {}
        for event in engine.store.read_all(batch=10_000):
            views[event.stream] = evolve(views.get(event.stream) or empty_view(event.stream), event)
        found = sum(1 for v in views.values() if v.pending is not None)
        if found != PENDING:
            raise AssertionError(f"folding found {found} pending operations")
        return {"scan": time.perf_counter() - start}

    try:
        samples = interleave(recover, fold_everything, trials, warmup=1)
    finally:
        engine.close()
    probes.sort()
    return samples.median_a("scan"), samples.median_b("scan"), probes[len(probes) // 2]
