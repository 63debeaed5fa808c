"""``template add ID URL --sha256`` and ``disk create --template-source URL`` at the command line:
the one-line refusals, a fetch SIGKILLed mid-download and recovered, and eight processes creating
from one uncached remote template (one download). Every command runs in its own CLI process
against a local HTTPS server (tests/support/image_server.py) the process trusts through
``DISKLEDGER_CA_BUNDLE``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskledger.store import open_store
from tests.recovery.helpers import CLI, cli, cli_args, cli_env, cli_json, error_line
from tests.support.image_server import ImageServer, make_certificate, make_image, serving

MiB = 1 << 20


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> bytes:
    return make_image(tmp_path_factory.mktemp("image") / "base.qcow2")


@pytest.fixture
def https(image: bytes, certificate: tuple[Path, Path]) -> Iterator[ImageServer]:
    with serving(image, cert=certificate) as server:
        yield server


@pytest.fixture
def environ(certificate: tuple[Path, Path]) -> dict[str, str]:
    return {
        "DISKLEDGER_CA_BUNDLE": str(certificate[0]),
        "DISKLEDGER_FETCH_READ_TIMEOUT": "0.3",
        "DISKLEDGER_FETCH_ATTEMPTS": "2",
        "DISKLEDGER_FETCH_RETRY_WAIT": "0",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def leftovers(root: Path) -> list[str]:
    templates = root / "templates"
    return sorted(p.name for p in templates.iterdir()) if templates.exists() else []


def history_types(root: Path) -> list[str]:
    """The ledger's event types, read in this process (a CLI process costs half a second)."""
    if not (root / "ledger.db").exists():
        return []
    store = open_store(f"sqlite:///{root}/ledger.db")
    try:
        return [e.type for e in store.read_all()]
    finally:
        store.close()


