"""SIGKILL at random moments: operations on real disks killed wherever they happen to be.

A loop picks a disk (two raw, one qcow2, all from a template whose copies take real time) and an
operation legal for its state, runs it in a CLI process and SIGKILLs that process after a random
delay between 0 and the time the operation typically takes to answer on this machine (measured
first, and kept up to date from the runs that were not killed). Most kills take down the whole
process group, tools included, as a power cut would; a share kill only the Python process, as the
OOM killer would, and the tools it ran (cp, qemu-img) are waited for before recovery. After each
kill the test process recovers, and checks: the disk is exactly as before or exactly as after the
operation, and the one the recovery decision names; an export target is whole or absent; the
ledger verifies (no orphan, no drift); no temporary name is left; nothing is pending.

The same runs on ``rbd`` (a real one-node Ceph cluster; the CLI processes get its settings
through their environment), two disks made from a template in the pool, with the operations only
rbd has (``flatten``, ``direct-snapshot``) and ``import``; after every kill the pools must also
hold exactly what the ledger names (``assert_pools_match_ledger``), no ``.tmp-`` name anywhere.

``DISKLEDGER_TORTURE_KILLS`` (default 100, ``make torture`` 2000) kills on the file backends,
``DISKLEDGER_TORTURE_RBD_KILLS`` (default 50, ``make torture`` 100) on rbd; ``DISKLEDGER_TORTURE_SEED`` replays the
choices of a run; the summary lines are printed (``pytest -s``) and written to
``DISKLEDGER_TORTURE_REPORT`` if set (``<name>.rbd`` beside it for rbd).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from diskledger.engine import Engine
from diskledger.engine.recovery import RecoveryReport
from tests.backends.helpers import info
from tests.recovery.helpers import (
    ABSENT,
    Finished,
    MiB,
    PoolView,
    WarmPool,
    after,
    cli,
    cli_env,
    clone_backing,
    created_state,
    disk_format,
    disk_state,
    open_engine,
    pool_mismatch,
    temp_leftovers,
)
from tests.support.ceph import CephCluster

KILLS = int(os.environ.get("DISKLEDGER_TORTURE_KILLS", "100"))
RBD_KILLS = int(os.environ.get("DISKLEDGER_TORTURE_RBD_KILLS", "50"))
SEED = int(os.environ.get("DISKLEDGER_TORTURE_SEED") or random.randrange(1 << 32))
PROCESS_ONLY = 0.2
"""The share of kills that hit only the Python process, not the tools it runs."""
LATE = 0.6
"""The share of delays drawn from the second half of the typical duration, where the effect ends
and the outcome is written: a window that delays uniform over the whole would seldom hit."""
DISKS = {"vm-r1/root": "raw", "vm-r2/root": "raw", "vm-q1/root": "qcow2"}
MAX_SNAPSHOTS = 2
GROW = 16 * MiB
MAX_GROWTH = 64 * MiB
WEIGHTS = {
    "snapshot": 3,
    "rollback": 3,
    "export": 2,
    "resize": 2,
    "remove-snapshot": 1,
    "delete": 1,
}
CALIBRATION = ("create", "snapshot", "resize", "rollback", "export", "remove-snapshot", "delete")

RBD_DISKS = {"vm-b1/root": "rbd", "vm-b2/root": "rbd"}
RBD_WEIGHTS = {**WEIGHTS, "flatten": 2, "direct-snapshot": 1}
RBD_CREATE = {"create": 3, "import": 1}
"""How an absent rbd disk is made: cloned from the template, or imported from a local file."""
RBD_CALIBRATION = (
    "import",
    "snapshot",
    "resize",
    "rollback",
    "direct-snapshot",
    "export",
    "remove-snapshot",
    "delete",
    "create",
    "flatten",
    "delete",
)


@dataclass
class Step:
    op: str
    argv: list[str]
    new: dict[str, Any]
    """The disk's state once the operation completed."""
    target: Path | None = None
    """An export's target."""


