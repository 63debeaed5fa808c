"""Boot storm: ``DISKS`` disks created from one cached template at once, by ``THREADS`` threads
sharing one ``Engine`` and by ``PROCESSES`` processes each with its own, vs the same number of
bare creates run with the same parallelism.

Per backend (qcow2 always; rbd when Ceph is installed, on a one-node cluster the benchmark starts
and stops, ``tests.support.ceph.CephCluster``), in one temporary directory, with one SQLite ledger:

- qcow2, A: ``Engine.create("storm/<n>", template="base")`` (a qcow2 overlay on a cached 64 MiB
  qcow2 template); B: ``qemu-img create -f qcow2 -b <template> -F qcow2 <file>``, the template's
  cached file as backing, one ``subprocess.run`` per disk.
- rbd, A: the same ``Engine.create`` with the rbd backend (a clone of the cached template's
  protected snapshot); B: ``rbd.RBD().clone`` of that snapshot, through one librados connection
  per process (librbd releases the GIL, so threads of one process run clones side by side).

Two shapes, each a side A and a side B:

- threads: one process, ``THREADS`` threads taking disk numbers from one shared counter;
- processes: ``PROCESSES`` worker processes (``python -m benchmarks.boot_storm --worker``), each
  opening its own ``Engine`` on the same root and ledger (or, for B, its own cluster connection),
  each making ``DISKS / PROCESSES`` disks with one thread. Start-up (interpreter, imports,
  ``Engine.open``) is not timed: the clock starts when every worker has said it is ready and is
  told to go, and stops when the last one has finished.

What is timed is the wall time of all ``DISKS`` creates. Between two timed runs the disks are
removed (``Engine.delete`` / unlink / ``rbd remove``), untimed. Each (backend, shape) runs
``ROUNDS`` times with the order of the sides flipping; the figure is the median of the wall times.
**Target: A / B ≤ 1.10** for every backend and shape (issue 16).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.timing import Report, Row

__all__ = ["DISKS", "PROCESSES", "ROUNDS", "TARGET", "THREADS", "run"]

DISKS = 400
THREADS = 8
PROCESSES = 4
ROUNDS = 3
TARGET = 1.10
MiB = 1 << 20
TEMPLATE_SIZE = 64 * MiB
ROOT = Path(__file__).resolve().parent.parent


def run(disks: int = DISKS, rounds: int = ROUNDS) -> Report:
    rows: list[Row] = []
    ratios: list[float] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-storm-") as tmp:
        _storm("qcow2", Path(tmp), {}, disks, rounds, rows, ratios)
    if shutil.which("ceph-mon") is None:
        notes.append("rbd: left out, Ceph is not installed (scripts/bootstrap.sh --ceph)")
    else:
        from tests.support.ceph import CephCluster

        cluster = CephCluster()
        try:
            cluster.start()
            with tempfile.TemporaryDirectory(prefix="diskledger-bench-storm-") as tmp:
                _storm("rbd", Path(tmp), cluster.environ(), disks, rounds, rows, ratios)
        finally:
            cluster.stop()
    notes.append(
        f"start-up of a worker process (interpreter, imports, Engine.open) is not timed; "
        f"{rounds} rounds per backend and shape, sides in flipping order; median wall times"
    )
    worst = max(ratios)
    return Report(
        title=f"Boot storm: {disks} disks from one cached template, at once",
        method=(
            f"{disks} creates per side: {THREADS} threads sharing one Engine, or {PROCESSES} "
            "processes each with its own Engine on the same SQLite ledger (A), vs as many bare "
            "creates with the same parallelism (B: qemu-img create of an overlay, or a librbd "
            "clone of the template's snapshot); wall time of all of them, in seconds."
        ),
        columns=("engine s (A)", "bare s (B)", "ratio A/B"),
        rows=rows,
        target=f"every ratio <= {TARGET} (worst {worst:.3f})",
        met=worst <= TARGET,
        notes=tuple(notes),
    )


def _storm(
    backend: str,
    tmp: Path,
    environ: dict[str, str],
    disks: int,
    rounds: int,
    rows: list[Row],
    ratios: list[float],
) -> None:
    template = _template(tmp, backend)
    setup = {"root": str(tmp / "engine"), "backend": backend, "environ": environ}
    _add_template(setup, template)
    for shape in ("threads", "processes"):
        times: dict[str, list[float]] = {"engine": [], "bare": []}
        for i in range(rounds):
            sides = ["engine", "bare"] if i % 2 == 0 else ["bare", "engine"]
            for side in sides:
                times[side].append(_timed(setup, tmp, side, shape, disks))
                _clean(setup, tmp, side, disks)
        a, b = statistics.median(times["engine"]), statistics.median(times["bare"])
        ratios.append(a / b)
        parallelism = f"{THREADS} threads" if shape == "threads" else f"{PROCESSES} processes"
        rows.append(Row(f"{backend}, {parallelism}", f"{a:.2f}", f"{b:.2f}", f"{a / b:.3f}"))


def _template(tmp: Path, backend: str) -> Path:
    if backend == "qcow2":
        path = tmp / "base.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(TEMPLATE_SIZE)], check=True
        )
        return path
    path = tmp / "base.raw"
    with path.open("wb") as handle:
        handle.write(b"TEMPLATE".ljust(512, b"\0"))
        handle.truncate(TEMPLATE_SIZE)
    return path


@contextmanager
def _engine(setup: dict[str, Any]) -> Iterator[Any]:
    from diskledger.engine import Config, Engine

    config = Config.load(
        root=setup["root"], backend=setup["backend"], environ=setup["environ"], recover=False
    )
    with Engine.open(config) as engine:
        yield engine


def _add_template(setup: dict[str, Any], source: Path) -> None:
    with _engine(setup) as engine:
        engine.add_template("base", source, "qcow2" if source.suffix == ".qcow2" else "raw")
        location = engine.template("base").location
        assert location is not None
        setup["template"] = location


def _timed(setup: dict[str, Any], tmp: Path, side: str, shape: str, disks: int) -> float:
    if shape == "threads":
        with _creator(setup, tmp, side) as create:
            return _in_threads(create, range(disks), THREADS)
    return _in_processes(setup, tmp, side, disks)


def _in_threads(create: Callable[[int], None], numbers: range, threads: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(create, n) for n in numbers]:
            future.result()
    return time.perf_counter() - started


@contextmanager
def _creator(setup: dict[str, Any], tmp: Path, side: str) -> Iterator[Callable[[int], None]]:
    """One disk's create for ``side``, made once per process (the engine or the connection)."""
    if side == "engine":
        with _engine(setup) as engine:
            yield lambda n: engine.create(f"storm/{n}", template="base")
        return
    if setup["backend"] == "qcow2":
        target = tmp / "bare"
        target.mkdir(exist_ok=True)
        base = setup["template"]

        command = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2"]

        def qemu_img(n: int) -> None:
            subprocess.run([*command, str(target / f"{n}.qcow2")], check=True)

        yield qemu_img
        return
    import rbd

    with _engine(setup) as engine:  # the engine's own librados connection, as rbd_clone.py
        pool, _, parent = setup["template"].partition("/")
        with engine.backend.cluster.ioctx(pool) as ioctx:
            yield lambda n: rbd.RBD().clone(ioctx, parent, "snap", ioctx, f"storm~bare{n}")


