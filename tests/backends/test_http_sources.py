"""Template sources over HTTP(S): a verified download into the cache, and every way a server or a
caller can go wrong refused with one line, nothing left behind, the failure recorded (or, for
what can be refused without the network, nothing recorded at all).

The server is Python's ``http.server`` on 127.0.0.1 in a thread (tests/support/image_server.py),
over TLS with a self-signed certificate trusted through ``DISKLEDGER_CA_BUNDLE``, serving a real
qcow2 image made by ``qemu-img create``."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskledger.backends import files, sources
from diskledger.backends.sources import HttpSource, LocalFile, source_from
from diskledger.engine import Config, Engine
from diskledger.errors import InvalidInput, InvalidSource
from diskledger.states import TemplateState
from tests.recovery.helpers import PoolView
from tests.support.ceph import POOL, CephCluster
from tests.support.image_server import ImageServer, make_certificate, make_image, serving

MiB = 1 << 20


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> bytes:
    return make_image(tmp_path_factory.mktemp("image") / "base.qcow2")


@pytest.fixture
def environ(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Short timeouts and no waits between attempts, so that the refusals are fast."""
    settings = {
        "DISKLEDGER_CA_BUNDLE": str(certificate[0]),
        "DISKLEDGER_FETCH_READ_TIMEOUT": "0.3",
        "DISKLEDGER_FETCH_CONNECT_TIMEOUT": "2",
        "DISKLEDGER_FETCH_ATTEMPTS": "2",
        "DISKLEDGER_FETCH_RETRY_WAIT": "0",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return settings


@pytest.fixture
def https(image: bytes, certificate: tuple[Path, Path], environ: object) -> Iterator[ImageServer]:
    with serving(image, cert=certificate) as server:
        yield server


@pytest.fixture
def http(image: bytes, environ: object) -> Iterator[ImageServer]:
    with serving(image, cert=None) as server:
        yield server


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with Engine.open(Config.load(root=tmp_path / "root", backend="qcow2", environ={})) as opened:
        yield opened


def leftovers(engine: Engine) -> list[str]:
    templates = Path(engine.templates.root) / "templates"
    return sorted(p.name for p in templates.iterdir()) if templates.exists() else []


def fetch_events(engine: Engine) -> list[tuple[str, dict[str, object]]]:
    return [(e.type, dict(e.data)) for e in engine.history() if ".fetch." in e.type]


def refused(engine: Engine, url: str, **kwargs: str) -> str:
    with pytest.raises(InvalidSource) as caught:
        engine.add_template("base", url, "qcow2", **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert leftovers(engine) == []
    return message


def test_download_verified_and_cached(engine: Engine, https: ImageServer, image: bytes) -> None:
    url = https.url("/image.qcow2")
    view = engine.add_template("base", url, "qcow2", sha256=https.sha256.upper())
    assert view.state is TemplateState.CACHED
    assert view.virtual_size == 64 * MiB
    assert leftovers(engine) == ["base"]
    assert (Path(engine.templates.root) / "templates" / "base").read_bytes() == image
    (_, started), (_, completed) = fetch_events(engine)
    assert started["params"] == {
        "template": "base",
        "source": url,
        "format": "qcow2",
        "sha256": https.sha256,
        "backend": "qcow2",
    }
    assert completed["virtual_size"] == 64 * MiB
    assert https.requests["/image.qcow2"] == 1


def test_writeback_is_started_as_the_download_goes(
    engine: Engine, http: ImageServer, image: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``WRITEBACK`` bytes (64 KiB here) the window just written is handed to the kernel
    to write out; the bytes are the same and the last fsync has less to do."""
    assert files._sync_file_range() is not None  # Linux: libc has it, or nothing is started
    windows: list[tuple[int, int]] = []

    def start_writeback(fd: int, offset: int, length: int) -> None:
        windows.append((offset, length))
        real(fd, offset, length)

    real = files.start_writeback
    monkeypatch.setattr(sources, "WRITEBACK", 64 << 10)
    monkeypatch.setattr(files, "start_writeback", start_writeback)
    engine.add_template("base", http.url("/image.qcow2"), "qcow2", sha256=http.sha256)
    assert (Path(engine.templates.root) / "templates" / "base").read_bytes() == image
    ends = [0, *(offset + length for offset, length in windows)]
    assert [offset for offset, _ in windows] == ends[:-1]  # one after the other, from 0 ...
    assert ends[-1] == len(image) // (64 << 10) * (64 << 10)  # ... to the last whole window
    assert len(windows) > 1


def test_the_hash_thread_covers_every_block_given_also_when_the_download_breaks() -> None:
    blocks = [bytes([n]) * 300_000 for n in range(20)]  # more than the queue holds
    digest = hashlib.sha256()
    with pytest.raises(ConnectionError), sources._HashedAside(digest) as aside:
        for block in blocks:
            aside.update(block)
        raise ConnectionError("the body broke off")
    assert digest.hexdigest() == hashlib.sha256(b"".join(blocks)).hexdigest()


def test_plain_http_and_one_redirect(engine: Engine, http: ImageServer) -> None:
    view = engine.add_template("base", http.url("/redirect"), "qcow2", sha256=http.sha256)
    assert view.state is TemplateState.CACHED
    assert http.requests["/image.qcow2"] == 1


def test_without_a_checksum_the_inspection_still_runs(engine: Engine, https: ImageServer) -> None:
    with pytest.raises(InvalidInput, match="qcow2"):  # UnsafeImage: not the declared format
        engine.add_template("base", https.url("/image.qcow2"), "raw")
    assert leftovers(engine) == []
    assert [t for t, _ in fetch_events(engine)] == [
        "template.fetch.started",
        "template.fetch.failed",
    ]


def test_wrong_sha256_refused_nothing_left_failure_recorded(
    engine: Engine, https: ImageServer
) -> None:
    wrong = "0" * 64
    message = refused(engine, https.url("/image.qcow2"), sha256=wrong)
    assert message == (
        f"source {https.url('/image.qcow2')}: sha256 is {https.sha256}, not the {wrong} given; "
        "refused"
    )
    (started_type, _), (failed_type, failed) = fetch_events(engine)
    assert (started_type, failed_type) == ("template.fetch.started", "template.fetch.failed")
    assert "sha256 is" in str(failed["error"])
    assert https.requests["/image.qcow2"] == 1  # a mismatch is not retried
    # Nothing was cached: the same template can be fetched again, with the right checksum.
    assert engine.add_template("base", https.url("/image.qcow2"), "qcow2", sha256=https.sha256)


def test_truncated_body_refused_after_the_attempts(engine: Engine, https: ImageServer) -> None:
    message = refused(engine, https.url("/truncated"))
    assert "(after 2 attempts)" in message
    assert "cut short" in message or "ended after" in message
    assert https.requests["/truncated"] == 2
    assert fetch_events(engine)[-1][0] == "template.fetch.failed"


def test_stalled_server_refused_by_the_read_timeout(engine: Engine, https: ImageServer) -> None:
    began = time.monotonic()
    message = refused(engine, https.url("/stall"))
    assert "read timed out" in message and "(after 2 attempts)" in message
    assert time.monotonic() - began < 5
    assert fetch_events(engine)[-1][0] == "template.fetch.failed"


def test_body_beyond_the_ceiling_refused(
    engine: Engine, https: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISKLEDGER_FETCH_MAX_BYTES", str(2 * MiB))
    message = refused(engine, https.url("/endless"))
    assert message.endswith(f"the body is longer than the ceiling of {2 * MiB} bytes")
    assert https.requests["/endless"] == 1
    assert fetch_events(engine)[-1][0] == "template.fetch.failed"


def test_announced_length_beyond_the_ceiling_refused(engine: Engine, https: ImageServer) -> None:
    # No setting: the ceiling is the template store's (16 TiB); the server claims 1 TiB more...
    engine.templates.max_virtual_size = 1 << 30  # type: ignore[attr-defined]
    message = refused(engine, https.url("/announces-huge"))
    assert message.endswith(f"{1 << 40} bytes announced, above the ceiling of {1 << 30}")


def test_a_retry_resumes_with_range(engine: Engine, https: ImageServer, image: bytes) -> None:
    view = engine.add_template("base", https.url("/resumable"), "qcow2", sha256=https.sha256)
    assert view.state is TemplateState.CACHED
    assert https.ranges == [(None, None), (f"bytes={len(image) // 3}-", '"v1"')]
    assert (Path(engine.templates.root) / "templates" / "base").read_bytes() == image


def test_redirect_loop_refused(engine: Engine, https: ImageServer) -> None:
    message = refused(engine, https.url("/loop"))
    assert message == f"source {https.url('/loop')}: more than 3 redirects"
    assert https.requests["/loop"] == 4  # the request and three redirects


def test_redirect_to_a_file_url_refused(engine: Engine, https: ImageServer) -> None:
    message = refused(engine, https.url("/to-file"))
    assert "redirected to a scheme other than http(s)" in message


def test_transient_503_retried(engine: Engine, https: ImageServer) -> None:
    view = engine.add_template("base", https.url("/flaky"), "qcow2", sha256=https.sha256)
    assert view.state is TemplateState.CACHED
    assert https.requests["/flaky"] == 2


def test_untrusted_certificate_refused(
    engine: Engine, https: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISKLEDGER_CA_BUNDLE")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    message = refused(engine, https.url("/image.qcow2"))
    assert "TLS failed" in message and "certificate verify failed" in message


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("file:///etc/passwd", "source file:///etc/passwd: the file:// scheme is not supported"),
        ("ftp://127.0.0.1/base.qcow2", "source ftp://127.0.0.1/base.qcow2: the ftp:// scheme is"),
        ("https:///base.qcow2", "source https:///base.qcow2: the URL has no host"),
        (
            "https://admin:secret@127.0.0.1:8443/base.qcow2",
            "source https://127.0.0.1:8443/base.qcow2: the URL carries credentials",
        ),
        ("ftp://admin:secret@127.0.0.1/x", "source ftp://127.0.0.1/x: the ftp:// scheme is not"),
        ("https://admin:secret@127.0.0.1:99999/x", "source https://127.0.0.1:99999/x: not a valid"),
    ],
)
def test_refused_before_anything_is_recorded(engine: Engine, source: str, expected: str) -> None:
    head = engine.history()
    with pytest.raises(InvalidSource) as caught:
        engine.add_template("base", source, "qcow2")
    assert str(caught.value).startswith(expected)
    assert "secret" not in str(caught.value)
    assert engine.history() == head


def test_bad_checksum_refused_before_anything_is_recorded(engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="is not 64 hexadecimal digits"):
        engine.add_template("base", "https://127.0.0.1/x", "qcow2", sha256="abc")
    assert engine.history() == []


def test_local_source_inside_the_root_refused(engine: Engine, tmp_path: Path) -> None:
    root = Path(engine.templates.root)
    outside = tmp_path / "outside.qcow2"
    make_image(outside, "1M", "64k")
    engine.add_template("base", outside, "qcow2")
    ledger_events = len(engine.history())
    for inside in (root / "ledger.db", root / "templates" / "base"):
        with pytest.raises(InvalidSource, match="which holds the ledger's own files"):
            engine.add_template("again", inside, "qcow2")
    # A symbolic link from outside the root to inside it is refused the same way.
    link = tmp_path / "link.qcow2"
    link.symlink_to(root / "templates" / "base")
    with pytest.raises(InvalidSource, match="which holds the ledger's own files"):
        engine.add_template("again", link, "qcow2")
    assert len(engine.history()) == ledger_events


def test_local_file_with_sha256(engine: Engine, tmp_path: Path) -> None:
    source = tmp_path / "local.qcow2"
    data = make_image(source, "1M", "64k")
    with pytest.raises(InvalidSource, match="sha256 is"):
        engine.add_template("base", source, "qcow2", sha256="1" * 64)
    assert leftovers(engine) == []
    view = engine.add_template("base", source, "qcow2", sha256=hashlib.sha256(data).hexdigest())
    assert view.state is TemplateState.CACHED


def test_source_from_settings(environ: dict[str, str]) -> None:
    assert isinstance(source_from("/srv/base.qcow2"), LocalFile)
    chosen = source_from("HTTPS://127.0.0.1/x", sha256="A" * 64)
    assert isinstance(chosen, HttpSource)
    assert chosen.checksum == ("sha256", "a" * 64)
    assert chosen.settings.read_timeout == 0.3
    with pytest.raises(InvalidInput, match="DISKLEDGER_FETCH_ATTEMPTS='0' is not between 1"):
        source_from("http://h/x", environ={"DISKLEDGER_FETCH_ATTEMPTS": "0"})
    with pytest.raises(InvalidInput, match="DISKLEDGER_CA_BUNDLE='/nonexistent' is not a file"):
        source_from("http://h/x", environ={"DISKLEDGER_CA_BUNDLE": "/nonexistent"})


def test_rbd_template_pool_from_a_url(
    tmp_path: Path, https: ImageServer, ceph: CephCluster, qemu_img: None
) -> None:
    """The rbd backend's template store stages the download locally, inspects it and imports it
    into the pool; a mismatch leaves neither a staging file nor an image."""
    config = Config.load(root=tmp_path / "root", backend="rbd", environ=ceph.environ())
    with Engine.open(config) as engine:
        with pytest.raises(InvalidSource, match="sha256 is"):
            engine.add_template("base", https.url("/image.qcow2"), "qcow2", sha256="e" * 64)
        with PoolView(ceph) as pools:
            assert pools.contents(POOL) == set()
        staging = tmp_path / "root" / "staging"
        assert not staging.exists() or list(staging.iterdir()) == []
        view = engine.add_template("base", https.url("/image.qcow2"), "qcow2", sha256=https.sha256)
        assert (view.state, view.format, view.virtual_size) == (
            TemplateState.CACHED,
            "raw",
            64 * MiB,
        )
        assert engine.verify().ok