def test_template_add_https_verified(
    tmp_path: Path, https: ImageServer, environ: dict[str, str]
) -> None:
    root = tmp_path / "root"
    url = https.url("/image.qcow2")
    argv = ("template", "add", "base", url, "--format", "qcow2", "--sha256", https.sha256)
    view = cli_json(root, *argv, backend="qcow2", environ=environ)
    assert (view["state"], view["virtual_size"], view["source"]) == ("cached", 64 * MiB, url)
    assert leftovers(root) == ["base"]
    done = subprocess.run(
        [*CLI, *argv, "--root", str(root), "--backend", "qcow2"],
        env=cli_env(environ=environ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "already cached" in error_line(done.stderr)


def test_wrong_sha256_one_line_nothing_left_recorded(
    tmp_path: Path, https: ImageServer, environ: dict[str, str]
) -> None:
    root = tmp_path / "root"
    url = https.url("/image.qcow2")
    done = cli(
        root, "template", "add", "base", url, "--format", "qcow2", "--sha256", "f" * 64,
        backend="qcow2", environ=environ,
    )  # fmt: skip
    assert done.returncode == 1
    assert error_line(done.stderr) == (
        f"diskledger: error: source {url}: sha256 is {https.sha256}, not the {'f' * 64} given; "
        "refused"
    )
    assert leftovers(root) == []
    assert history_types(root) == ["template.fetch.started", "template.fetch.failed"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("file:///etc/passwd", "source file:///etc/passwd: the file:// scheme is not supported"),
        ("ftp://127.0.0.1/base.qcow2", "source ftp://127.0.0.1/base.qcow2: the ftp:// scheme"),
        ("https://u:p@127.0.0.1/b.qcow2", "source https://127.0.0.1/b.qcow2: the URL carries"),
    ],
)
def test_refused_before_anything_is_recorded(
    tmp_path: Path, source: str, expected: str, environ: dict[str, str]
) -> None:
    root = tmp_path / "root"
    done = cli(
        root, "template", "add", "base", source, "--format", "qcow2",
        backend="qcow2", environ=environ,
    )  # fmt: skip
    assert done.returncode == 1
    assert error_line(done.stderr).startswith(f"diskledger: error: {expected}")
    assert history_types(root) == []


def test_local_source_inside_the_root_refused(tmp_path: Path, environ: dict[str, str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    inside = root / "smuggled.qcow2"
    make_image(inside, "1M", "64k")
    done = cli(
        root, "template", "add", "base", str(inside), "--format", "qcow2",
        backend="qcow2", environ=environ,
    )  # fmt: skip
    assert done.returncode == 1
    assert "which holds the ledger's own files" in error_line(done.stderr)
    assert history_types(root) == []


def test_fetch_killed_mid_download_is_rolled_back(
    tmp_path: Path, https: ImageServer, environ: dict[str, str]
) -> None:
    root = tmp_path / "root"
    url = https.url("/image.qcow2")
    done = cli(
        root, "template", "add", "base", url, "--format", "qcow2", "--sha256", https.sha256,
        backend="qcow2", environ=environ, fault="fetch@mid-effect",
    )  # fmt: skip
    assert done.returncode == -9
    partial = leftovers(root)
    assert len(partial) == 1 and ".tmp-" in partial[0]  # data was written when it died
    assert (root / "templates" / partial[0]).stat().st_size > 0
    report = cli_json(root, "recover", backend="qcow2", environ=environ)
    assert [o["op"] for o in report["rolled_back"]] == ["fetch"], report
    assert leftovers(root) == []
    assert history_types(root)[-1] == "template.fetch.failed"
    verified = cli(root, "verify", backend="qcow2", environ=environ)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # And the template can be fetched afterwards.
    again = cli_json(
        root, "template", "add", "base", url, "--format", "qcow2", "--sha256", https.sha256,
        backend="qcow2", environ=environ,
    )  # fmt: skip
    assert again["state"] == "cached"


@pytest.mark.parametrize(
    ("point", "decision", "cached"),
    [("after-intent", "rolled_back", False), ("after-effect", "rolled_forward", True)],
)
def test_fetch_killed_at_the_other_points(
    tmp_path: Path,
    https: ImageServer,
    environ: dict[str, str],
    point: str,
    decision: str,
    cached: bool,
) -> None:
    """Before a byte is downloaded the fetch is undone; once the template is published it is
    finished (the download is not repeated)."""
    root = tmp_path / "root"
    url = https.url("/image.qcow2")
    done = cli(
        root, "template", "add", "base", url, "--format", "qcow2", "--sha256", https.sha256,
        backend="qcow2", environ=environ, fault=f"fetch@{point}",
    )  # fmt: skip
    assert done.returncode == -9
    report = cli_json(root, "recover", backend="qcow2", environ=environ)
    assert [o["op"] for o in report[decision]] == ["fetch"], report
    assert leftovers(root) == (["base"] if cached else [])
    assert history_types(root)[-1] == (
        "template.fetch.completed" if cached else "template.fetch.failed"
    )
    assert https.requests["/image.qcow2"] == (1 if cached else 0)
    verified = cli(root, "verify", backend="qcow2", environ=environ)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_eight_creates_from_one_remote_template_download_once(
    tmp_path: Path, https: ImageServer, environ: dict[str, str]
) -> None:
    root = tmp_path / "root"
    cli_json(root, "template", "list", backend="qcow2")  # the ledger exists before the race
    url = https.url("/slow.qcow2")

    def argv(i: int) -> list[str]:
        return [
            *CLI,
            *cli_args(
                root,
                "qcow2",
                [
                    "disk", "create", f"vm{i}/root", "--template", "base",
                    "--template-source", url, "--template-format", "qcow2",
                    "--template-sha256", https.sha256,
                ],
            ),
        ]  # fmt: skip

    processes = [
        subprocess.Popen(
            argv(i),
            env=cli_env(environ=environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert json.loads(out)["template"] == "base"
    assert https.requests["/slow.qcow2"] == 1
    assert leftovers(root) == ["base"]
    assert history_types(root).count("template.fetch.started") == 1


def test_template_sha256_needs_a_template_source(tmp_path: Path) -> None:
    done = cli(
        tmp_path / "root", "disk", "create", "vm/root", "--template", "base",
        "--template-sha256", "a" * 64, backend="qcow2",
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith("--template-sha256 needs --template-source")
