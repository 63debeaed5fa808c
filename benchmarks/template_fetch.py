"""Template fetch: ``template add`` from a URL vs ``curl``; a template from Glance's RBD location
vs one downloaded from a URL (issue 17's "Speed" section).

``fetch`` (``run``): one file of ``DEFAULT_SIZE`` bytes (1 GiB of random bytes, written once per
run into the benchmark's temporary directory: incompressible, and the size of a small real cloud
image, so that a trial is a few seconds of data and not the engine's fixed costs) is served on
loopback by a small HTTP server in a process of its own (``python -m benchmarks.template_fetch
--serve DIR``: ``sendfile``, ``Content-Length``, no ranges; a separate process so that serving
does not compete with the client for the GIL). Interleaved trial by trial (the order flipping),
after one untimed warm-up each:

- A: ``Engine.add_template(T, URL, "raw", sha256=...)`` on the default backend (qcow2: templates
  are files under ``<root>/templates``), SQLite ledger: the intent, the download streamed to the
  template's temporary name and hashed while written, ``fsync``, the safety inspection,
  ``qemu-img info``, the rename, the outcome: what ``diskledger template add`` costs, less the
  process start-up. In the same trial, the order flipping too, the bare download alone:
  ``HttpSource(URL, checksum=("sha256", ...)).copy_to(path)`` (``requests``, hash, ``fsync``), to
  show what of A is the download and what is the rest.
- B: ``curl -sS -o FILE URL``, then ``sha256sum FILE`` (the file then in the page cache), then
  ``openssl dgst -sha256 FILE``, then ``sync FILE`` (an ``fsync``: curl does not make the file
  durable, the engine does). Each timed on its own, so that one trial gives the baselines:
  ``curl -o`` alone (the issue's figure: "checksum included" is read as A's checksum counted
  against a bare download); ``curl -o`` + ``sha256sum``; ``curl -o`` + ``openssl dgst`` (the
  same SHA-256 code as the engine's ``hashlib``: coreutils' ``sha256sum`` does not use the CPU's
  SHA extensions and is several times slower); and that + ``sync``.

Where ``/dev/shm`` is a tmpfs with room, each trial also downloads once more into it, on each side
(A: the bare ``copy_to``; B: ``curl -o``): no disk under either (the ``fsync`` returns at once),
so that pair is what the download path itself costs against curl's, apart from the disk.

Every file is removed after its trial, untimed (a template through ``Engine.remove_template``).

``glance-rbd`` (``run_rbd``): a one-node Ceph cluster (``tests.support.ceph.CephCluster``) and a
real Glance API server whose default store is the rbd store on it
(``tests.support.glance.GlanceServer``, ``scripts/glance-dev.sh`` with ``GLANCE_DEV_CEPH``), both
started here and stopped by their pid files at the end, also on error. A 1 GiB raw image is
uploaded once through Glance's API (so it is an RBD image in pool ``glance-images`` with a
protected ``snap``; ``direct_url`` ``rbd://FSID/glance-images/ID/snap``) and the same file is
served by the loopback server above. Interleaved, after one warm-up each, on one engine (rbd
backend, client.diskledger, SQLite ledger):

- A: ``add_template(T, "glance://ID", "raw")`` then ``create(disk, template=T)``;
- B: ``add_template(T, URL, "raw", sha256=...)`` then ``create(disk, template=T)``.

What the fetch did is read back from the ledger (the fetch's ``completed`` event, and its
intent), and each A trial is labelled by it: a direct clone from Glance's snapshot, or a
download. Where this tree has the direct-clone path (``RbdTemplateStore`` can clone) and A still
downloaded, the benchmark fails with what the ledger says, instead of reporting a download as a
clone.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import socketserver
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from benchmarks.timing import Report, Row, Samples, env_int, interleave

__all__ = [
    "DEFAULT_RBD_TRIALS",
    "DEFAULT_SIZE",
    "DEFAULT_TRIALS",
    "ImageHttpServer",
    "fetch_outcome",
    "run",
    "run_rbd",
    "shm_is_tmpfs",
]

MiB = 1 << 20
DEFAULT_SIZE = 1024 * MiB
DEFAULT_TRIALS = 5
DEFAULT_RBD_TRIALS = 3
TARGET_RATIO = 1.10
IMAGE_NAME = "image.raw"
CHUNK = 4 * MiB


def size_from_environ() -> int:
    """``DISKLEDGER_BENCH_FETCH_MIB``: the image's size in MiB (default 1024)."""
    return env_int("DISKLEDGER_BENCH_FETCH_MIB", DEFAULT_SIZE // MiB) * MiB


# -- the image and its server ---------------------------------------------------------------------


def write_image(path: Path, size: int) -> str:
    """``size`` bytes of random data (the first sector zero, as a raw disk's boot sector would be
    rather than random: nothing for the format inspector to take for another format's magic);
    returns their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        written = 0
        while written < size:
            block = os.urandom(min(CHUNK, size - written))
            if written == 0:
                block = bytes(min(512, len(block))) + block[512:]
            out.write(block)
            digest.update(block)
            written += len(block)
    return digest.hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET and HEAD of the files in the served directory, the body by ``sendfile``."""

    protocol_version = "HTTP/1.0"  # one request per connection, as both clients here make
    directory = "."

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        name = self.path.split("?", 1)[0].lstrip("/")
        path = os.path.join(self.directory, name)
        if "/" in name or not name or not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if body:
                self.wfile.flush()
                with suppress(BrokenPipeError, ConnectionResetError):
                    self.connection.sendfile(handle)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(directory: str) -> None:
    """Serve ``directory`` on a free loopback port, print the port, until terminated."""
    _Handler.directory = directory
    with _Server(("127.0.0.1", 0), _Handler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


class ImageHttpServer:
    """The serving process (``--serve``): started and stopped by this object, by its own pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process: subprocess.Popen[str] | None = None
        self.base = ""

    def __enter__(self) -> ImageHttpServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.template_fetch", "--serve", str(self.directory)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert self.process.stdout is not None
        port = self.process.stdout.readline().strip()
        if not port.isdigit():
            self.__exit__()
            raise RuntimeError("the benchmark's HTTP server did not start")
        self.base = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def url(self, name: str = IMAGE_NAME) -> str:
        return f"{self.base}/{name}"


@contextmanager
def _loopback_settings(extra: Mapping[str, str] = {}) -> Iterator[None]:
    """No proxy for loopback (requests reads the environment), plus ``extra``, restored after."""
    wanted = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **extra}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _gib_per_s(size: int, seconds: float) -> str:
    return f"{size / seconds / (1 << 30):.2f} GiB/s"


def _size_label(size: int) -> str:
    return f"{size / (1 << 30):g} GiB" if size >= 1 << 30 else f"{size / MiB:g} MiB"


# -- fetch: template add from a URL vs curl ------------------------------------------------------


def run(trials: int = DEFAULT_TRIALS, size: int = DEFAULT_SIZE) -> Report:
    if shutil.which("curl") is None:
        raise SystemExit("curl is not installed (Debian package curl)")
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-fetch-") as tmp:
        root = Path(tmp)
        served = root / "served"
        served.mkdir()
        started = time.perf_counter()
        sha256 = write_image(served / IMAGE_NAME, size)
        written = time.perf_counter() - started
        with ImageHttpServer(served) as server, _loopback_settings():
            samples = _measure_fetch(root, server.url(), sha256, trials)
    return _fetch_report(samples, trials, size, written)


def _measure_fetch(root: Path, url: str, sha256: str, trials: int) -> Samples:
    from diskledger.backends.sources import HttpSource
    from diskledger.engine import Config, Engine

    work = root / "work"
    work.mkdir()
    size = os.path.getsize(root / "served" / IMAGE_NAME)
    config = Config.load(root=root / "engine", backend="qcow2", environ={}, recover=False)
    source = HttpSource(url, checksum=("sha256", sha256))
    with _in_memory(2 * size) as memory, Engine.open(config) as engine:

        def through_engine() -> float:
            name = f"t{next(counter)}"
            started = time.perf_counter()
            view = engine.add_template(name, url, "raw", sha256=sha256)
            elapsed = time.perf_counter() - started
            assert view.virtual_size == size, view
            engine.remove_template(name)
            return elapsed

        def bare_download(path: Path = work / "bare") -> float:
            started = time.perf_counter()
            source.copy_to(str(path), limit=1 << 50, op="fetch")
            elapsed = time.perf_counter() - started
            path.unlink()
            return elapsed

        counter = iter(range(10**9))

        def side_a(trial: int) -> dict[str, float]:
            if trial % 2 == 0:
                steps = {"engine": through_engine(), "bare": bare_download()}
            else:
                bare = bare_download()
                steps = {"engine": through_engine(), "bare": bare}
            if memory is not None:
                steps["bare-memory"] = bare_download(memory / "bare")
            return steps

        def side_b(trial: int) -> dict[str, float]:
            path = work / "curl"
            steps: dict[str, float] = {}
            for step, command in (
                ("curl", ["curl", "-sS", "--fail", "--noproxy", "*", "-o", str(path), url]),
                ("sha256sum", ["sha256sum", str(path)]),
                ("openssl", ["openssl", "dgst", "-sha256", "-r", str(path)]),
                ("sync", ["sync", str(path)]),
            ):
                started = time.perf_counter()
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                steps[step] = time.perf_counter() - started
                if step in ("sha256sum", "openssl") and done.stdout.split()[0] != sha256:
                    raise RuntimeError(f"{step}: curl's copy does not have the image's sha256")
            path.unlink()
            if memory is not None:
                path = memory / "curl"
                command = ["curl", "-sS", "--fail", "--noproxy", "*", "-o", str(path), url]
                started = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True)
                steps["curl-memory"] = time.perf_counter() - started
                path.unlink()
            return steps

        return interleave(side_a, side_b, trials, warmup=1)


def shm_is_tmpfs() -> bool:
    """Whether /dev/shm is a tmpfs (what the in-memory pair of ``fetch`` downloads into)."""
    mounts = Path("/proc/mounts")
    lines = mounts.read_text().splitlines() if mounts.exists() else []
    return any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in lines)


@contextmanager
def _in_memory(needed: int) -> Iterator[Path | None]:
    """A temporary directory on /dev/shm when it is a tmpfs with room for ``needed`` bytes
    (where a copy costs no disk: the download path alone), else None."""
    shm = Path("/dev/shm")
    if not shm_is_tmpfs() or shutil.disk_usage(shm).free < needed:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="diskledger-bench-fetch-", dir=shm) as tmp:
        yield Path(tmp)


def _fetch_report(samples: Samples, trials: int, size: int, written: float) -> Report:
    def median_of_sums(*steps: str) -> float:
        sums: list[float] = [
            sum(values) for values in zip(*(samples.b[s] for s in steps), strict=True)
        ]
        return statistics.median(sums)

    engine = samples.median_a("engine")
    bare = samples.median_a("bare")
    curl = samples.median_b("curl")
    coreutils = median_of_sums("curl", "sha256sum")
    openssl = median_of_sums("curl", "openssl")
    durable = median_of_sums("curl", "openssl", "sync")
    ratio = engine / curl

    def row(label: str, baseline: float, a: float = engine) -> Row:
        return Row(
            label, f"{a:.2f}", f"{baseline:.2f}", f"{a / baseline:.3f} ({a - baseline:+.2f} s)"
        )

    label = _size_label(size)
    return Report(
        title=f"Template fetch over loopback HTTP: template add vs curl, {label}",
        method=(
            f"{trials} trials per side, interleaved (the order flips every trial), after 1 "
            f"warm-up each; medians in s. One file of {label} of random bytes served on 127.0.0.1 "
            "by a separate process (sendfile). A: Engine.add_template(T, URL, 'raw', sha256=...) "
            "(qcow2 backend, SQLite ledger): download hashed while written, fsync, inspection, "
            "qemu-img info, rename, intent and outcome. B: curl -sS -o FILE URL; sha256sum FILE; "
            "openssl dgst -sha256 FILE; sync FILE, each timed on its own, summed per trial."
        ),
        columns=("template add s (A)", "baseline s (B)", "ratio A/B (A - B)"),
        rows=[
            row("vs curl -o (the issue's figure: the checksum is A's alone)", curl),
            row("vs curl -o + sha256sum", coreutils),
            row("vs curl -o + openssl dgst -sha256 (the same SHA-256 code)", openssl),
            row("vs curl -o + openssl dgst + sync (as verified and durable as A)", durable),
            row("bare HttpSource.copy_to (in A's trials) vs curl -o + openssl dgst", openssl, bare),
            *(
                [
                    row(
                        "in memory (tmpfs, no disk): bare HttpSource.copy_to vs curl -o",
                        samples.median_b("curl-memory"),
                        samples.median_a("bare-memory"),
                    )
                ]
                if "curl-memory" in samples.b
                else []
            ),
        ],
        target=(
            f"template add, checksum included, / curl -o <= {TARGET_RATIO:.2f} (measured "
            f"{ratio:.3f}; against curl -o + openssl dgst + sync, as verified and durable, "
            f"{engine / durable:.3f})"
        ),
        met=ratio <= TARGET_RATIO,
        notes=(
            f"rates: template add {_gib_per_s(size, engine)}, bare HttpSource.copy_to "
            f"{_gib_per_s(size, bare)}, curl -o {_gib_per_s(size, curl)}; hashing the file "
            f"alone: sha256sum {samples.median_b('sha256sum'):.2f} s, openssl dgst "
            f"{samples.median_b('openssl'):.2f} s; sync alone {samples.median_b('sync'):.2f} s",
            "coreutils' sha256sum uses its own portable SHA-256, without the CPU's SHA "
            "extensions; diskledger (hashlib) and openssl use OpenSSL's, which does: the openssl "
            "row is the like-for-like checksum",
            f"template add beyond the bare download (ledger, inspection, qemu-img info, rename): "
            f"{engine - bare:+.2f} s",
            "the in-memory row, where /dev/shm is a tmpfs: the same download and curl -o into "
            "it, with no disk under them (its fsync returns at once): what the download path "
            "itself costs against curl's",
            f"image written once in {written:.1f} s; every copy removed after its trial, untimed",
        ),
    )


# -- glance-rbd: a template from Glance's RBD location vs from a URL -----------------------------


def fetch_outcome(engine: Any, template: str) -> tuple[str, str]:
    """How the last fetch of ``template`` brought it in, read from the ledger: ("clone", the
    location cloned from) or ("download", why not a clone when the ledger says why). The fetch's
    intent records ``clone_from`` or ``not_cloned`` in its params, its ``completed`` event
    ``cloned_from``."""
    stream = engine.runtime.template_stream(template)
    events = engine.store.read_stream(stream)
    started = [e for e in events if e.type.endswith("fetch.started")]
    completed = [e for e in events if e.type.endswith("fetch.completed")]
    if not started or not completed:
        raise RuntimeError(f"{stream}: no completed fetch in the ledger")
    params = dict(started[-1].data.get("params", {}))
    outcome = dict(completed[-1].data)
    cloned_from = outcome.get("cloned_from")
    if cloned_from:
        if params.get("clone_from") != cloned_from:
            raise RuntimeError(f"{stream}: the intent and the outcome disagree on the clone")
        return "clone", str(cloned_from)
    return "download", str(params.get("not_cloned") or "")


def clone_path_exists(engine: Any) -> bool:
    """Whether this engine's template store can clone from an image service's location (the
    direct-clone path of issue 17: ``ClonesTemplates``); read from the code, not assumed."""
    from diskledger.backends import contract

    protocol = getattr(contract, "ClonesTemplates", None)
    return protocol is not None and isinstance(engine.templates, protocol)


def run_rbd(
    trials: int = DEFAULT_RBD_TRIALS,
    size: int = DEFAULT_SIZE,
    *,
    cluster: Any = None,
    glance: Any = None,
) -> Report:
    """``cluster`` and ``glance`` (a ``CephCluster`` and a ``GlanceServer`` with the rbd store on
    it, the tests' session fixtures): run on them instead of starting and stopping both."""
    from tests.support.ceph import CephCluster
    from tests.support.glance import GlanceServer

    if (cluster is None) != (glance is None):
        raise ValueError("give both the cluster and its Glance, or neither")
    owned = cluster is None
    ceph_up = glance_up = 0.0
    try:
        if owned:
            cluster = CephCluster()
            started = time.perf_counter()
            cluster.start()
            ceph_up = time.perf_counter() - started
            glance = GlanceServer(ceph=cluster.directory)
            started = time.perf_counter()
            glance.start()
            glance_up = time.perf_counter() - started
        with tempfile.TemporaryDirectory(prefix="diskledger-bench-glance-rbd-") as tmp:
            result = _measure_rbd(cluster, glance, Path(tmp), trials, size)
    finally:
        if owned:
            if glance is not None:
                glance.stop()
            if cluster is not None:
                cluster.stop()
    return _rbd_report(result, trials, size, ceph_up if owned else None, glance_up)


def _measure_rbd(cluster: Any, glance: Any, root: Path, trials: int, size: int) -> dict[str, Any]:
    from diskledger.engine import Config, Engine

    served = root / "served"
    served.mkdir()
    sha256 = write_image(served / IMAGE_NAME, size)
    started = time.perf_counter()
    image = glance.upload(served / IMAGE_NAME, name="bench", disk_format="raw")
    uploaded = time.perf_counter() - started
    direct_url = str(image.get("direct_url", ""))
    outcomes: list[tuple[str, str]] = []
    clone_expected = False
    with ImageHttpServer(served) as server, _loopback_settings(glance.environ()):
        url = server.url()
        environ = {**cluster.environ(), **glance.environ()}
        config = Config.load(root=root / "engine", environ=environ, recover=False)
        with Engine.open(config) as engine:
            clone_expected = clone_path_exists(engine)
            counter = iter(range(10**9))
            token = uuid.uuid4().hex[:8]  # the pool may be shared (the tests' session cluster)

            def side(source: str, sha: str | None, glance_side: bool) -> Any:
                def trial(number: int) -> dict[str, float]:
                    n = next(counter)
                    template, disk = f"fetch-{token}-{n}", f"bench-{token}/d{n}"
                    started = time.perf_counter()
                    engine.add_template(template, source, "raw", sha256=sha)
                    added = time.perf_counter()
                    engine.create(disk, template=template)
                    created = time.perf_counter()
                    if glance_side:
                        how = fetch_outcome(engine, template)
                        outcomes.append(how)
                        if clone_expected and how[0] != "clone":
                            raise RuntimeError(
                                f"template add glance://{image['id']} downloaded instead of "
                                f"cloning from {direct_url} although this tree has the direct-"
                                f"clone path; the ledger says: {how[1] or 'nothing'}"
                            )
                    engine.delete(disk)
                    engine.remove_template(template)
                    return {"add": added - started, "create": created - added}

                return trial

            samples = interleave(
                side(f"glance://{image['id']}", None, True), side(url, sha256, False), trials,
                warmup=1,
            )  # fmt: skip
    with suppress(Exception):  # every clone of it is gone; a leftover is harmless in a test
        glance.delete(image["id"])
    return {
        "samples": samples,
        "outcomes": outcomes,
        "uploaded": uploaded,
        "direct_url": direct_url,
        "clone_expected": clone_expected,
    }


def _rbd_report(
    result: dict[str, Any], trials: int, size: int, ceph_up: float | None, glance_up: float
) -> Report:
    samples: Samples = result["samples"]
    outcomes: list[tuple[str, str]] = result["outcomes"]
    kinds = sorted({kind for kind, _ in outcomes})
    how = "/".join(kinds)
    label = _size_label(size)

    def total(side: dict[str, list[float]]) -> float:
        return statistics.median(a + c for a, c in zip(side["add"], side["create"], strict=True))

    a_total, b_total = total(samples.a), total(samples.b)
    rows = [
        Row(
            f"template add ({how} vs download + import)",
            f"{samples.median_a('add'):.2f}",
            f"{samples.median_b('add'):.2f}",
            f"{samples.median_a('add') / samples.median_b('add'):.3f}",
        ),
        Row(
            "disk create from it",
            f"{samples.median_a('create'):.3f}",
            f"{samples.median_b('create'):.3f}",
            f"{samples.median_a('create') / samples.median_b('create'):.3f}",
        ),
        Row(
            "template add + create (end to end)",
            f"{a_total:.2f}",
            f"{b_total:.2f}",
            f"{a_total / b_total:.3f} ({a_total - b_total:+.2f} s)",
        ),
    ]
    cloned = kinds == ["clone"]
    notes = [
        "what the ledger recorded for the glance:// fetches: "
        + "; ".join(f"{kind}{f' ({why})' if why else ''}" for kind, why in outcomes[:1])
        + f" (all {len(outcomes)}, warm-up included: {how})",
        f"Glance image uploaded once in {result['uploaded']:.1f} s; direct_url "
        f"{result['direct_url'] or '(not shown)'}",
        (
            f"Ceph cluster started in {ceph_up:.1f} s (one mon, one memstore OSD, cephx), Glance "
            f"(uWSGI, rbd store default) in {glance_up:.1f} s"
            if ceph_up is not None
            else "on a Ceph cluster and Glance started by the caller"
        )
        + "; each disk and template removed after its trial, untimed",
    ]
    if not result["clone_expected"]:
        notes.append(
            "this tree has no direct-clone path yet (diskledger/backends/rbd/templates.py): "
            "glance:// is downloaded from Glance's API and imported like a URL; A is a download"
        )
    return Report(
        title=f"Template from Glance's RBD location vs from a URL, then a disk: rbd, {label}",
        method=(
            f"{trials} trials per side, interleaved (the order flips every trial), after 1 "
            "warm-up each; medians in s. One engine (rbd backend, client.diskledger, SQLite "
            "ledger) on a one-node Ceph cluster with a real Glance (rbd store) started here. "
            f"A: add_template(T, 'glance://ID', 'raw') + create(disk, template=T). B: "
            f"add_template(T, URL, 'raw', sha256=...) + create(disk, template=T), the same "
            "bytes served on 127.0.0.1 by a separate process."
        ),
        columns=("glance:// s (A)", "http:// s (B)", "ratio A/B"),
        rows=rows,
        target=(
            "the glance:// template is a direct clone of Glance's snapshot (recorded so) and "
            "faster end to end than a download + import: A/B < 1 (measured "
            f"{a_total / b_total:.3f})"
        ),
        met=cloned and a_total < b_total,
        notes=tuple(notes),
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"] and len(sys.argv) == 3:
        serve(sys.argv[2])
    else:
        raise SystemExit("usage: python -m benchmarks.template_fetch --serve DIRECTORY")
