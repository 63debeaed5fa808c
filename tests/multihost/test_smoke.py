"""The multi-host smoke run, in the default test run: the real workload (tests/multihost/worker.py)
on three rig hosts under 8 host kills (half at armed fault points, one at each of
after-intent/mid-effect/after-effect/after-outcome; half from outside at random moments),
4 freezes (2 of a quarter lease, half what may cost it: no takeover; 2 of three leases: takeover, and the thawed zombie
fences itself), 3 partitions (PostgreSQL, Ceph, both) and 2 listener kills, then every check of
tests/multihost/run.py. A sample of every kind, small enough for the suite's budget; ``make chaos`` runs the long one (500 kills and every nemesis).

``DISKLEDGER_CHAOS_SEED`` replays a schedule (the timing is real, so a run is never the same);
``DISKLEDGER_CHAOS_FIGURES=path`` writes the figures as JSON. Without root, iproute2, iptables,
the freezer, libfaketime, PostgreSQL or Ceph it is skipped, except under CI=true (a failure).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.multihost.rig import Cluster
from tests.multihost.run import KNOWN_BUGS, run

pytestmark = pytest.mark.multihost


def test_smoke(rig: Cluster) -> None:
    """On the rig the self-tests used (healed, thawed, every host killed, the witness files
    and nemeses gone: ``rig``); the run makes its own ledger database and work directory."""
    result = run(
        rig,
        kills=8,
        freezes_short=2,
        freezes_long=2,
        partitions=3,
        listener_kills=2,
        seed=os.environ.get("DISKLEDGER_CHAOS_SEED"),
    )
    print(result.render())
    if os.environ.get("DISKLEDGER_CHAOS_FIGURES"):
        Path(os.environ["DISKLEDGER_CHAOS_FIGURES"]).write_text(
            json.dumps(result.figures, indent=2) + "\n"
        )
    figures = result.figures
    assert figures["nemeses"]["kill"] >= 8
    assert figures["takeovers"] > 0
    assert not result.unexplained, result.render()
    if result.known:
        # Every other check held; these are engine bugs found here, reported with their
        # evidence (docs/multihost.md, "Chaos runs"): visible as XFAIL until they are fixed.
        pytest.xfail("; ".join(f"{bug}: {KNOWN_BUGS[bug]}" for bug in sorted(result.known)))
