"""Progress of long copies (issue 17): the throttled meter of ``diskledger.progress``, and the
callback the engine's fetch, import, export and flatten take, fed by the real copies (a local file
copied block by block, a download from a local HTTP server, ``qemu-img convert -p``, librbd's
flatten on the test's Ceph cluster)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskledger import ProgressEvent
from diskledger.backends import runner
from diskledger.engine import Config, Engine
from diskledger.progress import active, meter, reporting
from tests.support.ceph import CephCluster
from tests.support.image_server import ImageServer, make_image, serving

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_meter_reports_its_start_at_most_every_interval_and_its_end_once() -> None:
    seen: list[ProgressEvent] = []
    clock = Clock()
    with reporting(seen.append, "fetch", interval=0.1):
        m = meter("download", 100 * MiB, clock=clock)
        for done in range(1, 101):
            clock.now += 0.01  # a block every 10 ms: one event in ten
            m.update(done * MiB)
        m.finish()
        m.finish()  # once only
    assert seen[0] == ProgressEvent("fetch", "download", 0, 100 * MiB)
    assert seen[-1] == ProgressEvent("fetch", "download", 100 * MiB, 100 * MiB, final=True)
    assert 9 <= len(seen) - 2 <= 11
    dones = [e.done for e in seen]
    assert dones == sorted(dones)
    assert [e.final for e in seen].count(True) == 1


def test_a_tight_loop_reports_only_its_start_and_end_and_stays_fast() -> None:
    seen: list[ProgressEvent] = []
    with reporting(seen.append, "import"):
        m = meter("copy", 1 << 40)
        started = time.perf_counter()
        for done in range(200_000):
            m.update(done)
        m.finish(1 << 40)
        elapsed = time.perf_counter() - started
    assert elapsed < 2.0  # ~0.2 us an update; generous for a loaded machine
    assert seen[0].done == 0 and seen[-1] == ProgressEvent("import", "copy", 1 << 40, 1 << 40, True)
    assert len(seen) <= 2 + int(elapsed / 0.1) + 1


def test_without_a_callback_meters_are_silent_and_reporting_none_changes_nothing() -> None:
    assert not active()
    m = meter("copy", 10)
    m.update(5)
    m.finish()
    seen: list[ProgressEvent] = []
    with reporting(seen.append, "export"), reporting(None, "ignored"):
        assert active()
        meter("convert", 1).finish(1)
    assert not active()
    assert [(e.what, e.step, e.final) for e in seen] == [
        ("export", "convert", False),
        ("export", "convert", True),
    ]


def test_the_callback_is_the_calling_context_s_own() -> None:
    """A thread started meanwhile does not report to another thread's callback."""
    seen: list[ProgressEvent] = []
    other: list[bool] = []
    with reporting(seen.append, "fetch"):
        thread = threading.Thread(target=lambda: other.append(active()))
        thread.start()
        thread.join()
    assert other == [False]


def test_runner_hands_stdout_on_as_it_comes_and_returns_it_whole() -> None:
    pieces: list[str] = []
    out = runner.run(
        ["sh", "-c", "printf 'a\\r'; sleep 0.2; printf 'b\\r'; echo oops >&2"],
        on_output=pieces.append,
    )
    assert out == "a\rb\r"
    assert pieces == ["a\r", "b\r"]


# -- the engine's copies ------------------------------------------------------------------------


def check_sequence(seen: list[ProgressEvent], what: str, step: str, total: int) -> None:
    """One step's events: from 0, never back, the last one final at ``total``."""
    mine = [e for e in seen if e.step == step]
    assert mine, seen
    assert all(e.what == what for e in mine)
    assert mine[0].done == 0
    dones = [e.done for e in mine]
    assert dones == sorted(dones), dones
    assert mine[-1] == ProgressEvent(what, step, total, total, final=True)
    assert [e.final for e in mine].count(True) == 1


@pytest.fixture
def engine(tmp_path: Path, qemu_img: None) -> Iterator[Engine]:
    config = Config.load(root=tmp_path / "root", backend="qcow2", environ={})
    with Engine.open(config) as engine:
        yield engine


