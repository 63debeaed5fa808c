"""Nova's fast path: a template from ``glance://IMAGE_ID`` on the rbd backend, when the image
service keeps the image in the same Ceph cluster, is a clone of the service's protected snapshot,
not a download. Against the session's real Glance with the rbd store (``glance_rbd_server``) and
the session's cluster; every command runs in its own CLI process, as the restricted
client.diskledger (read-only on the service's pool, as Nova's client is)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diskledger.backends.rbd import RbdBackend, RbdTemplateStore
from diskledger.errors import UnsafeImage
from diskledger.store import open_store
from tests.recovery.helpers import CLI, cli, cli_env, cli_json, write_data_image
from tests.support.ceph import POOL, CephCluster
from tests.support.glance import RBD_POOL, GlanceServer

MiB = 1 << 20


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("glance-rbd") / "image.raw"
    return write_data_image(path, 16 * MiB, chunk=64 << 10, every=1 * MiB, seed=17)


@pytest.fixture
def image(
    ceph: CephCluster, glance_rbd_server: GlanceServer, image_file: Path
) -> Iterator[dict[str, Any]]:
    """A raw image in the service's rbd store; deleted afterwards, once the pools are emptied
    of clones of it (the service refuses to delete an image with clones)."""
    record = glance_rbd_server.upload(image_file, name="in-ceph")
    assert record["stores"] == "ceph"
    yield record
    ceph.purge()
    gone = glance_rbd_server.session.delete(f"{glance_rbd_server.url}/v2/images/{record['id']}")
    assert gone.status_code in (204, 404)


def human(root: Path, *argv: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One CLI command without ``--json``: what an operator reads."""
    return subprocess.run(
        [*CLI, *argv, "--root", str(root), "--backend", "rbd"],
        env=cli_env(environ=environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def environ(ceph: CephCluster, glance_rbd_server: GlanceServer) -> dict[str, str]:
    return {
        **ceph.environ(),
        **glance_rbd_server.environ(),
        "DISKLEDGER_FETCH_ATTEMPTS": "1",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


def downloads(server: GlanceServer, image_id: str) -> int:
    """How many times the service served the image's data (its request log)."""
    log = (server.directory / "log" / "uwsgi.log").read_text()
    return log.count(f"GET /v2/images/{image_id}/file ")


def parent(ceph: CephCluster, location: str) -> str | None:
    info = json.loads(ceph.rbd("info", "--format", "json", location))
    found = info.get("parent")
    return f"{found['pool']}/{found['image']}@{found['snapshot']}" if found else None


def fetch_params(root: Path) -> dict[str, Any]:
    store = open_store(f"sqlite:///{root}/ledger.db")
    try:
        started = [e for e in store.read_all() if e.type == "template.fetch.started"]
    finally:
        store.close()
    return dict(started[-1].data["params"])


def add(root: Path, image_id: str, environ: dict[str, str], **kw: Any) -> Any:
    return cli(
        root, "template", "add", "base", f"glance://{image_id}", "--format", "raw",
        backend="rbd", environ=environ, **kw,
    )  # fmt: skip


def test_same_cluster_is_a_clone_of_the_services_snapshot_and_keeps_it_from_deletion(
    tmp_path: Path,
    ceph: CephCluster,
    glance_rbd_server: GlanceServer,
    image: dict[str, Any],
    image_file: Path,
    environ: dict[str, str],
) -> None:
    root = tmp_path / "root"
    done = add(root, image["id"], environ)
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["cloned_from"] == image["direct_url"]
    assert view["not_cloned"] is None and view["virtual_size"] == 16 * MiB
    assert fetch_params(root)["clone_from"] == image["direct_url"]
    assert parent(ceph, f"{POOL}/_base~base") == f"{RBD_POOL}/{image['id']}@snap"
    assert downloads(glance_rbd_server, image["id"]) == 0
    assert not any((root / "staging").iterdir())
    shown = human(root, "template", "show", "base", environ=environ).stdout
    assert f"cloned from:  {image['direct_url']}" in shown

    # A disk made from it holds the image's bytes.
    disk = cli_json(root, "disk", "create", "vm-1/root", "--template", "base", backend="rbd",
                    environ=environ)  # fmt: skip
    exported = tmp_path / "disk.raw"
    ceph.rbd("export", disk["location"], str(exported))
    assert exported.read_bytes() == image_file.read_bytes()
    verified = cli(root, "verify", backend="rbd", environ=environ)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # The service refuses to delete an image a template is cloned from ...
    refused = glance_rbd_server.session.delete(f"{glance_rbd_server.url}/v2/images/{image['id']}")
    assert refused.status_code == 409
    # ... until template gc, once no disk uses it, has removed the template.
    cli_json(root, "disk", "delete", "vm-1/root", backend="rbd", environ=environ)
    report = cli_json(root, "template", "gc", "--older-than", "0s", backend="rbd",
                      environ=environ)  # fmt: skip
    assert [(t["template"], t["action"]) for t in report["templates"]] == [("base", "removed")]
    assert ceph.pool_contents() == set()
    glance_rbd_server.delete(image["id"])


def test_an_unprotected_snapshot_is_downloaded_saying_why(
    tmp_path: Path,
    ceph: CephCluster,
    glance_rbd_server: GlanceServer,
    image: dict[str, Any],
    environ: dict[str, str],
) -> None:
    snapshot = f"{RBD_POOL}/{image['id']}@snap"
    ceph.rbd("snap", "unprotect", snapshot)
    try:
        root = tmp_path / "root"
        done = human(root, "template", "add", "base", f"glance://{image['id']}", "--format",
                     "raw", environ=environ)  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        ceph.rbd("snap", "protect", snapshot)
    why = f"{image['direct_url']}: the snapshot is not protected, so it could change"
    assert f"downloaded, not cloned: {why}" in done.stdout
    assert fetch_params(root)["not_cloned"] == why
    assert downloads(glance_rbd_server, image["id"]) == 1
    assert parent(ceph, f"{POOL}/_base~base") is None
    shown = cli_json(root, "template", "show", "base", backend="rbd", environ=environ)
    assert (shown["cloned_from"], shown["not_cloned"]) == (None, why)
    assert shown["virtual_size"] == 16 * MiB
    assert f"not cloned:   {why}" in human(root, "template", "show", "base", environ=environ).stdout


def test_a_raw_image_that_is_qcow2_is_refused_before_anything_is_cloned(
    tmp_path: Path, ceph: CephCluster, glance_rbd_server: GlanceServer, qemu_img: None
) -> None:
    """Glance (33) inspects what is uploaded and refuses a qcow2 declared raw, so the disguised
    image is put into the service's pool behind its back, as a compromised store could hold it;
    the clone path inspects the head of the snapshot as an import inspects its copy."""
    disguised = tmp_path / "disguised.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw",
         str(disguised), "16M"],
        check=True,
    )  # fmt: skip
    ceph.rbd("import", str(disguised), f"{RBD_POOL}/disguised")
    ceph.rbd("snap", "create", f"{RBD_POOL}/disguised@snap")
    ceph.rbd("snap", "protect", f"{RBD_POOL}/disguised@snap")
    backend = RbdBackend(str(tmp_path), ceph.ceph_config())
    store = RbdTemplateStore(str(tmp_path), backend)
    try:
        fsid = backend.cluster.fsid()
        url = f"rbd://{fsid}/{RBD_POOL}/disguised/snap"
        assert store.clone_choice([url], "raw") == (url, None)
        with pytest.raises(UnsafeImage, match="declared raw, but the image is qcow2"):
            store.clone_from(url, "base", "op-1")
        assert ceph.pool_contents() == set()  # nothing was cloned
        # The head's copy is the only trace, under a name the fetch's intent records.
        named = {a.location for a in store.import_artifacts("base", "op-1")}
        assert {str(p) for p in (tmp_path / "staging").iterdir()} <= named
    finally:
        backend.cluster.close()
        ceph.rbd("snap", "unprotect", f"{RBD_POOL}/disguised@snap")
        ceph.rbd("snap", "purge", f"{RBD_POOL}/disguised")
        ceph.rbd("rm", f"{RBD_POOL}/disguised")


@pytest.mark.parametrize(("point", "cached"), [("mid-effect", False), ("after-effect", True)])
def test_a_clone_killed_part_way_is_recovered(
    tmp_path: Path,
    ceph: CephCluster,
    image: dict[str, Any],
    environ: dict[str, str],
    point: str,
    cached: bool,
) -> None:
    root = tmp_path / "root"
    killed = add(root, image["id"], environ, fault=f"fetch@{point}")
    assert killed.returncode == -9
    assert cli(root, "recover", backend="rbd", environ=environ).returncode == 0
    if cached:  # the template was whole: rolled forward, recorded as the clone it is
        shown = cli_json(root, "template", "show", "base", backend="rbd", environ=environ)
        assert shown["cloned_from"] == image["direct_url"]
        assert ceph.pool_contents() == {"_base~base", "_base~base@snap"}
    else:  # rolled back: nothing left of the clone, so the service may delete its image
        assert ceph.pool_contents() == set()
        assert cli(root, "template", "show", "base", backend="rbd",
                   environ=environ).returncode == 1  # fmt: skip
        again = cli_json(root, "template", "add", "base", f"glance://{image['id']}",
                         "--format", "raw", backend="rbd", environ=environ)  # fmt: skip
        assert again["cloned_from"] == image["direct_url"]
    assert not any((root / "staging").iterdir())


def test_the_store_says_why_a_location_cannot_be_cloned(
    ceph: CephCluster, tmp_path: Path, glance_rbd_server: GlanceServer, image: dict[str, Any]
) -> None:
    backend = RbdBackend(str(tmp_path), ceph.ceph_config())
    store = RbdTemplateStore(str(tmp_path), backend)
    try:
        url = image["direct_url"]
        fsid = url.split("/")[2]
        other = url.replace(fsid, "00000000-0000-4000-8000-000000000000")
        assert store.clone_choice([url], "raw") == (url, None)
        assert store.clone_choice([other], "raw") == (
            None,
            f"{other} is in another Ceph cluster (this one is {fsid})",
        )
        assert store.clone_choice([other, url], "raw") == (url, None)
        assert store.clone_choice([url], "qcow2") == (
            None,
            "the image is qcow2; only raw images are cloned",
        )
        nowhere = f"rbd://{fsid}/no-such-pool/{image['id']}/snap"
        assert store.clone_choice([nowhere], "raw") == (
            None,
            f"{nowhere}: no pool no-such-pool in this cluster",
        )
        missing = url.replace("/snap", "/other")
        assert store.clone_choice([missing], "raw") == (
            None,
            f"{missing}: no such snapshot in this cluster",
        )
        # Locations of other stores, and the old form without a cluster id, are not clones.
        assert store.clone_choice(["file:///var/lib/glance/x", "rbd://image"], "raw") == (
            None,
            None,
        )
        assert store.clone_choice([], "raw") == (None, None)
    finally:
        backend.cluster.close()
