"""Memory: the resident set of an engine as it creates ``DISKS`` disks, and whether it grows.

One worker process (``python -m benchmarks.memory --worker``) opens an ``Engine`` (SQLite ledger,
the ``BACKEND`` backend, in a temporary directory) and creates blank 1 MiB disks one after
another, ``vm<n>/root``, reading its own ``VmRSS`` from ``/proc/self/status`` after the engine is
open and after every ``STEP`` disks. Side B is the same interpreter with the same imports and the
engine open, before any disk: the floor an embedder pays for diskledger at all.

The question is growth per operation: a long-lived engine (an agent, an orchestrator's embedded
engine) must not keep anything per disk or per operation. The figure is the slope of a
least-squares line through the samples after the first ``WARM`` disks (the SQLite page cache,
the allocator's arenas and the interpreter's caches fill up first), in bytes per disk.
**Target: ≤ 100 bytes per disk** (no growth: 10,000 disks would add under 1 MiB).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.timing import Report, Row

__all__ = ["BACKEND", "DISKS", "STEP", "TARGET", "WARM", "run"]

DISKS = 10_000
STEP = 500
WARM = 2_000
BACKEND = "raw"
TARGET = 100.0
"""Bytes of resident memory per disk created, at most, once warm."""
ROOT = Path(__file__).resolve().parent.parent
KiB, MiB = 1 << 10, 1 << 20


def run(disks: int = DISKS) -> Report:
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-memory-") as tmp:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", "--worker", tmp, str(disks)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        elapsed = time.perf_counter() - started
    samples: list[tuple[int, int]] = [tuple(pair) for pair in json.loads(done.stdout)]  # type: ignore[misc]
    opened = samples[0][1]
    last_disks, last = samples[-1]
    warm = [(n, rss) for n, rss in samples if n >= min(WARM, last_disks // 2)]
    slope = _slope(warm)
    peak = max(rss for _, rss in samples)
    rows = [
        Row("engine open, no disk", _mib(opened), _mib(opened), "+0.0"),
        Row(f"after {last_disks:,} disks", _mib(last), _mib(opened), f"+{_mib(last - opened)}"),
        Row("peak", _mib(peak), _mib(opened), f"+{_mib(peak - opened)}"),
        Row(
            f"growth per disk after {warm[0][0]:,} (least squares)",
            f"{slope:.1f} B",
            "-",
            "-",
        ),
    ]
    return Report(
        title=f"Memory: an engine's resident set over {last_disks:,} creates",
        method=(
            f"One process, {BACKEND} backend, SQLite ledger; blank 1 MiB disks created one after "
            f"another; VmRSS read every {STEP} disks. A: the process at that point; B: the same "
            f"process with the engine open before any disk. MiB unless stated."
        ),
        columns=("RSS (A)", "engine open (B)", "A - B"),
        rows=rows,
        target=f"growth <= {TARGET:.0f} bytes per disk once warm (measured {slope:.1f})",
        met=slope <= TARGET,
        notes=(
            f"{last_disks:,} creates in {elapsed:.0f} s; samples (disks: MiB): "
            + ", ".join(f"{n}: {_mib(rss)}" for n, rss in samples[:: max(1, len(samples) // 8)]),
        ),
    )


def _slope(points: list[tuple[int, int]]) -> float:
    xs = [float(x) for x, _ in points]
    ys = [float(y) for _, y in points]
    if len(points) < 2:
        return 0.0
    return statistics.linear_regression(xs, ys).slope


def _mib(size: int) -> str:
    return f"{size / MiB:.1f}"


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    raise RuntimeError("no VmRSS in /proc/self/status")


def _worker(tmp: str, disks: int) -> None:
    from diskledger.engine import Config, Engine

    config = Config.load(root=Path(tmp) / "engine", backend=BACKEND, environ={}, recover=False)
    samples = []
    with Engine.open(config) as engine:
        samples.append((0, _rss()))
        for n in range(1, disks + 1):
            engine.create(f"vm{n}/root", size=MiB)
            if n % STEP == 0:
                samples.append((n, _rss()))
    print(json.dumps(samples))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--worker", nargs=2, metavar=("DIR", "DISKS"), required=True)
    tmp, disks = parser.parse_args().worker
    _worker(tmp, int(disks))


if __name__ == "__main__":
    main()