@pytest.fixture(scope="module")
def sparse_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 MiB raw image: 2 MiB of data every 16 MiB, a MiB of zeroes written in the middle,
    holes between."""
    path = tmp_path_factory.mktemp("sparse") / "base.raw"
    with path.open("wb") as handle:
        handle.truncate(256 * MiB)
        for n in range(16):
            handle.seek(n * 16 * MiB)
            handle.write(os.urandom(2 * MiB))
        handle.seek(100 * MiB)
        handle.write(b"\0" * MiB)
    return path


def test_add_template_from_a_local_file_reports_each_block(
    engine: Engine, sparse_raw: Path
) -> None:
    seen: list[ProgressEvent] = []
    # An outer reporting with no throttle: the engine's progress=None leaves it active.
    with reporting(seen.append, "fetch", interval=0):
        view = engine.add_template("base", sparse_raw, "raw")
    size = sparse_raw.stat().st_size
    check_sequence(seen, "fetch", "copy", size)
    assert len(seen) >= 16  # block by block: every data extent reported
    copy = Path(view.location)
    assert (
        hashlib.sha256(copy.read_bytes()).digest()
        == hashlib.sha256(sparse_raw.read_bytes()).digest()
    )
    # The holes stayed holes and the written zeroes became one, as cp --sparse=always makes.
    assert copy.stat().st_blocks * 512 <= 16 * 2 * MiB + MiB


def test_add_template_progress_callback_from_a_local_file(engine: Engine, sparse_raw: Path) -> None:
    seen: list[ProgressEvent] = []
    engine.add_template("base", sparse_raw, "raw", progress=seen.append)
    check_sequence(seen, "fetch", "copy", sparse_raw.stat().st_size)
    assert not active()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> bytes:
    return make_image(tmp_path_factory.mktemp("image") / "base.qcow2", data="8M")


@pytest.fixture
def http(image: bytes, monkeypatch: pytest.MonkeyPatch) -> Iterator[ImageServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with serving(image, cert=None) as server:
        yield server


def test_add_template_progress_callback_from_http(
    engine: Engine, http: ImageServer, image: bytes
) -> None:
    seen: list[ProgressEvent] = []
    engine.add_template(
        "base", http.url("/slow.qcow2"), "qcow2", sha256=http.sha256, progress=seen.append
    )
    check_sequence(seen, "fetch", "download", len(image))
    # The server sends it in 8 pieces 50 ms apart: the bar moves in between.
    assert len([e for e in seen if 0 < e.done < len(image)]) >= 2
    assert all(e.total == len(image) for e in seen[1:])


def test_import_and_export_report_qemu_img_convert(
    engine: Engine, template_files: dict[str, Path], tmp_path: Path
) -> None:
    seen: list[ProgressEvent] = []
    engine.import_disk("vm/a", template_files["raw"], "raw", progress=seen.append)
    size = template_files["raw"].stat().st_size
    check_sequence(seen, "import", "copy", size)
    check_sequence(seen, "import", "convert", size)
    seen.clear()
    engine.export("vm/a", tmp_path / "out.raw", "raw", progress=seen.append)
    check_sequence(seen, "export", "convert", 64 * MiB)
    assert (tmp_path / "out.raw").read_bytes()[:8] == b"TEMPLATE"


def test_a_callback_that_raises_fails_the_fetch_and_leaves_nothing(
    engine: Engine, sparse_raw: Path, tmp_path: Path
) -> None:
    def stop(event: ProgressEvent) -> None:
        if event.done > 0:
            raise RuntimeError("stopped by the watcher")

    with pytest.raises(RuntimeError, match="stopped by the watcher"):
        engine.add_template("base", sparse_raw, "raw", progress=stop)
    assert engine.list_templates() == []
    assert [e.type for e in engine.history()][-2:] == [
        "template.fetch.started",
        "template.fetch.failed",
    ]
    templates = tmp_path / "root" / "templates"
    assert not templates.exists() or list(templates.iterdir()) == []


def test_flatten_reports_librbd_progress(
    tmp_path: Path, ceph: CephCluster, sparse_raw: Path
) -> None:
    size = sparse_raw.stat().st_size
    config = Config.load(root=tmp_path / "root", backend="rbd", environ=ceph.environ())
    with Engine.open(config) as engine:
        engine.add_template("base", sparse_raw, "raw")
        engine.create("vm/a", template="base")
        engine.create("vm/b", template="base")
        seen: list[ProgressEvent] = []
        flat = engine.flatten("vm/a", progress=seen.append)
        assert flat.backing is None
        check_sequence(seen, "flatten", "flatten", size)
        # Already flat: nothing copied, nothing reported.
        seen.clear()
        engine.flatten("vm/a", progress=seen.append)
        assert seen == []
        # Unthrottled: librbd's count of objects, as bytes, object by object.
        threads: set[str] = set()

        def record(event: ProgressEvent) -> None:
            seen.append(event)
            threads.add(threading.current_thread().name)

        with reporting(record, "flatten", interval=0):
            engine.flatten("vm/b")
        check_sequence(seen, "flatten", "flatten", size)
        assert len(seen) >= size // (4 * MiB)  # 4 MiB objects
        assert threads - {"MainThread"}, "librbd reports from its own threads, as documented"
