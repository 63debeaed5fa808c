"""LVM create: ``Engine.create`` from a cached template vs a bare ``lvcreate`` + ``qemu-img
convert``, both inside the same test guest.

This machine's kernel has no device-mapper, so the benchmark boots the test guest
(``tests.support.guest``: Debian's cloud kernel under TCG, diskledger on a read-only payload
disk, one empty 8 GiB disk as the physical volume), makes a thick volume group on it, and runs
one Python process in the guest that imports diskledger once, caches one 16 MiB raw template
(data in every MiB, so the copy writes all of it) and then, interleaved trial by trial (the
order flips every trial), after one warm-up each:

- A: ``Engine.create(disk, template="base")`` (lvm backend, thick, SQLite ledger): the capacity
  check (``vgs``), intent, ``lvs``, ``lvcreate`` of the temporary volume with its tags,
  ``qemu-img convert -n`` of the cached template into it, ``lvrename``, ``lvs``, outcome;
- B: ``lvcreate -W y -n NAME -L SIZE VG`` and ``qemu-img convert -n -f raw -O raw TEMPLATE
  /dev/VG/NAME`` of the same cached file, as a script would.

Everything under emulation is slow, and so is the guest's start: the report states the boot
(to the first command), the round trip of one command through the serial channel, and the
guest's Python start with diskledger imported, so the per-disk figures can be read against them.
``GuestUnavailable`` (no qemu-system-x86_64, no guest image and no way to build one) leaves the
benchmark out of a run of all benchmarks, with the reason.
"""

from __future__ import annotations

import base64
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.timing import Report, Row

__all__ = ["DEFAULT_TRIALS", "run"]

DEFAULT_TRIALS = 15
VG = "benchvg"
PV = "/dev/disk/by-serial/pv0"

IN_GUEST = r"""
import json, os, subprocess, sys, time
started = time.perf_counter()
from diskledger.engine import Config, Engine
imported = time.perf_counter() - started
VG, TRIALS, MiB = sys.argv[1], int(sys.argv[2]), 1 << 20
SIZE = 16 * MiB
work = "/tmp/bench"
os.makedirs(work, exist_ok=True)
source = os.path.join(work, "base.raw")
with open(source, "wb") as f:
    for i in range(SIZE // MiB):
        f.seek(i * MiB)
        f.write(bytes([0x40 + i]) * 4096)
    f.truncate(SIZE)

def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)

config = Config.load(root=os.path.join(work, "root"), backend="lvm", recover=False,
                     environ={"DISKLEDGER_LVM_VG": VG})
samples = {"a": [], "b": []}
with Engine.open(config) as engine:
    engine.add_template("base", source, "raw")
    cached = engine.template("base").location
    count = iter(range(10**6))

    def a():
        t = time.perf_counter()
        engine.create(f"bench/e{next(count)}", template="base")
        return time.perf_counter() - t

    def b():
        name = f"b{next(count)}"
        t = time.perf_counter()
        sh("lvcreate", "--yes", "-W", "y", "-n", name, "-L", f"{SIZE}b", VG)
        sh("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", cached, f"/dev/{VG}/{name}")
        return time.perf_counter() - t

    a(); b()  # warm-up
    for i in range(TRIALS):
        sides = [("a", a), ("b", b)]
        for key, side in sides if i % 2 == 0 else reversed(sides):
            samples[key].append(side())
    assert engine.verify().ok
    t = time.perf_counter()
    sh("lvs", VG)
    lvs = time.perf_counter() - t
print("@@BENCH@@" + json.dumps({"imported": imported, "lvs": lvs, **samples}))
"""


@dataclass(frozen=True, slots=True)
class _Unjudged(Report):
    """A report with no target to meet: the figure is stated, not judged."""

    @property
    def verdict(self) -> str:
        return "NOT JUDGED"