@dataclass
class Tally:
    kills: int = 0
    rolled_forward: int = 0
    rolled_back: int = 0
    finished: int = 0
    """Recovery decisions ``finish``: an idempotent in-place effect run again to its end."""
    needs_operator: int = 0
    leaks: int = 0
    """Orphans verify found, and temporary names left."""
    drift: int = 0
    completed: int = 0
    """Operations that ran to their end before the kill came."""
    nothing_pending: int = 0
    """Kills that left nothing to recover: before the intent, or after the outcome."""
    process_only: int = 0
    outlived: int = 0
    """Process-only kills after which a tool (cp, qemu-img) ran on and was waited for."""
    iterations: int = 0
    slowest: float = 0.0
    """The longest iteration (operation, kill, recovery and checks), in seconds."""
    slowest_step: str = ""
    problems: list[str] = field(default_factory=list)

    def count(self, report: RecoveryReport) -> None:
        for outcome in report.rolled_forward:
            if outcome.decision == "finish":
                self.finished += 1
            else:
                self.rolled_forward += 1
        self.rolled_back += len(report.rolled_back)
        self.needs_operator += len(report.needs_operator)

    def line(self, seconds: float, measured: str) -> str:
        return (
            f"torture: kills={self.kills} rolled_forward={self.rolled_forward} "
            f"rolled_back={self.rolled_back} finished={self.finished} "
            f"needs_operator={self.needs_operator} leaks={self.leaks} drift={self.drift} "
            f"completed_before_kill={self.completed} nothing_pending={self.nothing_pending} "
            f"process_only_kills={self.process_only} tools_outlived={self.outlived} "
            f"iterations={self.iterations} problems={len(self.problems)} "
            f"slowest_iteration={self.slowest:.1f}s ({self.slowest_step}) "
            f"seconds={seconds:.1f} seed={SEED} {measured}"
        )


