"""``template add ID glance://IMAGE_ID`` and ``disk create --template-source glance://…`` against the
real Glance API server of tests/support/glance.py (the session's ``glance_server``): images go in
through the service's own API; what the service recorded (status, disk_format, the multihash) is
what diskledger checks and verifies. Every command runs in its own CLI process."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from diskledger.backends.glance import _checksum, glance_source
from diskledger.backends.sources import source_params
from diskledger.errors import InvalidSource
from diskledger.store import open_store
from tests.recovery.helpers import cli, cli_json, error_line
from tests.support.glance import GlanceServer, file_hashes
from tests.support.image_server import make_image

MiB = 1 << 20
TOKEN = "tok-7f3c9a1e-never-in-the-ledger"


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> Path:
    path = tmp_path_factory.mktemp("glance-source") / "cirros.qcow2"
    make_image(path, "64M", "3M")
    return path


@pytest.fixture(scope="module")
def image(glance_server: GlanceServer, image_file: Path) -> dict[str, Any]:
    """One qcow2 image in the service, shared by the tests that only read it."""
    return glance_server.upload(image_file, name="cirros", disk_format="qcow2")


@pytest.fixture
def environ(glance_server: GlanceServer) -> dict[str, str]:
    return {
        **glance_server.environ(),
        "DISKLEDGER_GLANCE_TOKEN": TOKEN,
        "DISKLEDGER_FETCH_ATTEMPTS": "1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def leftovers(root: Path) -> list[str]:
    templates = root / "templates"
    return sorted(p.name for p in templates.iterdir()) if templates.exists() else []


def events(root: Path) -> list[Any]:
    if not (root / "ledger.db").exists():
        return []
    store = open_store(f"sqlite:///{root}/ledger.db")
    try:
        return list(store.read_all())
    finally:
        store.close()


def add(root: Path, source: str, fmt: str, environ: dict[str, str]) -> Any:
    return cli(
        root, "template", "add", "base", source, "--format", fmt,
        backend="qcow2", environ=environ,
    )  # fmt: skip


def test_an_image_is_cached_verified_and_a_disk_made_from_it(
    tmp_path: Path,
    glance_server: GlanceServer,
    image: dict[str, Any],
    image_file: Path,
    environ: dict[str, str],
) -> None:
    root = tmp_path / "root"
    source = f"glance://{image['id']}"
    view = cli_json(
        root, "template", "add", "cirros", source, "--format", "qcow2",
        backend="qcow2", environ=environ,
    )  # fmt: skip
    assert (view["state"], view["virtual_size"], view["source"]) == ("cached", 64 * MiB, source)
    assert (root / "templates" / "cirros").read_bytes() == image_file.read_bytes()
    disk = cli_json(
        root, "disk", "create", "vm-1/root", "--template", "cirros",
        backend="qcow2", environ=environ,
    )  # fmt: skip
    assert disk["state"] == "created" and disk["template"] == "cirros"
    # An uncached one, fetched by disk create itself.
    other = cli_json(
        root, "disk", "create", "vm-2/root", "--template", "other",
        "--template-source", source, "--template-format", "qcow2",
        backend="qcow2", environ=environ,
    )  # fmt: skip
    assert other["template"] == "other"
    assert leftovers(root) == ["cirros", "other"]

    # The intent records the source, the service and the hash verified; never the token.
    sha512, _ = file_hashes(image_file)
    started = [e for e in events(root) if e.type == "template.fetch.started"]
    assert len(started) == 2
    params = started[0].data["params"]
    assert params["source"] == source
    assert params["service"] == glance_server.url
    assert params["sha512"] == sha512 == image["os_hash_value"]
    ledger = b"".join(p.read_bytes() for p in root.glob("ledger.db*"))
    assert TOKEN.encode() not in ledger
    history = cli(root, "history", backend="qcow2", environ=environ)
    assert history.returncode == 0 and TOKEN not in history.stdout
    assert source in history.stdout


def test_the_declared_format_must_be_the_images(
    tmp_path: Path, image: dict[str, Any], environ: dict[str, str]
) -> None:
    root = tmp_path / "root"
    done = add(root, f"glance://{image['id']}", "raw", environ)
    assert done.returncode == 1
    assert error_line(done.stderr) == (
        f"diskledger: error: source glance://{image['id']}: the image service has it as qcow2, "
        "not the raw declared; refused"
    )
    assert events(root) == [] and leftovers(root) == []


def test_an_image_that_is_not_active_is_refused(
    tmp_path: Path, glance_server: GlanceServer, environ: dict[str, str]
) -> None:
    queued = glance_server.create("no-data-yet", disk_format="qcow2")
    assert queued["status"] == "queued"
    root = tmp_path / "root"
    done = add(root, f"glance://{queued['id']}", "qcow2", environ)
    assert done.returncode == 1
    assert error_line(done.stderr).startswith(
        f"diskledger: error: source glance://{queued['id']}: the image is queued, not active"
    )
    assert events(root) == []


@pytest.mark.parametrize(
    ("image_id", "expected"),
    [
        ("UNKNOWN", "has no such image"),
        ("not-a-uuid", "'not-a-uuid' is not an image id (a UUID)"),
    ],
)
def test_an_unknown_image_is_refused_with_one_line(
    tmp_path: Path, environ: dict[str, str], image_id: str, expected: str
) -> None:
    image_id = str(uuid.uuid4()) if image_id == "UNKNOWN" else image_id
    root = tmp_path / "root"
    done = add(root, f"glance://{image_id}", "qcow2", environ)
    assert done.returncode == 1
    line = error_line(done.stderr)
    assert line.startswith(f"diskledger: error: source glance://{image_id}: ") and expected in line
    assert events(root) == []


def test_without_the_service_url_one_line(tmp_path: Path, image: dict[str, Any]) -> None:
    root = tmp_path / "root"
    done = add(root, f"glance://{image['id']}", "qcow2", {})
    assert done.returncode == 1
    assert "set DISKLEDGER_GLANCE_URL" in error_line(done.stderr)
    assert events(root) == []


def test_sha256_is_not_for_an_image_service(
    tmp_path: Path, image: dict[str, Any], environ: dict[str, str]
) -> None:
    root = tmp_path / "root"
    done = cli(
        root, "template", "add", "base", f"glance://{image['id']}", "--format", "qcow2",
        "--sha256", "f" * 64, backend="qcow2", environ=environ,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--sha256 is for files and URLs" in error_line(done.stderr)
    assert events(root) == []


def test_bytes_that_are_not_the_recorded_hash_are_refused(
    tmp_path: Path, glance_server: GlanceServer, image_file: Path, environ: dict[str, str]
) -> None:
    image = glance_server.upload(image_file, name="tampered", disk_format="qcow2")
    stored = glance_server.store_directory / image["id"]
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # same length, another last byte: only the hash can tell
    stored.write_bytes(bytes(data))
    actual, _ = file_hashes(stored)
    root = tmp_path / "root"
    done = add(root, f"glance://{image['id']}", "qcow2", environ)
    assert done.returncode == 1
    assert error_line(done.stderr) == (
        f"diskledger: error: source glance://{image['id']}: sha512 is {actual}, not the "
        f"{image['os_hash_value']} the image service recorded; refused"
    )
    assert leftovers(root) == []
    assert [e.type for e in events(root)] == ["template.fetch.started", "template.fetch.failed"]
    history = cli(root, "history", "--json", backend="qcow2", environ=environ)
    assert "the image service recorded; refused" in history.stdout
    assert TOKEN not in history.stdout
    json.loads(history.stdout)


def test_the_hash_fields_chosen() -> None:
    """The multihash when the service recorded one; the md5 checksum otherwise; nothing that
    cannot be verified."""
    md5, sha512 = "a" * 32, "b" * 128
    assert _checksum(
        {"os_hash_algo": "sha512", "os_hash_value": sha512, "checksum": md5}, "glance://x"
    ) == ("sha512", sha512)
    assert _checksum({"os_hash_algo": None, "checksum": md5.upper()}, "glance://x") == ("md5", md5)
    assert _checksum({"os_hash_algo": "sha256", "os_hash_value": "c" * 64}, "x")[0] == "sha256"
    for record in (
        {},
        {"os_hash_algo": "whirlpool-9", "os_hash_value": "ab"},
        {"os_hash_algo": "sha512", "os_hash_value": "ab"},
    ):
        with pytest.raises(InvalidSource):
            _checksum(record, "glance://x")


def test_the_token_goes_with_the_requests_and_nowhere_else(
    glance_server: GlanceServer, image: dict[str, Any], environ: dict[str, str]
) -> None:
    source = glance_source(
        f"glance://{image['id'].upper()}",
        fmt="qcow2",
        environ={**environ, "DISKLEDGER_GLANCE_URL": glance_server.url + "/"},
    )
    assert source.describe() == f"glance://{image['id']}"
    assert source.download.headers == (("X-Auth-Token", TOKEN),)
    assert source.download.settings.max_redirects == 0  # the token is not carried elsewhere
    assert source_params(source) == {"sha512": image["os_hash_value"], "service": glance_server.url}
    assert source.size == image["size"]
    assert TOKEN not in repr(source)
    anonymous = glance_source(f"glance://{image['id']}", environ=glance_server.environ())
    assert anonymous.download.headers == ()
