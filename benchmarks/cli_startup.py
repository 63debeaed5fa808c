"""Command-line start-up: a whole ``diskledger`` process vs the least such a command could cost.

An orchestrator that drives the command line pays the interpreter's start-up, the imports and
opening the ledger on every call, so the wall time of the whole process is what is measured
(``subprocess.run``, from before the fork to after the exit). Side A runs the real commands:
``diskledger disk show X --json`` and ``diskledger disk create X --template T --json`` from a
cached qcow2 template (SQLite ledger under ``DISKLEDGER_ROOT``, ``DISKLEDGER_BACKEND=qcow2``).
Side B is the floor: the same interpreter running a tiny script that opens the same SQLite
ledger file with stdlib ``sqlite3`` and prints the disk's row as JSON, and the bare
``qemu-img create -f qcow2 -b <template>`` run from the shell. Removing each created disk after
its trial is not timed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.timing import Report, Row, Samples, interleave, stopwatch
from diskledger.states.streams import disk_stream

__all__ = ["DEFAULT_TRIALS", "run"]

DEFAULT_TRIALS = 30
STEPS = ("show", "create")
TARGETS = {"show": 0.15, "create": 0.25}  # seconds of wall time per process
LABELS = {
    "show": "disk show X --json",
    "create": "disk create X --template T",
}
MiB = 1 << 20
TEMPLATE_SIZE = 64 * MiB
INSTANCE = "bench"
SHOWN = f"{INSTANCE}/shown"

# Side B of ``show``: what printing one disk's row costs with nothing but the standard library.
READ_ROW = """\
import json, sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
(view,) = connection.execute("SELECT view FROM disks WHERE stream_id = ?", sys.argv[2:]).fetchone()
json.dump(json.loads(view), sys.stdout, indent=2, sort_keys=True)
sys.stdout.write("\\n")
"""

# Measures one command's peak resident set: ``RUSAGE_CHILDREN`` of a process whose only child
# is that command (the benchmark's own children would otherwise count too).
MAX_RSS = """\
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def cli() -> str:
    return str(Path(sys.executable).with_name("diskledger"))


def run(trials: int = DEFAULT_TRIALS) -> Report:
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-cli-") as tmp:
        samples, rss = _measure(Path(tmp), trials)
    return _report(samples, rss, trials)


def _measure(tmp: Path, trials: int) -> tuple[Samples, dict[str, int]]:
    root = tmp / "root"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DISKLEDGER_")},
        "DISKLEDGER_ROOT": str(root),
        "DISKLEDGER_BACKEND": "qcow2",
    }

    def diskledger(*args: str) -> None:
        subprocess.run([cli(), *args, "--json"], env=env, check=True, capture_output=True)

    source = tmp / "template-source.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", str(source), str(TEMPLATE_SIZE)],
        check=True,
        capture_output=True,
    )
    diskledger("template", "add", "base", str(source), "--format", "qcow2")
    diskledger("disk", "create", SHOWN, "--template", "base")
    ledger = str(root / "ledger.db")
    template = str(root / "templates" / "base")
    assert os.path.exists(ledger) and os.path.exists(template), (ledger, template)
    direct = tmp / "direct"
    direct.mkdir()

    def command_line(trial: int) -> Mapping[str, float]:
        disk = f"{INSTANCE}/c{trial + 1_000_000}"
        lap = stopwatch()
        diskledger("disk", "show", SHOWN)
        shown = lap()
        diskledger("disk", "create", disk, "--template", "base")
        created = lap()
        diskledger("disk", "delete", disk)
        return {"show": shown, "create": created}

    def floor(trial: int) -> Mapping[str, float]:
        path = str(direct / f"d{trial + 1_000_000}.qcow2")
        lap = stopwatch()
        subprocess.run(
            [sys.executable, "-c", READ_ROW, ledger, disk_stream(SHOWN)],
            check=True,
            capture_output=True,
        )
        shown = lap()
        subprocess.run(
            f"qemu-img create -f qcow2 -b {template} -F qcow2 {path}",
            shell=True,
            check=True,
            capture_output=True,
        )
        created = lap()
        os.unlink(path)
        return {"show": shown, "create": created}

    samples = interleave(command_line, floor, trials, warmup=2)
    rss = {
        "show": _max_rss([cli(), "disk", "show", SHOWN, "--json"], env),
        "create": _max_rss([cli(), "disk", "create", f"{INSTANCE}/rss", "--template", "base"], env),
        "sqlite3": _max_rss([sys.executable, "-c", READ_ROW, ledger, disk_stream(SHOWN)], env),
    }
    return samples, rss


def _max_rss(command: Sequence[str], env: Mapping[str, str]) -> int:
    """KiB: the peak resident set of ``command`` (and of whatever it waited for)."""
    out = subprocess.run(
        [sys.executable, "-c", MAX_RSS, *command],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[-1])


def _report(samples: Samples, rss: dict[str, int], trials: int) -> Report:
    rows = []
    met = True
    for step in STEPS:
        a, b = samples.median_a(step), samples.median_b(step)
        target = TARGETS[step]
        met = met and a <= target
        rows.append(
            Row(
                f"{LABELS[step]} (target {target * 1e3:.0f} ms)",
                f"{a * 1e3:.1f}",
                f"{b * 1e3:.1f}",
                f"{a / b:.2f} ({(a - b) * 1e3:+.1f} ms)",
            )
        )
    verdicts = ", ".join(
        f"{step} {samples.median_a(step) * 1e3:.0f} ms "
        f"{'<=' if samples.median_a(step) <= TARGETS[step] else '>'} {TARGETS[step] * 1e3:.0f}"
        for step in STEPS
    )
    return Report(
        title="Command-line start-up: a whole diskledger process per call",
        method=(
            f"{trials} trials per side, interleaved (A and B alternate, order flipping every "
            "trial); medians of the wall time of the whole process (subprocess.run), in ms. "
            "A: the diskledger console script (SQLite ledger, qcow2 backend). B: the same "
            "interpreter printing the disk's row with stdlib sqlite3 and json; bare qemu-img "
            "create -b <template> from the shell."
        ),
        columns=("diskledger ms (A)", "floor ms (B)", "ratio A/B (A - B)"),
        rows=rows,
        target=f"disk show <= 150 ms and disk create <= 250 ms of wall time ({verdicts})",
        met=met,
        notes=(
            f"peak RSS: disk show {rss['show'] / 1024:.1f} MiB, disk create "
            f"{rss['create'] / 1024:.1f} MiB (the CLI or its qemu-img, whichever is larger), "
            f"the sqlite3 script {rss['sqlite3'] / 1024:.1f} MiB",
            f"template {TEMPLATE_SIZE // MiB} MiB qcow2; each created disk is deleted (with the "
            "command line on side A, unlink on side B) after its trial, untimed",
        ),
    )
