"""``make soak``: the harness on raw, qcow2 and rbd (a real one-node Ceph cluster, started here)
until ``DISKLEDGER_SOAK_STEPS`` steps in total (default 100,000): 40 % raw, 40 % qcow2, 20 % rbd.

Prints, per backend and in total: steps run, operations, refused requests, crashes injected
(in-process and by SIGKILL of a CLI process), recoveries, and violations found. A violation is
printed with Hypothesis's shrunk operation sequence, and the soak goes on; exit status 1 if any.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
import traceback

from diskledger.testing import (
    STATS,
    Harness,
    HarnessStats,
    budget,
    run_lifecycle,
)
from tests.support.ceph import CephCluster
from tests.testing.test_harness import rbd_harness

SHARES = {"raw": 0.4, "qcow2": 0.4, "rbd": 0.2}


def _delta(after: HarnessStats, before: HarnessStats) -> HarnessStats:
    return HarnessStats(
        **{
            f.name: getattr(after, f.name) - getattr(before, f.name)
            for f in dataclasses.fields(after)
        }
    )


def main() -> int:
    target = int(os.environ.get("DISKLEDGER_SOAK_STEPS", "100000"))
    cluster = CephCluster()

    def terminated(*_: object) -> None:
        # Hypothesis may swallow a SystemExit raised inside a step: stop the cluster here.
        cluster.stop()
        os._exit(143)

    signal.signal(signal.SIGTERM, terminated)
    cluster.start()
    failures = 0
    started = time.monotonic()
    try:
        for name, share in SHARES.items():
            harness = rbd_harness(cluster) if name == "rbd" else Harness(name, backend=name)
            before = dataclasses.replace(STATS)
            goal = STATS.steps + int(target * share)
            t0 = time.monotonic()
            while STATS.steps < goal:
                try:
                    run_lifecycle(
                        harness, settings=budget(max_examples=100, stateful_step_count=50)
                    )
                except Exception:  # an InvariantViolation, or Hypothesis's group of several
                    failures += 1
                    traceback.print_exc()
                progress = _delta(STATS, before)
                print(f"  {name}: {progress.steps} steps so far", file=sys.stderr, flush=True)
            done = _delta(STATS, before)
            print(f"{name:6} {time.monotonic() - t0:7.0f} s  {done.line()}", flush=True)
    finally:
        cluster.stop()
    print(f"total  {time.monotonic() - started:7.0f} s  {STATS.line()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
