"""Peer measurement: OpenStack Nova's own libvirt image backend (nova/virt/libvirt/imagebackend.py,
the `nova` package from PyPI, 34.x), unmodified, doing the job diskledger's Engine does: a VM disk
made from a cached template, grown, and snapshotted. Run it with var/nova-venv/bin/python, made
with the interpreter diskledger's venv uses (Debian's Python 3.11.2; it matters: every qemu-img info
Nova runs starts a Python):
`python3 -m venv var/nova-venv && var/nova-venv/bin/pip install 'nova==34.*'` (34.0.0).
Needs root for the privsep daemon (see below), qemu-img, e2label.

From the team's shared peer scripts (/work/shared/peers/, 2026-11-30), kept in the repository as
benchmarks/peers/ (var/nova-venv is made by scripts/nova-venv.sh; from the project root:
`var/nova-venv/bin/python benchmarks/peers/nova_imagebackend.py --trials 20`).

    var/nova-venv/bin/python nova_imagebackend.py                  # 200 trials, qcow2 and flat
    var/nova-venv/bin/python nova_imagebackend.py --trials 20 --backend qcow2
    var/nova-venv/bin/python nova_imagebackend.py --trace          # what one trial runs, per step
    var/nova-venv/bin/python nova_imagebackend.py --decompose 60 --backend qcow2 # parts of a create
    var/nova-venv/bin/python nova_imagebackend.py --worker ROOT ... # nova_vs_diskledger's worker

What is real Nova here: `imagebackend.Backend(CONF.use_cow_images).by_name(...)` /
`.by_libvirt_path(...)`, `Image.cache(fetch_func, filename, size, image_id=...)` (what
`LibvirtDriver._try_fetch_image_cache` calls when it builds a root disk), `Qcow2.create_image` /
`Flat.create_image` with their oslo.concurrency external file locks under
`<instances_path>/locks`, the base-image safety inspection (`format_inspector`), `utime` of the
cached base through privsep, `verify_base_size`, `disk.info` read/written under its lock,
`libvirt_utils.create_image` (`qemu-img create -o backing_file=..,backing_fmt=..,cluster_size=..`),
`Image.resize_image` -> `nova.virt.disk.api.extend` (qemu-img info + qemu-img resize; for raw also
`e2label`), `Image.snapshot_extract` -> `images.convert_image` (`qemu-img convert -t none`, after a
direct-I/O probe of instances_path), and every `qemu-img info` through
`processutils.execute(prlimit=QEMU_IMG_LIMITS)` (a `python -m oslo_concurrency.prlimit` wrapper).

Nothing in Nova is patched. Set up around it:
- privsep: the real oslo.privsep daemon for `nova.privsep.sys_admin_pctxt`, started with
  oslo.privsep's own `Method.FORK` (a forked root daemon keeping the context's capabilities, calls
  over its socket) instead of `sudo nova-rootwrap ... privsep-helper` (no rootwrap config on this
  machine). Needs root.
  `--privsep inprocess` instead runs entrypoints in this process (`set_client_mode(False)`, what
  Nova's own `PrivsepFixture` does in its tests).
- config: `CONF([])` with no config file, then set_override of instances_path, image_cache
  subdirectory, use_cow_images=True, force_raw_images=False, preallocate_images=none,
  libvirt.images_type=qcow2, oslo_concurrency.lock_path. No eventlet monkey patching (threads).
- the instance is a real `nova.objects.Instance` holding only a uuid (imagebackend reads only that).
- fetch_func stands in for Glance: it copies a prepared local template (`cp --sparse=always` to
  `<target>.part`, rename), once per backend, during warm-up.
- the Flat (raw) backend gets a raw template in its cache, as Nova's default force_raw_images=True
  would leave it; Flat with a qcow2 base and force_raw_images=False would `qemu-img resize -f raw`
  a qcow2 file.

Per trial (timed per step, `time.perf_counter`):
  create   : backend.by_name(instance, "disk") + image.cache(fetch_func, filename=sha1(image_id),
             size=128 MiB, image_id=..., context=None, trusted_certs=None)  [64 MiB cached template]
  resize   : backend.by_name(instance, "disk") + image.resize_image(256 MiB)
             (--resize-via cache: image.cache(..., size=256 MiB), the finish_migration path)
  snapshot : backend.by_libvirt_path(instance, path)
             + image.snapshot_extract(<snapshots_dir>/<uuid>, fmt): Nova's cold snapshot
             (LibvirtDriver.snapshot -> snapshot_extract; Qcow2 has no internal snapshot API in
             imagebackend)
Untimed after each trial: the export, the disk and the instance's disk.info are removed (the
instance directory stays, as diskledger's engine benchmark keeps one disk in its instance
directory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings

MiB = 1 << 20
TEMPLATE_SIZE = 64 * MiB
CREATE_SIZE = 128 * MiB
RESIZE_SIZE = 256 * MiB
STEPS = ("create", "resize", "snapshot")
BACKENDS = ("qcow2", "flat")
DISK = "disk"  # the root disk's name in Nova
IMAGE_IDS = {"qcow2": "bench-template-qcow2", "flat": "bench-template-raw"}


def make_templates(directory: str) -> dict[str, str]:
    """The 64 MiB templates: an empty qcow2 (as diskledger's engine benchmark makes) and its raw
    conversion (what Nova's cache would hold with force_raw_images=True)."""
    qcow2 = os.path.join(directory, "template-source.qcow2")
    raw = os.path.join(directory, "template-source.raw")
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", qcow2, str(TEMPLATE_SIZE)], check=True
    )
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow2, raw], check=True)
    return {"qcow2": qcow2, "flat": raw}