class Torture:
    def __init__(
        self,
        tmp_path: Path,
        template: Path,
        *,
        disks: dict[str, str] = DISKS,
        ceph: CephCluster | None = None,
    ) -> None:
        """``disks``: the disks and their backends (all of one kind: the file backends share a
        root; ``rbd`` needs ``ceph``, its pools empty)."""
        self.root = tmp_path / "root"
        self.exports = tmp_path / "exports"
        self.exports.mkdir()
        self.rng = random.Random(SEED)
        self.disks = disks
        self.backends = tuple(dict.fromkeys(disks.values()))
        self.ceph = ceph
        self.environ = ceph.environ() if ceph is not None else None
        self.rbd = ceph is not None
        self.engine: Engine = open_engine(self.root, "rbd" if self.rbd else "raw", self.environ)
        self.source = template
        self.template = self.engine.add_template("big", template, "raw")
        self.pool = WarmPool(cli_env(environ=self.environ))
        self.pools = PoolView(ceph) if ceph is not None else None
        self.durations: dict[tuple[str, str], list[float]] = {}
        """Per operation and backend: seconds from ``go`` to the answer, of runs not killed."""
        self.cold_create = 0.0
        self.serial = 0

    def close(self) -> None:
        self.pool.close()
        self.engine.close()
        if self.pools is not None:
            self.pools.close()

    # -- choosing ------------------------------------------------------------------------------

    def create(self, disk: str, backend: str, op: str = "create") -> Step:
        assert self.template.virtual_size is not None
        if op == "import":  # the template's source file, as a disk of its own
            new = created_state(self.root, disk, backend, self.template.virtual_size)
            argv = ["disk", "import", disk, str(self.source), "--format", "raw"]
            return Step(op, argv, new)
        backing = clone_backing(self.root, "big", backend)
        new = created_state(
            self.root, disk, backend, self.template.virtual_size, template="big", backing=backing
        )
        return Step("create", ["disk", "create", disk, "--template", "big"], new)

    def step(self, disk: str, backend: str, op: str, old: dict[str, Any]) -> Step:
        """``op`` on the live disk ``disk`` whose state is ``old``."""
        self.serial += 1
        if op == "snapshot":
            name = f"s{self.serial}"
            return Step(op, ["disk", op, disk, name], after(old, op, name))
        if op in ("rollback", "remove-snapshot"):
            name = self.rng.choice(old["snapshots"])
            resized = self.engine.show(disk).resized
            return Step(op, ["disk", op, disk, name], after(old, op, name, resized=resized))
        if op == "resize":
            size = old["size"] + GROW
            return Step(op, ["disk", op, disk, str(size)], after(old, op, size))
        if op == "export":
            target = self.exports / f"export-{self.serial}.img"
            return Step(op, ["disk", op, disk, str(target)], after(old, op), target)
        if op == "flatten":
            return Step(op, ["disk", op, disk], {**old, "backing": None})
        if op == "direct-snapshot":
            # The disk is left as it was; the copy in the snapshot pool is checked with the pools.
            return Step(op, ["disk", op, disk, f"ds{self.serial}", f"img-{self.serial}"], old)
        assert op == "delete"
        return Step(op, ["disk", op, disk], after(old, op))

    def choose(self, disk: str, backend: str, old: dict[str, Any]) -> Step:
        if old == ABSENT:
            if not self.rbd:
                return self.create(disk, backend)
            made = self.rng.choices(list(RBD_CREATE), list(RBD_CREATE.values()))[0]
            return self.create(disk, backend, made)
        assert self.template.virtual_size is not None
        legal = {
            "snapshot": len(old["snapshots"]) < MAX_SNAPSHOTS,
            "rollback": bool(old["snapshots"]),
            "remove-snapshot": bool(old["snapshots"]),
            "resize": old["size"] + GROW <= self.template.virtual_size + MAX_GROWTH,
            "export": True,
            "delete": True,
        }
        weights = WEIGHTS
        if self.rbd:
            legal.update({"flatten": old["backing"] is not None, "direct-snapshot": True})
            weights = RBD_WEIGHTS
        ops = [op for op, ok in legal.items() if ok]
        op = self.rng.choices(ops, [weights[o] for o in ops])[0]
        return self.step(disk, backend, op, old)

    # -- running -------------------------------------------------------------------------------

    def run(self, backend: str, step: Step, *, kill_after: float | None, group: bool) -> Finished:
        worker = self.pool.take()
        worker.go(self.root, backend, step.argv)
        if kill_after is not None:
            time.sleep(max(0.0, worker.started + kill_after - time.monotonic()))
            worker.kill(group=group)
        done = worker.finish()
        if done.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"{step.argv} exited {done.returncode}: {done.stderr}")
        if done.returncode == 0 and done.answered is not None:
            self.durations.setdefault((step.op, backend), []).append(done.answered)
        return done

    def typical(self, op: str, backend: str) -> float:
        """The median time ``op`` took to answer, over its recent runs on this machine."""
        return statistics.median(self.durations[op, backend][-15:])

    def calibrate(self) -> None:
        """Run every operation to its end on each backend, twice, to know how long each takes
        here; and time one ``disk create`` as a whole new CLI process."""
        calibration = RBD_CALIBRATION if self.rbd else CALIBRATION
        for backend in self.backends:
            disk = f"cal-{backend}/root"
            for _ in range(2):
                state = ABSENT
                for op in calibration:
                    if op in ("create", "import"):
                        step = self.create(disk, backend, op)
                    else:
                        step = self.step(disk, backend, op, state)
                    assert self.run(backend, step, kill_after=None, group=True).returncode == 0
                    state = step.new
                    if step.target:
                        step.target.unlink()
        started = time.monotonic()
        backend = self.backends[0]
        done = cli(
            self.root,
            *("disk", "create", "cal-cold/root", "--template", "big"),
            backend=backend,
            environ=self.environ,
        )
        self.cold_create = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        self.engine.delete("cal-cold/root")

    def measured(self) -> str:
        typical = " ".join(f"{o}/{b}={self.typical(o, b):.2f}" for o, b in sorted(self.durations))
        cold = f"cold_cli_{self.backends[0]}_create={self.cold_create:.2f}s"
        return f"{cold} typical_answer_after_go: {typical}"

    # -- one kill ------------------------------------------------------------------------------

    def iterate(self, tally: Tally) -> str:
        """One operation, killed at random, recovered and checked; returns what it ran."""
        disk = self.rng.choice(list(self.disks))
        backend = self.disks[disk]
        old = disk_state(self.engine, disk)
        step = self.choose(disk, backend, old)
        group = self.rng.random() >= PROCESS_ONLY
        typical = self.typical(step.op, backend)
        delay = self.rng.uniform(0.5 * typical if self.rng.random() < LATE else 0, typical)
        done = self.run(backend, step, kill_after=delay, group=group)
        what = f"{step.argv} killed after {delay:.3f} s ({'group' if group else 'process'})"
        killed = done.returncode != 0
        tally.completed += not killed
        tally.kills += killed
        tally.process_only += killed and not group
        tally.outlived += done.outlived > 0

        report = self.engine.recover()
        tally.count(report)
        if report.in_flight or report.needs_operator:
            tally.problems.append(f"{what}: recovery left {report.to_json()}")
            return what
        decisions = [o.decision for o in (*report.rolled_forward, *report.rolled_back)]
        if not decisions:
            tally.nothing_pending += killed
            expected = [old, step.new] if killed else [step.new]
        else:
            expected = [old] if decisions == ["roll-back"] else [step.new]
        state = disk_state(self.engine, disk)
        if state not in expected:
            tally.problems.append(f"{what}: {decisions} left {state}, expected one of {expected}")
        if step.target is not None:
            self.check_export(step, disk, decisions, killed, what, tally)
        self.check_storage(what, tally)
        return f"{step.op} killed after {delay:.2f} s: {decisions or 'nothing pending'}"

    def check_export(
        self, step: Step, disk: str, decisions: list[str], killed: bool, what: str, tally: Tally
    ) -> None:
        """A target that exists is whole; it exists when the export completed or was rolled
        forward, and not when it was rolled back. Removed after, as its user would take it."""
        assert step.target is not None
        exists = step.target.exists()
        must: bool | None = None  # killed with nothing pending: before the intent or after
        if decisions or not killed:
            must = decisions != ["roll-back"]
        if must is not None and exists != must:
            tally.problems.append(f"{what}: export target exists={exists} after {decisions}")
        if exists:
            seen = info(str(step.target), disk_format(self.disks[disk]))
            if (seen["virtual-size"], seen.get("backing-filename")) != (step.new["size"], None):
                tally.problems.append(f"{what}: the export is not a whole copy: {seen}")
            step.target.unlink()

    def check_storage(self, what: str, tally: Tally) -> None:
        verified = self.engine.verify()
        tally.leaks += len(verified.orphans)
        tally.drift += len(verified.drift)
        if not verified.ok:
            tally.problems.append(f"{what}: verify {verified.to_json()}")
        leftovers = temp_leftovers(self.root, self.exports)
        tally.leaks += len(leftovers)
        if leftovers:
            tally.problems.append(f"{what}: temporary names left: {leftovers}")
        if self.pools is not None and (mismatch := pool_mismatch(self.engine, self.pools)):
            tally.leaks += sum(
                len(m.get("unexpected", ())) + len(m.get("temporary", ()))
                for m in mismatch.values()
            )
            tally.drift += sum(len(m.get("missing", ())) for m in mismatch.values())
            tally.problems.append(f"{what}: the pools differ from the ledger: {mismatch}")
        if self.engine.recover(dry_run=True).pending:
            tally.problems.append(f"{what}: still pending after recovery")


