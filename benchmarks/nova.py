"""Against Nova: create + resize + snapshot through diskledger's Engine vs OpenStack Nova 34's own
libvirt image backend, with bare ``qemu-img`` beside them, for qcow2 and raw disks (issue 16).

The three sides are the peer scripts' (``benchmarks/peers/nova_vs_diskledger.py``, whose header
says exactly what each step runs), run through its ``measure``: Nova's ``imagebackend``
(``Qcow2`` and ``Flat``), unpatched, in its own venv (``var/nova-venv``, made by
``scripts/nova-venv.sh`` when missing) with the real oslo.privsep daemon; diskledger's ``Engine``
(SQLite ledger; qcow2 and raw backends) in a worker under this interpreter; the bare commands in
this process. Each side is a long-lived process; they alternate trial by trial, the order of the
three cycling through all six permutations and the order of the two backends flipping every trial,
after untimed warm-ups (the first checked with ``qemu-img info``). All write under one temporary
directory. Per trial: a disk from a cached 64 MiB template at 128 MiB, grown to 256 MiB, and
snapshotted. Nova's snapshot of a stopped qcow2 or raw disk is ``snapshot_extract``, a standalone
copy, so the compared snapshot is ``Engine.export`` and ``qemu-img convert`` on the other two sides
(diskledger's internal qcow2 snapshot, which Nova's ``Qcow2`` has no counterpart for, is timed too
and stated in a note, outside the sum).

Target (issue 16): the median of diskledger's per-trial sum of the three steps at most 0.10 times
Nova's, on qcow2 and on raw. When Nova's venv cannot be made here, ``run`` raises
``NovaUnavailable`` (a run of all benchmarks leaves it out with a line).

``run_rbd``: RBD create vs Nova's ``Rbd`` backend (``images_type=rbd``) on the same one-node
cluster (``tests.support.ceph.CephCluster``, started and stopped here, as the rbd benchmark does).
Three sides, interleaved trial by trial (order cycling through the six permutations), after
untimed warm-ups: Nova's ``Rbd`` making an instance's root disk as ``LibvirtDriver`` does (a clone
of the Glance image's snapshot, grown to the flavor's size; ``benchmarks/peers/nova_rbd.py``, in
the Nova venv, Glance stood in for by a stub), ``Engine.create(disk, template="base",
size=128 MiB)`` with the rbd backend as the restricted client, in this process; and bare librbd in
this process: ``clone`` of the same template snapshot and ``resize``, on one open connection. All
three clone the same parent (the engine's cached 64 MiB template, ``_base~base@snap``) into the
same pool. Target (issue 16): faster than Nova (ratio of the medians < 1).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.peers import nova_vs_diskledger as peer
from benchmarks.timing import Report, Row

__all__ = [
    "DEFAULT_RBD_TRIALS",
    "DEFAULT_TRIALS",
    "NovaUnavailable",
    "nova_python",
    "run",
    "run_rbd",
]

DEFAULT_TRIALS = 40
WARMUP = 2
TARGET_RATIO = 0.10
BACKENDS = ("qcow2", "raw")
STEPS = ("create", "resize", "snapshot")
SIDES = ("diskledger", "nova", "bare")
REPO = Path(__file__).resolve().parent.parent
NOVA_VENV_SCRIPT = REPO / "scripts" / "nova-venv.sh"
NOVA_RBD_SCRIPT = Path(__file__).resolve().parent / "peers" / "nova_rbd.py"
DEFAULT_RBD_TRIALS = 40
MiB = 1 << 20
RBD_TEMPLATE_SIZE = 64 * MiB
RBD_CREATE_SIZE = 128 * MiB


class NovaUnavailable(RuntimeError):
    """Nova cannot run here: its venv cannot be made (no PyPI, no venv module) or a tool it calls
    is missing. A run of all benchmarks leaves the benchmark out; asked for by name, it fails."""


def nova_python() -> tuple[str, float]:
    """The Nova venv's interpreter (``NOVA_PY``, or ``var/nova-venv`` made or found by
    ``scripts/nova-venv.sh``) and the seconds getting it took. ``NovaUnavailable`` if it fails."""
    started = time.perf_counter()
    if os.environ.get("NOVA_PY"):
        return os.environ["NOVA_PY"], 0.0
    done = subprocess.run(
        [str(NOVA_VENV_SCRIPT)], capture_output=True, text=True, cwd=REPO, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise NovaUnavailable(f"Nova's venv cannot be made here: {last}")
    return done.stdout.strip().splitlines()[-1], time.perf_counter() - started


def run(trials: int = DEFAULT_TRIALS) -> Report:
    missing = [tool for tool in ("qemu-img", "e2label", "cp") if shutil.which(tool) is None]
    if missing:
        raise NovaUnavailable(f"Nova's image backend needs {', '.join(missing)}")
    python, venv_seconds = nova_python()
    # Nova's privsep daemon is started the way Nova starts it, as root (fork); otherwise its
    # entrypoints run in the worker itself, as Nova's own tests do (cheaper for Nova).
    privsep = "fork" if os.geteuid() == 0 else "inprocess"
    sides: list[str] = []
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-nova-") as tmp:
        try:
            measured = peer.measure(
                tmp,
                trials,
                warmup=WARMUP,
                backends=BACKENDS,
                privsep=privsep,
                log=sides.append,
                nova_py=python,
                diskledger_py=sys.executable,
            )
        except RuntimeError as exc:  # a worker died or reported an error: say why
            raise RuntimeError(f"{exc}\n{_tails(Path(tmp))}") from exc
    return _report(measured, trials, privsep, venv_seconds)


def _tails(tmp: Path) -> str:
    out = []
    for log in sorted(tmp.glob("*-worker.log")):
        text = log.read_text(errors="replace").strip()
        out.append(f"--- {log.name} (end) ---\n{text[-3000:]}")
    return "\n".join(out)


def _median_sum(steps: dict[str, list[float]]) -> float:
    return statistics.median(sum(t) for t in zip(*(steps[s] for s in STEPS), strict=True))


def _report(measured: dict, trials: int, privsep: str, venv_seconds: float) -> Report:
    samples = measured["samples"]
    rows: list[Row] = []
    ratios: dict[str, float] = {}
    for backend in BACKENDS:
        by_side = samples[backend]
        for step in (*STEPS, "sum"):
            if step == "sum":
                a, b, bare = (_median_sum(by_side[s]) for s in SIDES)
                ratios[backend] = a / b
                label = f"{backend}: sum of the three"
            else:
                a, b, bare = (statistics.median(by_side[s][step]) for s in SIDES)
                label = f"{backend}: {step}"
            rows.append(
                Row(label, f"{a * 1e3:.2f}", f"{b * 1e3:.2f}", f"{a / b:.3f} ({bare * 1e3:.2f})")
            )
    extra = peer.EXTRA
    internal = samples["qcow2"]["diskledger"].get(extra)
    internal_bare = samples["qcow2"]["bare"].get(extra)
    notes = [
        "sum = median of each trial's sum of the three steps; snapshot = a standalone copy "
        "(Nova snapshot_extract, diskledger Engine.export, bare qemu-img convert)",
        "qcow2 bare: qemu-img create -b / resize / convert; raw bare: cp --sparse=always + "
        "qemu-img resize, qemu-img resize, qemu-img convert",
        "Nova/bare of the sums: "
        + ", ".join(
            f"{b} {_median_sum(samples[b]['nova']) / _median_sum(samples[b]['bare']):.1f}x"
            for b in BACKENDS
        )
        + "; diskledger/bare: "
        + ", ".join(
            f"{b} {_median_sum(samples[b]['diskledger']) / _median_sum(samples[b]['bare']):.2f}"
            for b in BACKENDS
        ),
    ]
    if internal and internal_bare:
        notes.append(
            f"not in the sums: diskledger's internal qcow2 snapshot (Engine.snapshot) "
            f"{statistics.median(internal) * 1e3:.2f} ms, bare qemu-img snapshot -c "
            f"{statistics.median(internal_bare) * 1e3:.2f} ms; Nova's Qcow2 has none"
        )
    nova = measured["nova"]
    notes.append(
        f"Nova {nova.get('nova', '?')} (oslo.concurrency {nova.get('oslo.concurrency', '?')}, "
        f"oslo.privsep {nova.get('oslo.privsep', '?')}), python {nova.get('python', '?')}, "
        f"privsep {privsep}; venv ready in {venv_seconds:.1f} s (scripts/nova-venv.sh); "
        f"timed trials took {measured['elapsed']:.0f} s"
    )
    verdicts = ", ".join(f"{b} {ratios[b]:.3f}" for b in BACKENDS)
    return Report(
        title="Against Nova: create + resize + snapshot, qcow2 and raw",
        method=(
            f"{trials} trials per side and backend, interleaved (the three sides in all six "
            f"orders in turn, the two backends' order flipping every trial), after {WARMUP} "
            "warm-ups; medians in ms. A: diskledger Engine.create/resize/export (SQLite ledger, "
            "qcow2 and raw backends). B: Nova's libvirt imagebackend (Qcow2, Flat) unpatched: "
            "by_name + cache, by_name + resize_image, by_libvirt_path + snapshot_extract. "
            "In brackets: bare qemu-img (benchmarks/peers/nova_vs_diskledger.py)."
        ),
        columns=("diskledger ms (A)", "Nova ms (B)", "ratio A/B (bare ms)"),
        rows=rows,
        target=f"A/B of the sum <= {TARGET_RATIO:.2f} on qcow2 and raw (measured {verdicts})",
        met=all(r <= TARGET_RATIO for r in ratios.values()),
        notes=tuple(notes),
    )


def run_rbd(trials: int = DEFAULT_RBD_TRIALS) -> Report:
    """RBD create: diskledger vs Nova's ``Rbd`` vs bare librbd on a one-node cluster started here.
    Raises ``tests.support.ceph.CephUnavailable`` without the Ceph packages, ``NovaUnavailable``
    when Nova's venv cannot be made or cannot import the rados/rbd bindings."""
    from tests.support.ceph import CephCluster

    python, venv_seconds = nova_python()
    probe = subprocess.run(
        [python, "-c", "import rados, rbd"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise NovaUnavailable(
            "Nova's venv cannot import rados/rbd (Debian's python3-rados, python3-rbd; "
            "scripts/nova-venv.sh links them in when installed)"
        )
    cluster = CephCluster()
    try:
        started = time.perf_counter()
        cluster.start()
        up = time.perf_counter() - started
        with tempfile.TemporaryDirectory(prefix="diskledger-bench-nova-rbd-") as tmp:
            try:
                samples, info = _measure_rbd(cluster, Path(tmp), python, trials)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n{_tails(Path(tmp))}") from exc
    finally:
        cluster.stop()
    return _report_rbd(samples, info, trials, venv_seconds, up)


def _measure_rbd(
    cluster: Any, tmp: Path, python: str, trials: int
) -> tuple[dict[str, list[float]], dict[str, str]]:
    import itertools

    import rbd

    from diskledger.engine import Config, Engine
    from tests.support.ceph import USER

    source = tmp / "base.raw"
    with source.open("wb") as handle:
        handle.write(b"TEMPLATE".ljust(512, b"\0"))
        handle.truncate(RBD_TEMPLATE_SIZE)
    config = Config.load(root=tmp / "engine", environ=cluster.environ(), recover=False)
    samples: dict[str, list[float]] = {side: [] for side in SIDES}
    with Engine.open(config) as engine:
        engine.add_template("base", source, "raw")
        location = engine.template("base").location
        assert location is not None
        pool, _, parent = location.partition("/")
        backend: Any = engine.backend
        nova = peer.Worker(
            [
                python,
                str(NOVA_RBD_SCRIPT),
                "--worker",
                str(tmp / "nova"),
                "--conf",
                str(cluster.conf),
                "--user",
                USER,
                "--pool",
                pool,
                "--parent",
                parent,
                "--snap",
                "snap",
            ],
            str(tmp / "nova-rbd-worker.log"),
        )
        try:
            with backend.cluster.ioctx(pool) as ioctx:

                def through_engine(n: int, check: bool) -> float:
                    disk = f"bench/n{n + 1_000_000}"
                    t0 = time.perf_counter()
                    view = engine.create(disk, template="base", size=RBD_CREATE_SIZE)
                    took = time.perf_counter() - t0
                    if check:
                        assert view.size == RBD_CREATE_SIZE, view
                    engine.delete(disk)
                    return took

                def bare(n: int, check: bool) -> float:
                    name = f"bench~b{n + 1_000_000}"
                    t0 = time.perf_counter()
                    rbd.RBD().clone(ioctx, parent, "snap", ioctx, name)
                    with rbd.Image(ioctx, name) as image:
                        image.resize(RBD_CREATE_SIZE)
                    took = time.perf_counter() - t0
                    if check:
                        with rbd.Image(ioctx, name, read_only=True) as image:
                            assert image.size() == RBD_CREATE_SIZE, name
                    rbd.RBD().remove(ioctx, name)
                    return took

                def through_nova(n: int, check: bool) -> float:
                    return float(nova.trial("rbd", n, check)["create"])

                sides = {"diskledger": through_engine, "nova": through_nova, "bare": bare}
                for i in range(WARMUP):
                    for side in sides.values():
                        side(-1 - i, i == 0)
                orders = list(itertools.permutations(SIDES))
                for i in range(trials):
                    for name in orders[i % len(orders)]:
                        samples[name].append(sides[name](i, False))
        finally:
            nova.close()
        return samples, nova.info


def _report_rbd(
    samples: dict[str, list[float]],
    info: dict[str, str],
    trials: int,
    venv_seconds: float,
    up: float,
) -> Report:
    a, b, bare = (statistics.median(samples[s]) for s in SIDES)
    p90 = {s: statistics.quantiles(samples[s], n=10)[-1] for s in SIDES} if trials > 1 else None
    rows = [
        Row(
            "per disk, median",
            f"{a * 1e3:.2f}",
            f"{b * 1e3:.2f}",
            f"{a / b:.3f} ({bare * 1e3:.2f})",
        )
    ]
    if p90:
        rows.append(
            Row(
                "per disk, 90th percentile",
                f"{p90['diskledger'] * 1e3:.2f}",
                f"{p90['nova'] * 1e3:.2f}",
                f"{p90['diskledger'] / p90['nova']:.3f} ({p90['bare'] * 1e3:.2f})",
            )
        )
    ratio = a / b
    return Report(
        title="Against Nova: RBD create (clone of a cached template, grown to 128 MiB)",
        method=(
            f"{trials} disks per side, interleaved (the three sides in all six orders in turn), "
            f"after {WARMUP} warm-ups; one-node memstore cluster started here ({up:.1f} s); ms. "
            "A: Engine.create(disk, template, size) with the rbd backend (SQLite ledger, "
            "client.diskledger). B: Nova's Rbd backend as LibvirtDriver makes a root disk "
            "(by_name, exists, cache with clone_fallback_to_fetch: is_cloneable, clone, "
            "verify_base_size, resize; a fresh librados connection per RBDDriver call, as Nova "
            "does; Glance stubbed). In brackets: bare librbd clone + resize on one open "
            "connection (benchmarks/peers/nova_rbd.py)."
        ),
        columns=("diskledger ms (A)", "Nova Rbd ms (B)", "ratio A/B (bare ms)"),
        rows=rows,
        target=f"faster than Nova: A/B < 1 (measured {ratio:.3f})",
        met=ratio < 1,
        notes=(
            f"Nova {info.get('nova', '?')}, python {info.get('python', '?')}, rados/rbd from "
            f"Debian's packages ({info.get('rados', '?')}); venv ready in {venv_seconds:.1f} s",
            "all three clone the same parent snapshot into the same pool; each disk is removed "
            "after its trial, untimed",
        ),
    )