class NovaSide:
    """Nova's imagebackend, configured once, running trials on one instance per backend."""

    def __init__(
        self,
        root: str,
        templates: dict[str, str],
        *,
        privsep: str = "fork",
        resize_via: str = "resize_image",
    ) -> None:
        warnings.simplefilter("ignore")  # eventlet's deprecation warning on import
        self.root = os.path.abspath(root)
        self.templates = templates
        self.resize_via = resize_via
        instances = os.path.join(self.root, "instances")
        os.makedirs(instances, exist_ok=True)

        import nova.conf
        from oslo_concurrency import lockutils  # registers [oslo_concurrency] on the global CONF

        conf = nova.conf.CONF
        assert lockutils.CONF is conf
        conf(args=[], project="nova", default_config_files=[], default_config_dirs=[])
        conf.set_override("instances_path", instances)
        conf.set_override("use_cow_images", True)
        conf.set_override("force_raw_images", False)
        conf.set_override("preallocate_images", "none")
        conf.set_override("subdirectory_name", "_base", group="image_cache")
        conf.set_override("images_type", "qcow2", group="libvirt")
        conf.set_override("lock_path", os.path.join(self.root, "locks"), group="oslo_concurrency")
        self.conf = conf

        import nova.privsep
        from oslo_privsep import priv_context

        self.pctxt = nova.privsep.sys_admin_pctxt
        if privsep == "fork":
            if os.geteuid() != 0:
                raise SystemExit("--privsep fork needs root (or use --privsep inprocess)")
            self.pctxt.start(method=priv_context.Method.FORK)
        elif privsep == "inprocess":
            self.pctxt.set_client_mode(False)
        else:
            raise SystemExit(f"unknown privsep mode {privsep!r}")
        self.privsep = privsep

        from nova import objects
        from nova.virt.libvirt import imagebackend, imagecache

        objects.register_all()
        self.imagebackend = imagebackend
        self.backend = imagebackend.Backend(conf.use_cow_images)  # as LibvirtDriver.__init__
        self.instances = {b: objects.Instance(uuid=str(uuid.uuid4())) for b in BACKENDS}
        self.filenames = {b: imagecache.get_cache_fname(IMAGE_IDS[b]) for b in BACKENDS}
        self.snapshots_dir = conf.libvirt.snapshots_directory  # $instances_path/snapshots
        os.makedirs(self.snapshots_dir, exist_ok=True)  # LibvirtDriver.snapshot: ensure_tree
        from nova.virt.libvirt import utils as libvirt_utils

        for instance in self.instances.values():  # the instance directory stays for the run
            os.makedirs(libvirt_utils.get_instance_path(instance), exist_ok=True)
        self.fetches = 0

    def fetch_func(self, backend: str):
        """Stands in for libvirt_utils.fetch_image (Glance download to `.part`, then rename)."""
        source = self.templates[backend]

        def fetch(target, context=None, image_id=None, trusted_certs=None):
            self.fetches += 1
            part = f"{target}.part"
            subprocess.run(["cp", "--sparse=always", source, part], check=True)
            os.rename(part, target)

        return fetch

    def image_type(self, backend: str) -> str:
        return "qcow2" if backend == "qcow2" else "flat"

    def out_format(self, backend: str) -> str:
        # LibvirtDriver.snapshot: CONF.libvirt.snapshot_image_format or the disk's own type.
        return "qcow2" if backend == "qcow2" else "raw"

    def trial(self, backend: str, n: int, check: bool = False) -> dict[str, float]:
        instance, itype = self.instances[backend], self.image_type(backend)
        fetch, filename = self.fetch_func(backend), self.filenames[backend]
        out = os.path.join(self.snapshots_dir, uuid.uuid4().hex)
        by_name, by_path = self.backend.by_name, self.backend.by_libvirt_path
        kwargs = {"context": None, "image_id": IMAGE_IDS[backend], "trusted_certs": None}

        t0 = time.perf_counter()
        image = by_name(instance, DISK, itype)
        image.cache(fetch_func=fetch, filename=filename, size=CREATE_SIZE, **kwargs)
        created = time.perf_counter() - t0
        if check:
            self._check(image.path, backend, CREATE_SIZE, backed=backend == "qcow2")
        t0 = time.perf_counter()
        image = by_name(instance, DISK, itype)
        if self.resize_via == "cache":
            image.cache(fetch_func=fetch, filename=filename, size=RESIZE_SIZE, **kwargs)
        else:
            image.resize_image(RESIZE_SIZE)
        resized = time.perf_counter() - t0
        if check:
            self._check(image.path, backend, RESIZE_SIZE, backed=backend == "qcow2")
        t0 = time.perf_counter()
        image = by_path(instance, image.path, image_type=itype)
        image.snapshot_extract(out, self.out_format(backend))
        snapshotted = time.perf_counter() - t0
        if check:
            self._check(out, self.out_format(backend), RESIZE_SIZE, backed=False)
        path = image.path
        os.unlink(out)
        os.unlink(path)
        os.unlink(os.path.join(os.path.dirname(path), "disk.info"))
        return {"create": created, "resize": resized, "snapshot": snapshotted}

    @staticmethod
    def _check(path: str, fmt: str, size: int, *, backed: bool) -> None:
        fmt = "raw" if fmt == "flat" else fmt
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

    def close(self) -> None:
        if self.privsep == "fork":
            self.pctxt.stop()

    def describe(self) -> dict[str, str]:
        from importlib.metadata import version

        return {
            "nova": version("nova"),
            "oslo.concurrency": version("oslo.concurrency"),
            "oslo.privsep": version("oslo.privsep"),
            "oslo.utils": version("oslo.utils"),
            "python": sys.version.split()[0],
            "privsep": self.privsep,
            "resize_via": self.resize_via,
        }