def _in_processes(setup: dict[str, Any], tmp: Path, side: str, disks: int) -> float:
    share = -(-disks // PROCESSES)
    workers = []
    for w in range(PROCESSES):
        numbers = list(range(w * share, min(disks, (w + 1) * share)))
        job = {"setup": setup, "tmp": str(tmp), "side": side, "numbers": numbers}
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.boot_storm", "--worker", json.dumps(job)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a boot-storm worker did not start (exit {worker.wait()})")
        started = time.perf_counter()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "done":
                raise RuntimeError(f"a boot-storm worker failed (exit {worker.wait()})")
        elapsed = time.perf_counter() - started
    finally:
        for worker in workers:
            if worker.poll() is None:
                assert worker.stdin is not None
                worker.stdin.close()
                worker.wait(timeout=60)
    return elapsed


def _clean(setup: dict[str, Any], tmp: Path, side: str, disks: int) -> None:
    if side == "engine":
        with _engine(setup) as engine:
            for n in range(disks):
                engine.delete(f"storm/{n}")
        return
    if setup["backend"] == "qcow2":
        shutil.rmtree(tmp / "bare", ignore_errors=True)
        return
    import rbd

    with _engine(setup) as engine:
        pool = setup["template"].partition("/")[0]
        with engine.backend.cluster.ioctx(pool) as ioctx:
            for n in range(disks):
                rbd.RBD().remove(ioctx, f"storm~bare{n}")


def _worker(job: dict[str, Any]) -> None:
    """One process of the processes shape: set up, say ready, wait for go, create, say done."""
    with _creator(job["setup"], Path(job["tmp"]), job["side"]) as create:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        for n in job["numbers"]:
            create(n)
        print("done", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.boot_storm")
    parser.add_argument("--worker", required=True, help="(internal) one worker's job, as JSON")
    _worker(json.loads(parser.parse_args().worker))


if __name__ == "__main__":
    main()
