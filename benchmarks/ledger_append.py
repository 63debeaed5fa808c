"""Ledger append: one durable event through the store vs one bare SQLite commit.

Side A appends one event with ``SqlEventStore.append`` to a SQLite ledger: after one untimed
create, ``disk.export.started`` and ``disk.export.completed`` alternate (a legal sequence, a fresh
operation id per pair). Side B is what any durable SQLite write costs at the least: stdlib
``sqlite3`` with the ledger's settings (WAL, ``synchronous=FULL``) running ``BEGIN IMMEDIATE``,
one ``INSERT`` of a row of the same size, ``COMMIT``. Both files are in one temporary directory.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sqlite3
import tempfile
import uuid
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from benchmarks.timing import Report, Row, interleave, stopwatch
from diskledger.events import Metadata, NewEvent
from diskledger.store import SqlEventStore, canonical_json, open_store

__all__ = ["DEFAULT_TRIALS", "profile", "run"]

DEFAULT_TRIALS = 2000
TARGET_MS = 0.3
STREAM = "disk:bench/append"
LOCATION = "/var/lib/diskledger/disks/bench/append"


def run(trials: int = DEFAULT_TRIALS) -> Report:
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-append-") as tmp:
        a, b = _measure(Path(tmp), trials)
    diff = a - b
    return Report(
        title="Ledger append: one durable event",
        method=(
            f"{trials} trials per side, interleaved (A and B alternate, order flipping every "
            "trial); medians in ms. A: SqlEventStore.append of one event to a SQLite ledger. "
            "B: stdlib sqlite3, WAL + synchronous=FULL, BEGIN IMMEDIATE; INSERT one row; COMMIT."
        ),
        columns=("store.append ms (A)", "bare commit ms (B)", "A - B ms"),
        rows=[Row("one event", f"{a * 1e3:.3f}", f"{b * 1e3:.3f}", f"{diff * 1e3:+.3f}")],
        target=f"A - B <= {TARGET_MS} ms (measured {diff * 1e3:+.3f} ms)",
        met=diff * 1e3 <= TARGET_MS,
        notes=("both on the same file system; both fsync the WAL on every commit",),
    )


def export_events(trial: int) -> tuple[NewEvent, NewEvent]:
    """The started/completed pair of one export, with its own operation id."""
    meta = Metadata(op_id=uuid.uuid4().hex)
    target = f"/srv/exports/{trial}.qcow2"
    params = {"target": target, "format": "qcow2", "location": LOCATION}
    return (
        NewEvent("disk.export.started", {"params": params, "artifacts": []}, meta),
        NewEvent(
            "disk.export.completed", {"target": target, "format": "qcow2", "size": 1 << 30}, meta
        ),
    )


def _ledger(tmp: Path) -> tuple[SqlEventStore, int]:
    """A SQLite ledger in ``tmp`` holding one created disk, and that disk's stream version."""
    store = open_store(f"sqlite:///{tmp / 'ledger.db'}")
    create = Metadata(op_id=uuid.uuid4().hex)
    params = {"disk": "bench/append", "size": 1 << 30, "location": LOCATION}
    observed = {"format": "qcow2", "size": 1 << 30, "location": LOCATION}
    store.append(
        STREAM, 0, [NewEvent("disk.create.started", {"params": params, "artifacts": []}, create)]
    )
    store.append(STREAM, 1, [NewEvent("disk.create.completed", observed, create)])
    return store, store.stream_version(STREAM)


def _measure(tmp: Path, trials: int) -> tuple[float, float]:
    store, version = _ledger(tmp)
    pending: list[NewEvent] = []

    bare = sqlite3.connect(tmp / "bare.db", isolation_level=None)
    bare.execute("PRAGMA journal_mode=WAL")
    bare.execute("PRAGMA synchronous=FULL")
    bare.execute(
        "CREATE TABLE rows (id INTEGER PRIMARY KEY, stream TEXT, version INTEGER, body TEXT)"
    )

    def append(trial: int) -> Mapping[str, float]:
        nonlocal version
        if not pending:
            pending.extend(export_events(trial))
        event = pending.pop(0)
        lap = stopwatch()
        store.append(STREAM, version, [event])
        seconds = lap()
        version += 1
        return {"append": seconds}

    def bare_commit(trial: int) -> Mapping[str, float]:
        body = canonical_json({"type": "disk.export.started", "data": {"params": {"i": trial}}})
        body = body.ljust(400)  # about the size of the data + metadata + hashes of one event
        lap = stopwatch()
        bare.execute("BEGIN IMMEDIATE")
        bare.execute(
            "INSERT INTO rows (stream, version, body) VALUES (?, ?, ?)", (STREAM, trial, body)
        )
        bare.execute("COMMIT")
        return {"append": lap()}

    try:
        samples = interleave(append, bare_commit, trials, warmup=50)
    finally:
        bare.close()
        store.close()
    return samples.median_a("append"), samples.median_b("append")


def profile(appends: int = 2000, top: int = 15) -> str:
    """Where ``store.append`` spends its time: cProfile's own time grouped by package, then the
    ``top`` functions. The profiler inflates many small Python calls; read the shares, not the µs.
    """
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-profile-") as tmp:
        store, version = _ledger(Path(tmp))
        warmup = 100  # the pool, SQLAlchemy's statement cache, the page cache
        pairs = (warmup + appends) // 2 + 1
        events = [event for i in range(pairs) for event in export_events(i)]
        for event in events[:warmup]:
            store.append(STREAM, version, [event])
            version += 1
        profiler = cProfile.Profile()
        profiler.enable()
        for event in events[warmup : warmup + appends]:
            store.append(STREAM, version, [event])
            version += 1
        profiler.disable()
        store.close()

    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    own: Counter[str] = Counter()
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        own[_package(filename, function)] += tottime
    total = sum(own.values())
    lines = [f"store.append under cProfile, {appends} appends: own time by package"]
    lines += [
        f"  {name:<34} {seconds / appends * 1e6:8.1f} µs/append  {seconds / total:4.0%}"
        for name, seconds in own.most_common()
    ]
    stats.sort_stats("tottime").print_stats(top)
    return "\n".join(lines) + "\n" + out.getvalue()


def _package(filename: str, function: str) -> str:
    if "/sqlalchemy/" in filename:
        return "sqlalchemy"
    if "sqlite3.Connection" in function or "sqlite3.Cursor" in function:
        return "sqlite3 (C: SQL, commit = fsync)"
    if "/diskledger/" in filename:
        module = filename.rsplit("/diskledger/", 1)[1].partition("/")[0]
        return "diskledger." + module.removesuffix(".py")
    if "/json/" in filename or "json" in function:
        return "json"
    return "other (builtins, stdlib)"
