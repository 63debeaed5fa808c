"""RBD clone: ``Engine.create`` from a cached template vs a bare librbd clone of the same snapshot.

Starts its own one-node Ceph cluster (``tests.support.ceph.CephCluster``: one mon, one memstore
OSD, cephx) and stops it at the end, also on error. The engine runs with the rbd backend as the
restricted client ``client.diskledger``, with an SQLite ledger in a temporary directory, and caches
one 64 MiB raw template (imported once, with its protected ``snap``). Then, in the same run,
interleaved in rounds of ``ROUND`` disks (the order of the sides flips every round):

- A: ``Engine.create(disk, template="base")``: the pre-intent probe (is the disk's name free?),
  intent, one clone under the disk's final name (``RbdBackend.clone_template``: no temporary
  name, no rename, the outcome from what librbd was asked), outcome;
- B: ``rbd.RBD().clone(...)`` of ``_base~base@snap`` to a new image, through the same librados
  connection as the engine's (the same client, the same handle), the pool opened once.

Each side makes ``DISKS`` disks; the totals are the sums of the per-disk times. A second, separate
pass over ``BREAKDOWN`` more disks times the parts of ``Engine.create`` (the ledger appends, the
pre-intent probe, each librbd step of the effect) to show where the engine's extra time goes; its
instrumentation is kept out of the measured rounds.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.timing import Report, Row

__all__ = ["BREAKDOWN", "DISKS", "ROUND", "run"]

DISKS = 100
ROUND = 10
BREAKDOWN = 30
TARGET_RATIO = 1.10
MiB = 1 << 20
TEMPLATE_SIZE = 64 * MiB


def run(disks: int = DISKS) -> Report:
    from tests.support.ceph import CephCluster

    cluster = CephCluster()
    try:
        started = time.perf_counter()
        cluster.start()
        up = time.perf_counter() - started
        with tempfile.TemporaryDirectory(prefix="diskledger-bench-rbd-") as tmp:
            result = _measure(cluster, Path(tmp), disks)
    finally:
        cluster.stop()
    return _report(result, disks, up)


@dataclass(slots=True)
class Result:
    engine: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    """Per disk of the breakdown pass: seconds in each part of ``Engine.create``."""
    breakdown_total: list[float] = field(default_factory=list)
    breakdown_bare: list[float] = field(default_factory=list)


def _measure(cluster: Any, tmp: Path, disks: int) -> Result:
    import rbd

    from diskledger.engine import Config, Engine

    source = tmp / "base.raw"
    with source.open("wb") as handle:
        handle.write(b"TEMPLATE".ljust(512, b"\0"))
        handle.truncate(TEMPLATE_SIZE)
    config = Config.load(root=tmp / "engine", environ=cluster.environ(), recover=False)
    result = Result()
    with Engine.open(config) as engine:
        engine.add_template("base", source, "raw")
        template = engine.template("base")
        assert template.location is not None
        pool, _, parent = template.location.partition("/")
        backend: Any = engine.backend
        with backend.cluster.ioctx(pool) as ioctx:
            counter = iter(range(10**9))

            def through_engine() -> float:
                disk = f"bench/e{next(counter)}"
                started = time.perf_counter()
                engine.create(disk, template="base")
                return time.perf_counter() - started

            def bare_clone() -> float:
                name = f"bench~b{next(counter)}"
                started = time.perf_counter()
                rbd.RBD().clone(ioctx, parent, "snap", ioctx, name)
                return time.perf_counter() - started

            for _ in range(3):  # warm up both paths: connection, caches, first SQLite pages
                through_engine()
                bare_clone()
            rounds = -(-disks // ROUND)
            for i in range(rounds):
                size = min(ROUND, disks - i * ROUND)
                sides = [(through_engine, result.engine), (bare_clone, result.bare)]
                for side, into in sides if i % 2 == 0 else reversed(sides):
                    into.extend(side() for _ in range(size))

            with _instrumented(engine, result.parts):
                for _ in range(BREAKDOWN):
                    result.breakdown_total.append(through_engine())
                    result.breakdown_bare.append(bare_clone())
    return result


@contextmanager
def _instrumented(engine: Any, parts: dict[str, list[float]]) -> Iterator[None]:
    """Time the parts of ``Engine.create``: the ledger appends, the pre-intent probe, and the
    outermost librbd steps of the backend's ``create`` (nested steps count in their caller)."""
    backend = engine.backend
    rbd = backend.rbd
    depth = [0]
    current: dict[str, float] = {}
    originals: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attribute: str, label: Callable[[int], str]) -> None:
        original = getattr(owner, attribute)
        calls = [0]

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth[0] += 1
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    key = label(calls[0])
                    calls[0] += 1
                    current[key] = current.get(key, 0.0) + time.perf_counter() - started

        originals.append((owner, attribute, original))
        setattr(owner, attribute, timed)

    wrap(engine.store, "append", lambda n: "ledger: append (intent, outcome)")
    wrap(backend, "probe", lambda n: "pre-intent probe: final name free?")
    # Outside the probe, these are the effect's own (a create that renames uses them all).
    wrap(rbd, "exists", lambda n: "effect: exists(final)?")
    wrap(rbd, "remove_image", lambda n: "effect: clear the temporary name")
    wrap(rbd, "clone", lambda n: "effect: the librbd clone")
    wrap(rbd, "rename", lambda n: "effect: rename to the final name")
    wrap(rbd, "observe", lambda n: "effect: observe the published image")

    original_create = engine.create

    def create(*args: Any, **kwargs: Any) -> Any:
        current.clear()
        started = time.perf_counter()
        try:
            return original_create(*args, **kwargs)
        finally:
            total = time.perf_counter() - started
            measured = sum(current.values())
            for key, seconds in current.items():
                parts.setdefault(key, []).append(seconds)
            parts.setdefault("engine: the rest (ledger reads, validation, events)", []).append(
                total - measured
            )

    engine.create = create
    try:
        yield
    finally:
        del engine.create
        for owner, attribute, original in reversed(originals):
            setattr(owner, attribute, original)


