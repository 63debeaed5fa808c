"""Time to a clear error when the OSD freezes under an image that holds its exclusive lock: the
image closed in the background once the cluster fell silent vs closed in place.

Starts its own one-node Ceph cluster (``tests.support.ceph.CephCluster``) unless one is handed in,
and connects as the restricted client with op timeout ``OP_TIMEOUT`` and retry budget ``BUDGET``.
Each trial makes a 4 MiB image, opens it through ``Images.image`` and writes to it (librbd takes
the exclusive lock), freezes the OSD (SIGSTOP), then times a second write until its error has left
the ``with`` block, the image closed: the write's budget and last attempt, then the close.

- A: ``Cluster`` as it is: the write ran out of its budget unanswered, so the image is closed by a
  thread of its own;
- B: the same with ``Cluster.silent`` never true, so the image is closed in place, as before the
  background close: librbd saves the object map, releases the lock and removes the watch, each an
  op timeout against the frozen OSD.

The OSD is thawed after each trial and the cluster settled (a thawed placement group waits out its
read lease) before the next one, outside the times.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from benchmarks.timing import Report, Row, Side, interleave

if TYPE_CHECKING:
    from diskledger.backends.rbd.cluster import Cluster
    from tests.support.ceph import CephCluster

__all__ = ["BUDGET", "DEFAULT_TRIALS", "OP_TIMEOUT", "run"]

DEFAULT_TRIALS = 3
OP_TIMEOUT = 2.0
BUDGET = 5.0


def run(trials: int = DEFAULT_TRIALS, *, cluster: CephCluster | None = None) -> Report:
    from tests.support.ceph import CephCluster

    if cluster is not None:
        return _measure(cluster, trials)
    own = CephCluster()
    try:
        own.start()
        return _measure(own, trials)
    finally:
        own.stop()


def _measure(ceph: CephCluster, trials: int) -> Report:
    from diskledger.backends.rbd.cluster import Cluster
    from diskledger.backends.rbd.config import CephConfig

    class ClosingInPlace(Cluster):
        @property
        def silent(self) -> bool:
            return False

    environ = {
        **ceph.environ(),
        "DISKLEDGER_CEPH_OP_TIMEOUT": f"{OP_TIMEOUT:g}",
        "DISKLEDGER_CEPH_RETRY_BUDGET": f"{BUDGET:g}",
    }
    config = CephConfig.from_environ(environ)

    def side(kind: type[Cluster], label: str) -> Side:
        def trial(i: int) -> dict[str, float]:
            return {"error": _frozen_write(ceph, kind(config), f"{config.pool}/bench-{label}-{i}")}

        return trial

    samples = interleave(side(Cluster, "a"), side(ClosingInPlace, "b"), trials)
    a, b = samples.median_a("error"), samples.median_b("error")
    return Report(
        title="Frozen OSD, image lock held: the error with the close in the background vs in place",
        method=(
            f"{trials} trials per side, interleaved; op timeout {OP_TIMEOUT:g} s, budget "
            f"{BUDGET:g} s; seconds from a write to a frozen OSD (the image's exclusive lock "
            "taken by an earlier write) until its error left Images.image(). A: the cluster "
            "found silent, the image closed in a thread of its own. B: the same, closed in place."
        ),
        columns=("background s (A)", "in place s (B)", "ratio A/B (A - B)"),
        rows=[
            Row(
                "write, then close (median)",
                f"{a:.2f}",
                f"{b:.2f}",
                f"{a / b:.3f} ({a - b:+.2f} s)",
            )
        ],
        target=(
            f"A within the budget plus one op timeout and 0.5 s ({BUDGET + OP_TIMEOUT + 0.5:g} s; "
            f"measured {a:.2f})"
        ),
        met=a <= BUDGET + OP_TIMEOUT + 0.5,
        notes=(
            f"A's trials: {', '.join(f'{s:.2f}' for s in samples.a['error'])} s; B's: "
            f"{', '.join(f'{s:.2f}' for s in samples.b['error'])} s",
            f"B - A is what librbd's close spends against the silent OSD: "
            f"{(b - a) / OP_TIMEOUT:.1f} op timeouts",
        ),
    )


def _frozen_write(ceph: CephCluster, cluster: Cluster, location: str) -> float:
    from diskledger.backends.rbd.images import Images
    from diskledger.errors import CephUnavailable

    images = Images(cluster)
    try:
        images.create(location, 4 << 20)
        started = 0.0
        try:
            with images.image(location) as image:
                cluster.call("write", lambda: image.write(b"x" * 4096, 0))  # takes the lock
                ceph.freeze_osd()
                started = time.perf_counter()
                cluster.call("write", lambda: image.write(b"y" * 4096, 1 << 20))
        except CephUnavailable:
            took = time.perf_counter() - started
        else:
            raise RuntimeError("the write to the frozen OSD succeeded")
        finally:
            ceph.thaw_osd()
        for closer in cluster.closing():
            closer.join(60)
        ceph.settle()
        images.remove_image(location)
        return took
    finally:
        cluster.close()