# -- trace: what one trial does, step by step -------------------------------------------------


def trace(
    root: str, run_trial, loggers: tuple[str, ...] = ("nova", "oslo_concurrency")
) -> dict[str, list[list[str]]]:
    """Run one trial, ``run_trial(mark, emit)``, with an audit hook recording processes started,
    files under ``root`` opened, renamed, removed, made or touched, and fcntl locks, plus the
    libraries' DEBUG log lines about commands and locks. ``mark(step)`` starts a step; it also
    calls ``statvfs("/.trace-mark-<step>")`` so that an outer ``strace -f`` can split its log."""
    import logging

    root = os.path.abspath(root)
    steps: dict[str, list[list[str]]] = {}
    state: dict = {"on": False, "step": None, "events": []}

    def emit(kind: str, detail: str) -> None:
        if state["on"]:
            state["events"].append([kind, detail])

    def hook(event, args):
        if not state["on"]:
            return
        if event == "subprocess.Popen":
            emit("exec", " ".join(str(a) for a in args[1]))
        elif event == "open":
            path, mode, flags = args
            if isinstance(path, str) and path.startswith(root):
                writes = (mode and any(c in mode for c in "wax+")) or (
                    flags and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
                )
                emit("open-write" if writes else "open-read", path)
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.utime", "os.rmdir"):
            if isinstance(args[0], str) and args[0].startswith(root):
                emit(event, " -> ".join(str(a) for a in args[:2] if isinstance(a, str)))
        elif event in ("fcntl.lockf", "fcntl.flock"):
            emit(event, f"fd {args[0]} cmd {args[1]}")

    class Collect(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if "running" in msg.lower() or "lock" in msg.lower():
                emit("log", msg[:300])

    def mark(step: str) -> None:
        if state["step"] is not None:
            steps[state["step"]] = state["events"]
        state["events"], state["step"] = [], step
        with contextlib.suppress(OSError):
            os.statvfs(f"/.trace-mark-{step}")

    sys.addaudithook(hook)  # stays for the life of the process: trace in a process of its own
    handler = Collect(level=logging.DEBUG)
    for name in loggers:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    state["on"] = True
    try:
        run_trial(mark, emit)
        mark("end")
    finally:
        state["on"] = False
        for name in loggers:
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).setLevel(logging.NOTSET)
    return steps