def _report(result: Result, disks: int, up: float) -> Report:
    median_a, median_b = statistics.median(result.engine), statistics.median(result.bare)
    total_a, total_b = sum(result.engine), sum(result.bare)
    ratio = median_a / median_b
    rows = [
        Row(
            "per disk (median)",
            f"{median_a * 1e3:.2f}",
            f"{median_b * 1e3:.2f}",
            f"{ratio:.3f} ({(median_a - median_b) * 1e3:+.2f} ms)",
        ),
        Row(
            "per disk (90th percentile)",
            f"{_quantile(result.engine, 0.9) * 1e3:.2f}",
            f"{_quantile(result.bare, 0.9) * 1e3:.2f}",
            f"{_quantile(result.engine, 0.9) / _quantile(result.bare, 0.9):.3f}",
        ),
        Row(
            f"total for {disks} disks",
            f"{total_a * 1e3:.0f}",
            f"{total_b * 1e3:.0f}",
            f"{total_a / total_b:.3f} ({(total_a - total_b):+.2f} s)",
        ),
    ]
    notes = [
        f"cluster started in {up:.1f} s (one mon, one memstore OSD, cephx); template 64 MiB raw",
    ]
    if result.parts:
        bare = statistics.median(result.breakdown_bare)
        total = statistics.median(result.breakdown_total)
        notes.append(
            f"breakdown of Engine.create, medians over {len(result.breakdown_total)} more disks "
            f"(instrumented, separate pass): total {total * 1e3:.2f} ms; a bare clone beside it "
            f"{bare * 1e3:.2f} ms"
        )
        for key, samples in sorted(result.parts.items(), key=lambda kv: -statistics.median(kv[1])):
            notes.append(f"  {key}: {statistics.median(samples) * 1e3:.2f} ms")
    return Report(
        title="RBD clone: Engine.create from a cached template vs a bare librbd clone",
        method=(
            f"{disks} disks per side, interleaved in rounds of {ROUND} (the order flips every "
            "round), after 3 warm-up disks each; times in ms. A: Engine.create(disk, "
            "template=...) (rbd backend, restricted client, SQLite ledger). B: "
            "rbd.RBD().clone() of the template's protected snapshot on the engine's own "
            "librados connection."
        ),
        columns=("Engine ms (A)", "librbd clone ms (B)", "ratio A/B (A - B)"),
        rows=rows,
        target=f"ratio of the per-disk medians <= {TARGET_RATIO:.2f} (measured {ratio:.3f})",
        met=ratio <= TARGET_RATIO,
        notes=tuple(notes),
    )


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
