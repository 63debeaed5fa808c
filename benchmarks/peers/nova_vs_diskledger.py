"""diskledger's Engine vs OpenStack Nova's libvirt image backend vs bare qemu-img, in one run:
create a disk from a cached 64 MiB template at 128 MiB, grow it to 256 MiB, snapshot it.

    python3 ../shared/peers/nova_vs_diskledger.py                 # 200 trials, qcow2 and raw
    python3 ../shared/peers/nova_vs_diskledger.py --trials 20 --backends qcow2 --no-trace

From the team's shared peer scripts (/work/shared/peers/, 2026-11-30), kept in the repository as
benchmarks/peers/ so a clean clone runs them: from the project root,
`scripts/nova-venv.sh && .venv/bin/python benchmarks/peers/nova_vs_diskledger.py --trials 20`;
the interpreters default to the repository's var/nova-venv and .venv whatever the working
directory; `benchmarks/nova.py` (`python -m benchmarks nova`) runs `measure` below.

Three sides, each long-lived (no interpreter start-up is timed), each timing its own steps with
`time.perf_counter` and removing its disk and export after each trial (untimed):
  nova       : nova_imagebackend.py --worker under var/nova-venv/bin/python (Nova 34.x,
               imagebackend unmodified; see that file for the set-up around it)
  diskledger : this file with --diskledger-worker under .venv/bin/python:
               Engine.open(Config.load(root=<tmp>/engine-<backend>, backend=..., environ={})),
               template "base" added from the same source file, one anchor disk kept in the
               instance directory (as benchmarks/engine_overhead.py)
  bare       : this process, the plain commands through subprocess.run (as engine_overhead.py)
All three write under one temporary directory ($TMPDIR), so they share a file system and its
fsync. Trials alternate the sides, the order cycling through all six permutations, and the two
backends, the order flipping each trial; 3 untimed warm-up trials per side and backend first (the
first checks every result with qemu-img info).

Steps. The snapshot Nova takes of a stopped qcow2 or raw disk is `Image.snapshot_extract`: a
standalone copy (`qemu-img convert`), which is what diskledger calls an export, so the compared
"snapshot" step is Engine.export(disk, target, <the disk's format>) for diskledger and
`qemu-img convert` for bare. For qcow2, diskledger's internal snapshot (Engine.snapshot; bare
`qemu-img snapshot -c`) is timed too, after the export, as an extra row Nova has nothing for.

  qcow2  create   Nova: by_name + cache(size=128M)   diskledger: Engine.create(size=128M)
                  bare: qemu-img create -f qcow2 -b <template> -F qcow2 <path> 134217728
         resize   Nova: by_name + resize_image(256M) diskledger: Engine.resize
                  bare: qemu-img resize
         snapshot Nova: by_libvirt_path + snapshot_extract(qcow2)
                  diskledger: Engine.export(qcow2)   bare: qemu-img convert -f qcow2 -O qcow2
  raw    create   Nova Flat: by_name + cache(size=128M) over a raw cached template
                  diskledger raw backend: Engine.create(size=128M) over a raw template
                  bare: cp --reflink=auto --sparse=always <template> <path>; qemu-img resize -f raw
         resize   as above, -f raw
         snapshot Nova: snapshot_extract(raw); diskledger: Engine.export(raw); bare: qemu-img
                  convert -f raw -O raw

Before the timed run (unless --no-trace) one trial of each side is traced in a separate process
(an audit hook for processes, file writes, renames, locks; the ledger appends; and, where strace is
installed, `strace -f` counting fsync/fdatasync and execve of the process and its children).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))  # benchmarks/peers -> the project root
try:  # imported as benchmarks.peers.nova_vs_diskledger (benchmarks/nova.py)
    from benchmarks.peers import nova_imagebackend as nib
except ImportError:  # run as a script: the file beside this one (stdlib only at import time)
    sys.path.insert(0, HERE)
    import nova_imagebackend as nib

NOVA_PY = os.environ.get("NOVA_PY", os.path.join(REPO, "var", "nova-venv", "bin", "python"))
DISKLEDGER_PY = os.environ.get("DISKLEDGER_PY", os.path.join(REPO, ".venv", "bin", "python"))
NOVA_SCRIPT = os.path.join(HERE, "nova_imagebackend.py")
THIS = os.path.abspath(__file__)

CREATE_SIZE, RESIZE_SIZE, TEMPLATE_SIZE = nib.CREATE_SIZE, nib.RESIZE_SIZE, nib.TEMPLATE_SIZE
BACKENDS = ("qcow2", "raw")
NOVA_BACKEND = {"qcow2": "qcow2", "raw": "flat"}
STEPS = ("create", "resize", "snapshot")
EXTRA = "internal-snapshot"
SIDES = ("nova", "diskledger", "bare")
INSTANCE = "bench"


# -- diskledger side (runs under the diskledger venv) ------------------------------------------


class DiskledgerSide:
    def __init__(
        self,
        root: str,
        templates: dict[str, str],
        backends=BACKENDS,
        internal_snapshot: bool = True,
    ) -> None:
        from diskledger.engine import Config, Engine

        self.root = os.path.abspath(root)
        self.internal_snapshot = internal_snapshot
        self.exports = os.path.join(self.root, "exports")
        os.makedirs(self.exports, exist_ok=True)
        self.engines = {}
        for backend in backends:
            config = Config.load(
                root=os.path.join(self.root, f"engine-{backend}"), backend=backend, environ={}
            )
            engine = Engine.open(config)
            engine.add_template(
                "base", templates[backend], "qcow2" if backend == "qcow2" else "raw"
            )
            # A disk that stays, so the instance directory does not come and go with every trial.
            engine.create(f"{INSTANCE}/anchor", template="base")
            self.engines[backend] = engine

    def trial(self, backend: str, n: int, check: bool = False, mark=None) -> dict[str, float]:
        engine = self.engines[backend]
        fmt = "qcow2" if backend == "qcow2" else "raw"
        disk = f"{INSTANCE}/e{n + 1_000_000}"
        target = os.path.join(self.exports, f"{backend}-e{n + 1_000_000}.{fmt}")
        mark = mark or (lambda step: None)
        out: dict[str, float] = {}
        mark("create")
        t0 = time.perf_counter()
        view = engine.create(disk, template="base", size=CREATE_SIZE)
        out["create"] = time.perf_counter() - t0
        if check:
            _check(view.location, fmt, CREATE_SIZE, backed=fmt == "qcow2")
        mark("resize")
        t0 = time.perf_counter()
        engine.resize(disk, RESIZE_SIZE)
        out["resize"] = time.perf_counter() - t0
        if check:
            _check(view.location, fmt, RESIZE_SIZE, backed=fmt == "qcow2")
        mark("snapshot")
        t0 = time.perf_counter()
        engine.export(disk, target, fmt)
        out["snapshot"] = time.perf_counter() - t0
        if check:
            _check(target, fmt, RESIZE_SIZE, backed=False)
        if backend == "qcow2" and self.internal_snapshot:
            mark(EXTRA)
            t0 = time.perf_counter()
            engine.snapshot(disk, "s1")
            out[EXTRA] = time.perf_counter() - t0
        mark("cleanup")
        engine.delete(disk)
        os.unlink(target)
        return out

    def describe(self) -> dict[str, str]:
        import diskledger

        package = os.path.dirname(os.path.dirname(os.path.abspath(diskledger.__file__)))
        commit = subprocess.run(
            ["git", "-C", package, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        return {"diskledger": f"{package} @ {commit or '?'}", "python": sys.version.split()[0]}

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


# -- bare side (runs here) ---------------------------------------------------------------------


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


class BareSide:
    def __init__(self, root: str, templates: dict[str, str]) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.templates = {}
        for backend, source in templates.items():
            copy = os.path.join(self.root, f"template.{'qcow2' if backend == 'qcow2' else 'raw'}")
            subprocess.run(["cp", "--sparse=always", source, copy], check=True)
            self.templates[backend] = copy

    def trial(self, backend: str, n: int, check: bool = False) -> dict[str, float]:
        fmt = "qcow2" if backend == "qcow2" else "raw"
        path = os.path.join(self.root, f"d{n + 1_000_000}.{fmt}")
        target = os.path.join(self.root, f"x{n + 1_000_000}.{fmt}")
        template = self.templates[backend]
        out: dict[str, float] = {}
        t0 = time.perf_counter()
        if fmt == "qcow2":
            qemu_img("create", "-f", "qcow2", "-b", template, "-F", "qcow2", path, str(CREATE_SIZE))
        else:
            subprocess.run(
                ["cp", "--reflink=auto", "--sparse=always", template, path],
                check=True,
                capture_output=True,
            )
            qemu_img("resize", "-f", "raw", path, str(CREATE_SIZE))
        out["create"] = time.perf_counter() - t0
        if check:
            _check(path, fmt, CREATE_SIZE, backed=fmt == "qcow2")
        t0 = time.perf_counter()
        qemu_img("resize", "-f", fmt, path, str(RESIZE_SIZE))
        out["resize"] = time.perf_counter() - t0
        if check:
            _check(path, fmt, RESIZE_SIZE, backed=fmt == "qcow2")
        t0 = time.perf_counter()
        qemu_img("convert", "-f", fmt, "-O", fmt, path, target)
        out["snapshot"] = time.perf_counter() - t0
        if check:
            _check(target, fmt, RESIZE_SIZE, backed=False)
        if fmt == "qcow2":
            t0 = time.perf_counter()
            qemu_img("snapshot", "--image-opts", "-c", "s1", f"driver=qcow2,file.filename={path}")
            out[EXTRA] = time.perf_counter() - t0
        os.unlink(path)
        os.unlink(target)
        return out

    def close(self) -> None:
        pass


def _check(path: str, fmt: str, size: int, *, backed: bool) -> None:
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", path],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert info["format"] == fmt, (path, info["format"], fmt)
    assert info["virtual-size"] == size, (path, info["virtual-size"], size)
    assert ("backing-filename" in info) == backed, (path, info.get("backing-filename"))


# -- workers -----------------------------------------------------------------------------------


class Worker:
    """A long-lived side in another interpreter, one JSON object per line each way."""

    def __init__(self, argv: list[str], log: str) -> None:
        self.log = open(log, "w")  # noqa: SIM115  (open for the worker's life; closed in close)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self.info = self._read()["ready"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(
                f"worker {self.proc.args[:2]} died (rc {self.proc.returncode}); see {self.log.name}"
            )
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker error: {reply['error']}")
        return reply

    def trial(self, backend: str, n: int, check: bool = False) -> dict[str, float]:
        self.proc.stdin.write(
            json.dumps({"op": "trial", "backend": backend, "n": n, "check": check}) + "\n"
        )
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


class NovaWorker(Worker):
    def trial(self, backend, n, check=False):
        return super().trial(NOVA_BACKEND[backend], n, check)


def serve_diskledger(side: DiskledgerSide, out) -> None:
    out.write(json.dumps({"ready": side.describe()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        try:
            reply = side.trial(request["backend"], request["n"], request.get("check", False))
        except Exception as exc:  # report, then let the orchestrator stop
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
    side.close()


# -- tracing: what one trial does, per step ----------------------------------------------------


def diskledger_trace(root: str, templates: dict[str, str], backend: str) -> dict:
    side = DiskledgerSide(root, templates, backends=(backend,))
    for i in range(2):
        side.trial(backend, -1 - i, check=i == 0)
    engine = side.engines[backend]

    def run(mark, emit):
        original = engine.store.append

        def append(stream, version, events, *a, **k):
            emit("ledger-append", " + ".join(e.type for e in events))
            return original(stream, version, events, *a, **k)

        engine.store.append = append
        try:
            side.trial(backend, 0, mark=mark)
        finally:
            del engine.store.append

    steps = nib.trace(side.root, run, loggers=("diskledger",))
    side.close()
    return steps


STRACE_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)$")


def traced(argv: list[str], workdir: str, name: str) -> tuple[dict, dict]:
    """Run a --trace process (under strace -f when there is one); its JSON and, per step, the
    count of fsync/fdatasync and execve in the process and its children."""
    strace = shutil.which("strace")
    log = os.path.join(workdir, f"{name}.strace")
    if strace:
        argv = [strace, "-f", "-qq", "-o", log, "-e", "trace=fsync,fdatasync,execve,statfs", *argv]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"trace {name} failed: {done.stderr[-3000:]}")
    steps = json.loads(done.stdout.strip().splitlines()[-1])
    counts: dict[str, dict[str, int]] = {}
    if strace:
        step = None
        with open(log) as f:
            for line in f:
                m = STRACE_LINE.match(line)
                if not m:
                    continue
                call, rest = m.group(2), m.group(3)
                if call == "statfs":
                    mark = re.search(r'"/\.trace-mark-([\w-]+)"', rest)
                    if mark:
                        step = mark.group(1)
                    continue
                if step is None or step == "end":
                    continue
                bucket = counts.setdefault(step, {"fsync+fdatasync": 0, "execve": 0})
                if call in ("fsync", "fdatasync"):
                    bucket["fsync+fdatasync"] += 1
                elif call == "execve" and "= 0" in rest:
                    bucket["execve"] += 1
    return steps, counts


def summarize_trace(name: str, steps: dict, counts: dict) -> list[str]:
    lines = [f"-- {name}"]
    for step, events in steps.items():
        if step in ("cleanup", "end"):
            continue
        kinds: dict[str, list[str]] = {}
        for kind, detail in events:
            kinds.setdefault(kind, []).append(detail)
        execs = [_short_cmd(d) for d in kinds.get("exec", [])]
        writes = sorted({os.path.basename(d) for d in kinds.get("open-write", [])})
        locks = len(kinds.get("fcntl.lockf", [])) + len(kinds.get("fcntl.flock", []))
        internal_locks = sum(
            1
            for d in kinds.get("log", [])
            if d.startswith("Acquiring lock") and "external" not in d
        )
        c = counts.get(step, {})
        parts = [f"{len(execs)} processes [{'; '.join(execs)}]"]
        if "execve" in c:
            parts.append(f"execve incl. children {c['execve']}")
        if "fsync+fdatasync" in c:
            parts.append(f"fsync/fdatasync {c['fsync+fdatasync']}")
        if internal_locks:
            parts.append(f"lockutils locks taken {internal_locks}")
        if locks:
            parts.append(f"fcntl lock/unlock calls {locks}")
        if kinds.get("privsep"):
            parts.append(f"privsep calls {len(kinds['privsep'])} ({', '.join(kinds['privsep'])})")
        if kinds.get("ledger-append"):
            parts.append(
                f"ledger appends {len(kinds['ledger-append'])} "
                f"({'; '.join(kinds['ledger-append'])})"
            )
        if writes:
            parts.append(f"files opened for writing: {', '.join(writes)}")
        if kinds.get("os.rename"):
            parts.append(f"renames {len(kinds['os.rename'])}")
        lines.append(f"   {step}: " + "; ".join(parts))
    return lines


def _short_cmd(cmd: str) -> str:
    words = cmd.split()
    if "oslo_concurrency.prlimit" in cmd:
        i = words.index("qemu-img")
        return "prlimit-python " + " ".join(words[i : i + 2])
    if words and words[0] == "env":
        i = words.index("qemu-img")
        return "env " + " ".join(words[i : i + 2])
    if words and words[0].endswith("prlimit"):
        i = words.index("--")
        return "prlimit " + " ".join(words[i + 1 : i + 3])
    return " ".join(os.path.basename(w) if w.startswith("/") else w for w in words[:2])


# -- the run -----------------------------------------------------------------------------------


def machine(tmp: str) -> str:
    df = subprocess.run(["df", "-T", tmp], capture_output=True, text=True).stdout.splitlines()[-1]
    qemu = subprocess.run(
        ["qemu-img", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    return (
        f"cpus {os.cpu_count()}; kernel {platform.release()}; temp dir {tmp} "
        f"({df.split()[1]}); {qemu}"
    )


def make_templates(tmp: str) -> tuple[dict[str, str], list[str]]:
    """The qcow2 template and its raw conversion, and the arguments that hand them to a worker."""
    made = nib.make_templates(tmp)
    templates = {"qcow2": made["qcow2"], "raw": made["flat"]}
    return templates, ["--template-qcow2", templates["qcow2"], "--template-raw", templates["raw"]]


def trace_all(tmp: str, backends: tuple[str, ...], privsep: str, resize_via: str) -> None:
    """Print what one trial of each side runs, per step (traced in separate processes)."""
    _, tpl_args = make_templates(tmp)
    print("\n== What one trial runs, per step (traced in separate processes) ==")
    for backend in backends:
        trace_dir = os.path.join(tmp, f"trace-{backend}")
        os.makedirs(trace_dir)
        n_steps, n_counts = traced(
            [
                NOVA_PY,
                NOVA_SCRIPT,
                "--trace",
                "--warmup",
                "2",
                "--backend",
                NOVA_BACKEND[backend],
                "--privsep",
                privsep,
                "--resize-via",
                resize_via,
                *tpl_args,
            ],
            trace_dir,
            f"nova-{backend}",
        )
        d_steps, d_counts = traced(
            [
                DISKLEDGER_PY,
                THIS,
                "--diskledger-trace",
                backend,
                "--root",
                os.path.join(trace_dir, "diskledger"),
                *tpl_args,
            ],
            trace_dir,
            f"diskledger-{backend}",
        )
        n_steps = n_steps["steps"]
        for line in summarize_trace(f"Nova {NOVA_BACKEND[backend]}", n_steps, n_counts):
            print(line)
        for line in summarize_trace(f"diskledger {backend}", d_steps, d_counts):
            print(line)
        shutil.rmtree(trace_dir, ignore_errors=True)


def measure(
    tmp: str,
    trials: int,
    *,
    warmup: int = 3,
    backends: tuple[str, ...] = BACKENDS,
    privsep: str = "fork",
    resize_via: str = "resize_image",
    internal_snapshot: bool = True,
    log=print,
    nova_py: str | None = None,
    diskledger_py: str | None = None,
) -> dict:
    """The three sides under ``tmp``, interleaved: ``warmup`` untimed trials per side and backend
    (the first checked with qemu-img info), then ``trials``. Returns the samples in seconds,
    ``samples[backend][side][step]`` in trial order, with each side's description and the
    seconds the timed trials took. The sides are closed before it returns. ``nova_py`` and
    ``diskledger_py``: the workers' interpreters (default NOVA_PY, DISKLEDGER_PY)."""
    nova_py, diskledger_py = nova_py or NOVA_PY, diskledger_py or DISKLEDGER_PY
    sides: dict = {}
    try:
        templates, tpl_args = make_templates(tmp)
        sides["nova"] = NovaWorker(
            [
                nova_py,
                NOVA_SCRIPT,
                "--worker",
                os.path.join(tmp, "nova"),
                "--privsep",
                privsep,
                "--resize-via",
                resize_via,
                *tpl_args,
            ],
            os.path.join(tmp, "nova-worker.log"),
        )
        sides["diskledger"] = Worker(
            [
                diskledger_py,
                THIS,
                "--diskledger-worker",
                "--root",
                os.path.join(tmp, "diskledger"),
                "--backends",
                *backends,
                *tpl_args,
            ]
            + ([] if internal_snapshot else ["--no-internal-snapshot"]),
            os.path.join(tmp, "diskledger-worker.log"),
        )
        sides["bare"] = BareSide(os.path.join(tmp, "direct"), templates)
        log(f"nova side: {sides['nova'].info}")
        log(f"diskledger side: {sides['diskledger'].info}")

        for backend in backends:
            for i in range(warmup):
                for name in SIDES:
                    sides[name].trial(backend, -1 - i, check=i == 0)
        samples: dict = {b: {s: {} for s in SIDES} for b in backends}
        orders = list(itertools.permutations(SIDES))
        started = time.monotonic()
        for i in range(trials):
            for backend in backends if i % 2 == 0 else tuple(reversed(backends)):
                for name in orders[i % len(orders)]:
                    for step, seconds in sides[name].trial(backend, i).items():
                        samples[backend][name].setdefault(step, []).append(seconds)
        return {
            "samples": samples,
            "nova": sides["nova"].info,
            "diskledger": sides["diskledger"].info,
            "elapsed": time.monotonic() - started,
        }
    finally:
        for side in sides.values():
            try:
                side.close()
            except Exception as exc:  # keep closing the others
                print(f"closing a side: {exc}", file=sys.stderr)