def nova_trace(side: NovaSide, backend: str) -> dict[str, list[list[str]]]:
    """One trial of NovaSide.trial's calls, traced; privsep calls counted on the channel."""

    def run(mark, emit):
        instance, itype = side.instances[backend], side.image_type(backend)
        fetch, filename = side.fetch_func(backend), side.filenames[backend]
        kwargs = {"context": None, "image_id": IMAGE_IDS[backend], "trusted_certs": None}
        out = os.path.join(side.snapshots_dir, uuid.uuid4().hex)
        channel = side.pctxt.channel if side.privsep == "fork" else None
        if channel is not None:
            original = channel.remote_call

            def counted(name, args, kwargs_, timeout=None):
                emit("privsep", name)
                return original(name, args, kwargs_, timeout)

            channel.remote_call = counted  # trace only: the timed trials never see this
        try:
            mark("create")
            image = side.backend.by_name(instance, DISK, itype)
            image.cache(fetch_func=fetch, filename=filename, size=CREATE_SIZE, **kwargs)
            mark("resize")
            image = side.backend.by_name(instance, DISK, itype)
            if side.resize_via == "cache":
                image.cache(fetch_func=fetch, filename=filename, size=RESIZE_SIZE, **kwargs)
            else:
                image.resize_image(RESIZE_SIZE)
            mark("snapshot")
            image = side.backend.by_libvirt_path(instance, image.path, image_type=itype)
            image.snapshot_extract(out, side.out_format(backend))
            mark("cleanup")
        finally:
            if channel is not None:
                del channel.remote_call
        os.unlink(out)
        os.unlink(image.path)
        os.unlink(os.path.join(os.path.dirname(image.path), "disk.info"))

    return trace(side.root, run)


# -- worker protocol: one JSON object per line each way ---------------------------------------


