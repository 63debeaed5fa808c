"""Engine overhead: ``Engine`` create/resize/snapshot of a qcow2 disk vs the bare ``qemu-img``.

Side A runs ``Engine.create`` (a qcow2 overlay on a cached template, larger than the template),
``Engine.resize`` and ``Engine.snapshot`` on a fresh disk; side B runs the same three ``qemu-img``
commands through ``subprocess`` on a fresh file beside it, with the same template as backing file.
Both write in one temporary directory, so they share a file system. Removing the disks after each
trial is not timed.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from benchmarks.timing import Report, Row, Samples, interleave, stopwatch
from diskledger.engine import Config, Engine

__all__ = ["DEFAULT_TRIALS", "run"]

DEFAULT_TRIALS = 200
STEPS = ("create", "resize", "snapshot")
TARGET_RATIO = 1.05
MiB = 1 << 20
TEMPLATE_SIZE = 64 * MiB
CREATE_SIZE = 128 * MiB
RESIZE_SIZE = 256 * MiB
INSTANCE = "bench"


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def run(trials: int = DEFAULT_TRIALS) -> Report:
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-engine-") as tmp:
        samples = _measure(Path(tmp), trials)
    return _report(samples, trials)


def _measure(tmp: Path, trials: int) -> Samples:
    source = tmp / "template-source.qcow2"
    qemu_img("create", "-f", "qcow2", str(source), str(TEMPLATE_SIZE))
    direct = tmp / "direct"
    direct.mkdir()
    config = Config.load(root=tmp / "engine", backend="qcow2", environ={})
    with Engine.open(config) as engine:
        template = engine.add_template("base", source, "qcow2").location
        assert template is not None
        # A disk that stays, so the instance directory does not come and go with every trial
        # (the direct side writes into a directory that already exists, too).
        engine.create(f"{INSTANCE}/anchor", template="base")

        def through_engine(trial: int) -> Mapping[str, float]:
            disk = f"{INSTANCE}/e{trial + 1_000_000}"
            lap = stopwatch()
            engine.create(disk, template="base", size=CREATE_SIZE)
            created = lap()
            engine.resize(disk, RESIZE_SIZE)
            resized = lap()
            engine.snapshot(disk, "s1")
            snapshotted = lap()
            engine.delete(disk)
            return {"create": created, "resize": resized, "snapshot": snapshotted}

        def direct_qemu_img(trial: int) -> Mapping[str, float]:
            path = str(direct / f"d{trial + 1_000_000}.qcow2")
            lap = stopwatch()
            qemu_img("create", "-f", "qcow2", "-b", template, "-F", "qcow2", path, str(CREATE_SIZE))
            created = lap()
            qemu_img("resize", "-f", "qcow2", path, str(RESIZE_SIZE))
            resized = lap()
            qemu_img("snapshot", "--image-opts", "-c", "s1", f"driver=qcow2,file.filename={path}")
            snapshotted = lap()
            os.unlink(path)
            return {"create": created, "resize": resized, "snapshot": snapshotted}

        return interleave(through_engine, direct_qemu_img, trials, warmup=3)


def _report(samples: Samples, trials: int) -> Report:
    rows = [_row(step, samples.median_a(step), samples.median_b(step)) for step in STEPS]
    total_a, total_b = _median_sum(samples.a), _median_sum(samples.b)
    rows.append(_row("sum of the three", total_a, total_b))
    ratio = total_a / total_b
    return Report(
        title="Engine overhead: create + resize + snapshot of a qcow2 disk",
        method=(
            f"{trials} trials per side, interleaved (A and B alternate, order flipping every "
            "trial); medians in ms. A: Engine.create/resize/snapshot (SQLite ledger, qcow2 "
            "backend). B: the same qemu-img create/resize/snapshot commands via subprocess."
        ),
        columns=("Engine ms (A)", "qemu-img ms (B)", "ratio A/B (A - B)"),
        rows=rows,
        target=f"ratio of the sum <= {TARGET_RATIO:.2f} (measured {ratio:.3f})",
        met=ratio <= TARGET_RATIO,
        notes=(
            "the sum row is the median of each trial's sum of the three steps",
            f"template {TEMPLATE_SIZE // MiB} MiB qcow2, disk created at {CREATE_SIZE // MiB} "
            f"MiB, resized to {RESIZE_SIZE // MiB} MiB",
        ),
    )


def _row(label: str, a: float, b: float) -> Row:
    return Row(label, f"{a * 1e3:.2f}", f"{b * 1e3:.2f}", f"{a / b:.3f} ({(a - b) * 1e3:+.2f} ms)")


def _median_sum(steps: dict[str, list[float]]) -> float:
    totals: list[float] = [sum(trial) for trial in zip(*(steps[s] for s in STEPS), strict=True)]
    return statistics.median(totals)