def run(args) -> None:
    backends = tuple(args.backends)
    tmp = tempfile.mkdtemp(prefix="nova-vs-diskledger-")
    try:
        print(f"machine: {machine(tmp)}")
        if args.trace:
            trace_all(tmp, backends, args.privsep, args.resize_via)
        measured = measure(
            tmp,
            args.trials,
            warmup=args.warmup,
            backends=backends,
            privsep=args.privsep,
            resize_via=args.resize_via,
            internal_snapshot=args.internal_snapshot,
        )
        samples = measured["samples"]
        report(samples, args, measured["elapsed"])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "machine": machine(tmp),
                        "nova": measured["nova"],
                        "diskledger": measured["diskledger"],
                        "trials": args.trials,
                        "samples_seconds": samples,
                    },
                    f,
                )
            print(f"\nsamples: {args.json}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(samples: dict, args, elapsed: float) -> None:
    med = statistics.median

    def p90(v):
        return statistics.quantiles(v, n=10)[-1] if len(v) > 1 else v[0]

    print(
        f"\n{args.trials} trials per side and backend, interleaved, after {args.warmup} warm-up; "
        f"{elapsed:.0f} s. Medians in ms (90th percentile in brackets)."
    )
    for backend, by_side in samples.items():
        title = {
            "qcow2": "qcow2: Nova Qcow2 / diskledger qcow2 backend / bare qemu-img",
            "raw": "raw: Nova Flat / diskledger raw backend / bare cp + qemu-img",
        }[backend]
        print(f"\n== {title} ==")
        header = (
            f"{'step':<18}{'Nova':>16}{'diskledger':>16}{'bare':>16}"
            f"{'dl/Nova':>10}{'Nova/bare':>11}{'dl/bare':>9}"
        )
        print(header)
        print("-" * len(header))
        rows = [*STEPS, "sum of the three"] + ([EXTRA] if EXTRA in by_side["bare"] else [])
        for step in rows:
            cells, medians = [], {}
            for side in SIDES:
                if step == "sum of the three":
                    values = [sum(t) for t in zip(*(by_side[side][s] for s in STEPS), strict=True)]
                else:
                    values = by_side[side].get(step)
                if values:
                    medians[side] = med(values)
                    cells.append(f"{med(values) * 1e3:8.2f} ({p90(values) * 1e3:6.2f})")
                else:
                    cells.append(f"{'n/a':>15}")

            def ratio(a, b, medians=medians):
                return f"{medians[a] / medians[b]:.3f}" if a in medians and b in medians else "n/a"

            print(
                f"{step:<18}"
                + "".join(f"{c:>16}" for c in cells)
                + f"{ratio('diskledger', 'nova'):>10}{ratio('nova', 'bare'):>11}"
                f"{ratio('diskledger', 'bare'):>9}"
            )
    print(
        "\nnotes: sum = median of each trial's sum of the three steps; snapshot = a standalone "
        "copy (Nova snapshot_extract, diskledger Engine.export, bare qemu-img convert); "
        f"{EXTRA} = diskledger Engine.snapshot / qemu-img snapshot -c (Nova's Qcow2 has none); "
        f"Nova resize via {args.resize_via}; privsep {args.privsep}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--privsep", choices=("fork", "inprocess"), default="fork")
    parser.add_argument("--resize-via", choices=("resize_image", "cache"), default="resize_image")
    parser.add_argument("--no-trace", dest="trace", action="store_false")
    parser.add_argument("--no-internal-snapshot", dest="internal_snapshot", action="store_false")
    parser.add_argument("--json", help="write every sample here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    # internal: the diskledger side, run under the diskledger venv
    parser.add_argument("--diskledger-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--diskledger-trace", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--template-qcow2", help=argparse.SUPPRESS)
    parser.add_argument("--template-raw", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.diskledger_worker or args.diskledger_trace:
        templates = {"qcow2": args.template_qcow2, "raw": args.template_raw}
        if args.diskledger_trace:
            steps = diskledger_trace(args.root, templates, args.diskledger_trace)
            print(json.dumps(steps))
            return
        out = nib.protocol_stdout()
        serve_diskledger(
            DiskledgerSide(
                args.root, templates, tuple(args.backends), internal_snapshot=args.internal_snapshot
            ),
            out,
        )
        return
    run(args)


if __name__ == "__main__":
    main()