def torture(torture: Torture, kills: int, report_suffix: str = "") -> None:
    tally = Tally()
    started = time.monotonic()
    try:
        torture.calibrate()
        while tally.kills < kills and tally.iterations < 3 * kills + 10 and not tally.problems:
            tally.iterations += 1
            began = time.monotonic()
            step = torture.iterate(tally)
            if (took := time.monotonic() - began) > tally.slowest:
                tally.slowest, tally.slowest_step = took, step
    finally:
        torture.close()
        summary = tally.line(time.monotonic() - started, torture.measured())
        summary = f"{'/'.join(torture.backends)} {summary}"
        print(f"\n{summary}")
        if report := os.environ.get("DISKLEDGER_TORTURE_REPORT"):
            Path(report + report_suffix).write_text(summary + "\n")
    assert tally.problems == [], "\n".join(tally.problems)
    assert (tally.leaks, tally.drift, tally.needs_operator) == (0, 0, 0), summary
    assert tally.kills == kills, summary


def test_random_sigkills_leave_old_or_new_and_nothing_behind(
    tmp_path: Path, big_template: Path
) -> None:
    torture(Torture(tmp_path, big_template), KILLS)


@pytest.mark.skipif(RBD_KILLS == 0, reason="DISKLEDGER_TORTURE_RBD_KILLS=0")
def test_random_sigkills_on_rbd_leave_the_pools_as_the_ledger_says(
    tmp_path: Path, rbd_template: Path, rbd_pools: CephCluster
) -> None:
    torture(Torture(tmp_path, rbd_template, disks=RBD_DISKS, ceph=rbd_pools), RBD_KILLS, ".rbd")
