"""The real Glance API server of tests/support/glance.py (scripts/glance-dev.sh): images go in and
come back out through the service's own v2 API, with the hash fields a template source verifies."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
from pathlib import Path

import pytest
import requests

from tests.support.ceph import CephCluster
from tests.support.glance import RBD_POOL, REPO, GlanceServer, file_hashes
from tests.support.peer_venv import assert_fails_with_one_line

# The session fixtures glance_server and glance_rbd_server come from tests/conftest.py (one place:
# one session server, shared with tests/test_glance_sources.py).


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 MiB that no two runs share, with a recognisable first sector."""
    path = tmp_path_factory.mktemp("glance") / "disk.raw"
    path.write_bytes(b"GLANCE".ljust(512, b"\0") + os.urandom((5 << 20) - 512))
    return path


def test_the_server_answers_the_v2_api_on_loopback(glance_server: GlanceServer) -> None:
    assert glance_server.url.startswith("http://127.0.0.1:")
    versions = glance_server.session.get(f"{glance_server.url}/versions", timeout=10).json()
    current = [v["id"] for v in versions["versions"] if v["status"] == "CURRENT"]
    assert current and current[0].startswith("v2.")
    os.kill(glance_server.pid, 0)  # the pid file names the running server


def test_an_image_uploaded_through_the_api_comes_back_with_its_hashes(
    glance_server: GlanceServer, image_file: Path, tmp_path: Path
) -> None:
    sha512, md5 = file_hashes(image_file)
    image = glance_server.upload(image_file, name="template")
    assert image["status"] == "active"
    assert image["size"] == image_file.stat().st_size
    assert (image["os_hash_algo"], image["os_hash_value"], image["checksum"]) == (
        "sha512",
        sha512,
        md5,
    )
    # The file store, as multi-store config: the store's name and where the bytes are.
    assert image["stores"] == "fs"
    stored = glance_server.store_directory / image["id"]
    assert image["direct_url"] == f"file://{stored}"
    assert stored.read_bytes() == image_file.read_bytes()

    back = glance_server.download(image["id"], tmp_path / "back.raw")
    assert back.read_bytes() == image_file.read_bytes()
    assert file_hashes(back) == (sha512, md5)


def test_a_download_can_resume_with_a_range(glance_server: GlanceServer, image_file: Path) -> None:
    image = glance_server.upload(image_file, name="ranged")
    start = 3 << 20
    answer = glance_server.session.get(
        f"{glance_server.url}/v2/images/{image['id']}/file",
        headers={"Range": f"bytes={start}-"},
        timeout=30,
    )
    assert answer.status_code == 206
    assert answer.headers["Content-Range"] == f"bytes {start}-{(5 << 20) - 1}/{5 << 20}"
    assert answer.content == image_file.read_bytes()[start:]


def test_a_deleted_image_is_gone_from_the_api_and_the_store(
    glance_server: GlanceServer, image_file: Path
) -> None:
    image = glance_server.upload(image_file, name="doomed")
    glance_server.delete(image["id"])
    with pytest.raises(requests.HTTPError) as missing:
        glance_server.image(image["id"])
    assert missing.value.response.status_code == 404
    assert not (glance_server.store_directory / image["id"]).exists()


def test_with_the_rbd_store_an_image_is_a_protected_snapshot_its_direct_url_names(
    glance_rbd_server: GlanceServer, ceph_cluster: CephCluster, image_file: Path, tmp_path: Path
) -> None:
    sha512, md5 = file_hashes(image_file)
    image = glance_rbd_server.upload(image_file, name="in-ceph")
    assert (image["stores"], image["os_hash_value"], image["checksum"]) == ("ceph", sha512, md5)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ceph_cluster.conf)
    fsid = parser["global"]["fsid"]
    assert image["direct_url"] == f"rbd://{fsid}/{RBD_POOL}/{image['id']}/snap"
    snapshot = json.loads(
        ceph_cluster.rbd("info", "--format", "json", f"{RBD_POOL}/{image['id']}@snap")
    )
    assert snapshot["protected"] == "true" and snapshot["size"] == image["size"]
    back = glance_rbd_server.download(image["id"], tmp_path / "back.raw")
    assert file_hashes(back) == (sha512, md5)
    # The file store is there too, by name.
    elsewhere = glance_rbd_server.upload(image_file, name="in-fs", store="fs")
    assert elsewhere["stores"] == "fs" and elsewhere["direct_url"].startswith("file://")


def test_a_second_server_starts_and_stops_by_its_own_pid_file(
    glance_server: GlanceServer, tmp_path: Path
) -> None:
    second = GlanceServer(str(tmp_path / "glance"))
    second.start()
    try:
        assert second.port != glance_server.port
        pid = second.pid
        printed = subprocess.run(
            [str(REPO / "scripts/glance-dev.sh"), "env", str(second.directory)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"export DISKLEDGER_GLANCE_URL={second.url}\n" in printed
    finally:
        second.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(requests.ConnectionError):
        second.session.get(f"{second.url}/versions", timeout=5)
    # The session's server is untouched.
    glance_server.session.get(f"{glance_server.url}/versions", timeout=10).raise_for_status()


def test_the_glance_venv_script_fails_with_one_line(tmp_path: Path) -> None:
    assert_fails_with_one_line("glance-venv.sh", "GLANCE_VENV", tmp_path)