def decompose(side: NovaSide, rounds: int) -> None:
    """Where a Nova create's time goes: its parts timed alone, interleaved, medians in ms."""
    import nova.privsep.path
    from nova.virt import images
    from oslo_concurrency import processutils

    base = os.path.join(
        side.conf.instances_path, side.conf.image_cache.subdirectory_name, side.filenames["qcow2"]
    )
    parts = {
        "bare qemu-img info (subprocess.run)": lambda: subprocess.run(
            ["qemu-img", "info", base, "--force-share", "--output=json"],
            check=True,
            capture_output=True,
        ),
        "processutils.execute(qemu-img info), no prlimit": lambda: processutils.execute(
            "env", "LC_ALL=C", "LANG=C", "qemu-img", "info", base, "--force-share", "--output=json"
        ),
        "images.qemu_img_info (Nova: prlimit python wrapper)": lambda: images.qemu_img_info(base),
        "privsep utime of the base": lambda: nova.privsep.path.utime(base),
        "format_inspector safety check of the base": lambda: images.get_image_format(
            base
        ).safety_check(),
    }
    samples: dict[str, list[float]] = {name: [] for name in parts}
    names = list(parts)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            parts[name]()
            samples[name].append(time.perf_counter() - t0)
    print(f"Parts of a Nova create, {rounds} rounds interleaved; median ms (p90):")
    for name, values in samples.items():
        print(f"  {name:<55} {statistics.median(values) * 1e3:7.2f} ({_p90(values) * 1e3:.2f})")


def protocol_stdout():
    """The real stdout, for the protocol alone; fd 1 then points at stderr, so whatever a library
    (or a process forked from here, such as the privsep daemon) prints cannot corrupt it."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def serve(side: NovaSide, out) -> None:
    out.write(json.dumps({"ready": side.describe()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            break
        try:
            if op == "trial":
                reply = side.trial(request["backend"], request["n"], request.get("check", False))
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # report it; the orchestrator stops
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
    side.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    parser.add_argument("--privsep", choices=("fork", "inprocess"), default="fork")
    parser.add_argument("--resize-via", choices=("resize_image", "cache"), default="resize_image")
    parser.add_argument("--trace", action="store_true", help="print what one trial does per step")
    parser.add_argument(
        "--decompose",
        type=int,
        metavar="ROUNDS",
        help="time the parts of a create (qemu-img info paths, privsep, inspection)",
    )
    parser.add_argument("--worker", metavar="ROOT", help="serve trials as JSON lines under ROOT")
    parser.add_argument("--template-qcow2")
    parser.add_argument("--template-raw")
    args = parser.parse_args()
    backends = BACKENDS if args.backend == "both" else (args.backend,)

    if args.worker:
        templates = {"qcow2": args.template_qcow2, "flat": args.template_raw}
        out = protocol_stdout()
        serve(
            NovaSide(args.worker, templates, privsep=args.privsep, resize_via=args.resize_via), out
        )
        return

    tmp = tempfile.mkdtemp(prefix="nova-imagebackend-bench-")
    try:
        templates = make_templates(tmp)
        if args.template_qcow2:
            templates["qcow2"] = args.template_qcow2
        if args.template_raw:
            templates["flat"] = args.template_raw
        side = NovaSide(
            os.path.join(tmp, "nova"), templates, privsep=args.privsep, resize_via=args.resize_via
        )
        try:
            for b in backends:
                for i in range(max(args.warmup, 1)):
                    side.trial(b, -1 - i, check=True)
            if args.decompose:
                decompose(side, args.decompose)
                return
            if args.trace:
                for b in backends:
                    print(json.dumps({"backend": b, "steps": nova_trace(side, b)}))
                return
            samples = {b: {s: [] for s in STEPS} for b in backends}
            for i in range(args.trials):
                order = backends if i % 2 == 0 else tuple(reversed(backends))
                for b in order:
                    for step, seconds in side.trial(b, i).items():
                        samples[b][step].append(seconds)
            print(
                f"Nova imagebackend {side.describe()}; {args.trials} trials per backend after "
                f"{args.warmup} warm-up; medians in ms (p90)"
            )
            for b in backends:
                sums = [sum(t) for t in zip(*(samples[b][s] for s in STEPS), strict=True)]
                cells = [
                    f"{s} {statistics.median(samples[b][s]) * 1e3:.2f} "
                    f"({_p90(samples[b][s]) * 1e3:.2f})"
                    for s in STEPS
                ]
                print(
                    f"  {b:5}: "
                    + "; ".join(cells)
                    + f"; sum {statistics.median(sums) * 1e3:.2f} ({_p90(sums) * 1e3:.2f})"
                )
        finally:
            side.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


if __name__ == "__main__":
    main()