def run(trials: int = DEFAULT_TRIALS) -> Report:
    """Raises ``GuestUnavailable`` when the guest cannot be built or started here."""
    from tests.support.guest import Guest, GuestDisk, build, python_payload

    repo = Path(__file__).resolve().parent.parent
    image = build()
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-lvm-") as tmp:
        work = Path(tmp)
        pv = work / "pv0.raw"
        with pv.open("wb") as sparse:
            sparse.truncate(8 << 30)
        payload = python_payload(repo, work / "payload")
        started = time.perf_counter()
        with Guest(image, disks=[GuestDisk(pv, "pv0")], payload=payload, work_dir=work) as guest:
            boot = time.perf_counter() - started
            trips = []
            for _ in range(5):
                lap = time.perf_counter()
                guest.run("true").check()
                trips.append(time.perf_counter() - lap)
            script = base64.b64encode(IN_GUEST.encode()).decode()
            guest.run(
                f"set -e; echo {script} | base64 -d > /tmp/bench.py; "
                f"pvcreate -q {PV}; vgcreate -q {VG} {PV}"
            ).check()
            lap = time.perf_counter()
            done = guest.run(
                f"PYTHONPATH=/payload/src:/payload/site python3 /tmp/bench.py {VG} {trials}",
                timeout=3600,
            )
            in_guest = time.perf_counter() - lap
        output = done.output
        if done.rc != 0 or "@@BENCH@@" not in output:
            raise RuntimeError(f"the benchmark failed in the guest:\n{output[-3000:]}")
        figures = json.loads(output.rpartition("@@BENCH@@")[2].strip().splitlines()[0])
    return _report(figures, trials, boot, statistics.median(trips), in_guest)


def _report(
    figures: dict[str, Any], trials: int, boot: float, trip: float, in_guest: float
) -> Report:
    a = [float(x) for x in figures["a"]]
    b = [float(x) for x in figures["b"]]
    median_a, median_b = statistics.median(a), statistics.median(b)
    ratio = median_a / median_b
    rows = [
        Row(
            "per disk (median)",
            f"{median_a * 1e3:.0f}",
            f"{median_b * 1e3:.0f}",
            f"{ratio:.2f} ({(median_a - median_b) * 1e3:+.0f} ms)",
        ),
        Row("per disk (minimum)", f"{min(a) * 1e3:.0f}", f"{min(b) * 1e3:.0f}",
            f"{min(a) / min(b):.2f}"),
        Row("per disk (maximum)", f"{max(a) * 1e3:.0f}", f"{max(b) * 1e3:.0f}",
            f"{max(a) / max(b):.2f}"),
    ]  # fmt: skip
    imported, lvs = float(figures["imported"]), float(figures["lvs"])
    notes = (
        f"guest boot to its first command {boot:.1f} s (TCG, 1 vCPU); one command's round "
        f"trip through the serial channel {trip * 1e3:.0f} ms (median of 5)",
        f"in the guest: importing diskledger {imported:.1f} s, one `lvs` {lvs * 1e3:.0f} ms; "
        f"the whole in-guest run (Python start, template, {trials + 1} disks per side) "
        f"{in_guest:.0f} s",
    )
    return _Unjudged(
        title="LVM: Engine.create from a cached template vs a bare lvcreate + qemu-img convert",
        method=(
            f"{trials} trials per side, interleaved (the order flips every trial), after one "
            "warm-up each, inside the test guest (TCG); times in ms. Thick volume group, 4 MiB "
            "extents, 16 MiB raw template. A: Engine.create(disk, template=...) (lvm backend, "
            "SQLite ledger). B: lvcreate -W y + qemu-img convert -n of the same cached file."
        ),
        columns=("Engine.create ms (A)", "lvcreate+convert ms (B)", "ratio A/B (A - B)"),
        rows=rows,
        target=f"none promised: the figure is stated (ratio of the medians {ratio:.2f})",
        met=True,
        notes=notes,
    )
