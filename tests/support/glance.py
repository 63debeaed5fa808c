"""A real OpenStack Glance API server for tests, started by scripts/glance-dev.sh.

``GlanceServer`` makes (or finds) the venv Glance runs in (scripts/glance-venv.sh: var/glance-venv,
Glance 33.x and uWSGI from PyPI), then starts Glance's own WSGI application under uWSGI in a
temporary directory, on a free loopback port: no Keystone, a SQLite database made by
``glance-manage db_sync``, one file store. It stops exactly that server by its pid file.

Images go in and out through the service's own API (``upload``, ``download``): create the image
record, PUT its bytes, and Glance sets ``checksum`` (md5), ``os_hash_algo`` (sha512 by default) and
``os_hash_value`` while it stores them.

The session fixture ``glance_server`` starts one for the whole session; ``glance_rbd_server``
starts a second one whose default store is the rbd store on the session's Ceph cluster. A venv that cannot be made
(no network, no PyPI) or a missing curl skips the tests that use it, except under CI=true, where a
missing component is a failure; a server that does not start is a failure everywhere. Import the
fixture in one place only (each module that imports it gets its own session server):
tests/conftest.py does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

if TYPE_CHECKING:
    from tests.support.ceph import CephCluster

__all__ = [
    "RBD_POOL",
    "GlanceServer",
    "GlanceUnavailable",
    "file_hashes",
    "glance_rbd_server",
    "glance_server",
]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "glance-dev.sh"
VENV_SCRIPT = REPO / "scripts" / "glance-venv.sh"
TIMEOUT = 30.0


class GlanceUnavailable(RuntimeError):
    """Glance's venv cannot be made here, or curl is missing (skip outside CI)."""


RBD_POOL = "glance-images"


class GlanceServer:
    def __init__(self, directory: str | None = None, *, ceph: Path | None = None) -> None:
        """``ceph``: the directory of a cluster started by scripts/ceph-dev.sh; with it, the
        server's default store is "ceph" (glance_store's rbd driver, pool ``RBD_POOL``)."""
        self.ceph = ceph
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="diskledger-glance-"))
        self.url = ""
        self.session = requests.Session()
        self.session.trust_env = False  # loopback: no proxy from the environment

    def start(self) -> None:
        if shutil.which("curl") is None:
            raise GlanceUnavailable("curl is not installed (Debian package curl)")
        made = subprocess.run(
            [str(VENV_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
        )
        if made.returncode != 0:
            raise GlanceUnavailable(made.stderr.strip() or "scripts/glance-venv.sh failed")
        done = subprocess.run(
            [str(SCRIPT), "start", str(self.directory)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env={**os.environ, "GLANCE_DEV_CEPH": str(self.ceph)} if self.ceph else None,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the Glance API server did not start: {done.stderr.strip()}")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.session.close()
        subprocess.run([str(SCRIPT), "stop", str(self.directory)], check=False, timeout=60)
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def port(self) -> int:
        return int((self.directory / "port").read_text())

    @property
    def pid(self) -> int:
        return int((self.directory / "run" / "glance-api.pid").read_text())

    @property
    def store_directory(self) -> Path:
        """Where the file store keeps image data (one file per image, named by its id)."""
        return self.directory / "images"

    def environ(self) -> dict[str, str]:
        """The settings that point diskledger at this image service."""
        return {"DISKLEDGER_GLANCE_URL": self.url}

    # -- the service's own API (v2) ----------------------------------------------------------

    def image(self, image_id: str) -> dict[str, Any]:
        answer = self.session.get(f"{self.url}/v2/images/{image_id}", timeout=TIMEOUT)
        answer.raise_for_status()
        record: dict[str, Any] = answer.json()
        return record

    def upload(
        self,
        path: Path,
        *,
        name: str | None = None,
        disk_format: str = "raw",
        store: str | None = None,
        **properties: Any,
    ) -> dict[str, Any]:
        """Create an image and PUT ``path``'s bytes into it (into ``store``, "fs" or "ceph", or
        the default one); returns the active image's record."""
        image_id = self.create(name or path.name, disk_format=disk_format, **properties)["id"]
        with path.open("rb") as data:
            stored = self.session.put(
                f"{self.url}/v2/images/{image_id}/file",
                data=data,
                headers={
                    "Content-Type": "application/octet-stream",
                    **({"X-Image-Meta-Store": store} if store else {}),
                },
                timeout=TIMEOUT * 10,
            )
        stored.raise_for_status()
        return self.image(image_id)

    def create(self, name: str, *, disk_format: str = "raw", **properties: Any) -> dict[str, Any]:
        """Create an image record without data: the image stays ``queued``."""
        created = self.session.post(
            f"{self.url}/v2/images",
            json={
                "name": name,
                "disk_format": disk_format,
                "container_format": "bare",
                **properties,
            },
            timeout=TIMEOUT,
        )
        created.raise_for_status()
        record: dict[str, Any] = created.json()
        return record

    def download(self, image_id: str, destination: Path) -> Path:
        with self.session.get(
            f"{self.url}/v2/images/{image_id}/file", stream=True, timeout=TIMEOUT
        ) as answer:
            answer.raise_for_status()
            with destination.open("wb") as out:
                for chunk in answer.iter_content(1 << 20):
                    out.write(chunk)
        return destination

    def delete(self, image_id: str) -> None:
        answer = self.session.delete(f"{self.url}/v2/images/{image_id}", timeout=TIMEOUT)
        answer.raise_for_status()


def file_hashes(path: Path, algorithm: str = "sha512") -> tuple[str, str]:
    """(``algorithm`` hex digest, md5 hex digest) of a file: what Glance records as
    ``os_hash_value`` and ``checksum``."""
    multihash, md5 = hashlib.new(algorithm), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            multihash.update(chunk)
            md5.update(chunk)
    return multihash.hexdigest(), md5.hexdigest()


def _serve(server: GlanceServer) -> Iterator[GlanceServer]:
    unavailable: str | None = None
    try:
        server.start()
    except GlanceUnavailable as exc:
        unavailable = f"Glance is unavailable: {exc}"
    except BaseException:
        server.stop()
        raise
    if unavailable is not None:  # outside the except block, to keep the report short
        server.stop()
        if os.environ.get("CI") == "true":
            pytest.fail(f"{unavailable} (CI=true: a missing component is a failure)", pytrace=False)
        pytest.skip(unavailable)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def glance_server() -> Iterator[GlanceServer]:
    """One real Glance API server for the session (see this module's docstring): file store."""
    yield from _serve(GlanceServer())


@pytest.fixture(scope="session")
def glance_rbd_server(ceph_cluster: CephCluster) -> Iterator[GlanceServer]:
    """The second configuration: a Glance API server whose default store is the rbd store on the
    session's Ceph cluster (``ceph_cluster``, tests/conftest.py), pool ``RBD_POOL``."""
    yield from _serve(GlanceServer(ceph=ceph_cluster.directory))
