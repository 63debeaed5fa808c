"""The backend registry: built-in names, programmatic registration, settings from the
environment, and a third-party backend found through a really installed entry point."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from diskledger.backends import (
    Backend,
    BackendSpec,
    CephConfig,
    FileSettings,
    RawBackend,
    RbdBackend,
    TemplateCache,
    TemplateStore,
    backend_for,
    registry,
    template_store_for,
)
from diskledger.backends.contract import Authenticates
from diskledger.errors import InvalidInput, UnknownBackend
from tests.backends.helpers import MiB

BUILT_IN = ("raw", "qcow2", "rbd", "lvm", "parallels")


class TinyBackend(RawBackend):
    name = "tiny"


def _make_tiny(root: str, settings: object) -> Backend:
    assert isinstance(settings, FileSettings)
    return TinyBackend(root, preallocate=settings.preallocate)


def _tiny_templates(backend: Backend, root: str, max_virtual_size: int) -> TemplateStore:
    return TemplateCache(root, max_virtual_size=max_virtual_size)


TINY = BackendSpec("tiny", FileSettings.from_environ, _make_tiny, _tiny_templates)


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made by a test stay in that test."""
    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "_specs", {})
    yield


def test_the_built_in_backends_come_first_in_order() -> None:
    assert registry.names()[: len(BUILT_IN)] == BUILT_IN
    for name in BUILT_IN:
        assert registry.spec(name).name == name


@pytest.mark.parametrize("name", ["raw", "qcow2"])
def test_a_built_in_file_backend_is_made_from_its_settings(tmp_path: Path, name: str) -> None:
    spec = registry.spec(name)
    backend = spec.make(str(tmp_path), spec.load_settings({"DISKLEDGER_PREALLOCATE": "space"}))
    assert isinstance(backend, Backend) and backend.name == name and backend.preallocates
    store = spec.templates(backend, str(tmp_path), 5 * MiB)
    assert isinstance(store, TemplateCache) and store.max_virtual_size == 5 * MiB


def test_the_rbd_backend_is_made_from_a_ceph_configuration(tmp_path: Path) -> None:
    spec = registry.spec("rbd")
    config = spec.load_settings({"DISKLEDGER_RBD_POOL": "disks"})
    backend = spec.make(str(tmp_path), config)  # connects only when first used
    assert isinstance(backend, RbdBackend) and backend.config.pool == "disks"
    store = spec.templates(backend, str(tmp_path), 7 * MiB)
    assert store.location("t1") == "disks/_base~t1"
    with pytest.raises(InvalidInput, match=r"^the rbd backend needs a Ceph configuration"):
        spec.make(str(tmp_path), None)


def test_an_unknown_name_is_refused_with_the_names_known() -> None:
    with pytest.raises(UnknownBackend) as caught:
        registry.spec("ploop")
    assert str(caught.value) == (
        "unknown backend 'ploop'; choose one of: raw, qcow2, rbd, lvm, parallels"
    )
    assert caught.value.name == "ploop" and caught.value.known == registry.names()
    assert isinstance(caught.value, InvalidInput)
    with pytest.raises(
        UnknownBackend, match=r"^unknown backend 'ploop'; choose one of: raw, qcow2"
    ):
        backend_for("ploop", "/nonexistent")


@pytest.mark.usefixtures("isolated_registry")
def test_a_registered_backend_is_found_by_name_and_makes_disks(tmp_path: Path) -> None:
    registry.register(TINY)
    registry.register(TINY)  # the same spec again: no-op

    assert registry.spec("tiny") is TINY
    assert registry.names() == (*BUILT_IN, "tiny")
    backend = backend_for("tiny", str(tmp_path))
    location = backend.disk_location("vm-1", "root")
    seen = backend.create(location, "op-1", size=MiB, template=None)
    assert seen.exists and seen.size == MiB and os.path.isfile(location)
    assert isinstance(template_store_for(backend, str(tmp_path)), TemplateCache)


@pytest.mark.usefixtures("isolated_registry")
def test_a_name_is_registered_once() -> None:
    registry.register(TINY)
    other = BackendSpec("tiny", FileSettings.from_environ, _make_tiny, _tiny_templates)
    assert other == TINY
    registry.register(other)  # equal: the same declaration
    with pytest.raises(InvalidInput, match=r"^a backend named 'tiny' is registered already$"):
        registry.register(BackendSpec("tiny", lambda env: None, _make_tiny, _tiny_templates))
    with pytest.raises(InvalidInput, match=r"^a backend named 'raw' is registered already$"):
        registry.register(
            BackendSpec("raw", FileSettings.from_environ, _make_tiny, _tiny_templates)
        )
    registry.register(registry.spec("raw"))  # a built-in's own spec is the same spec


def test_a_backend_the_registry_does_not_know_keeps_templates_in_the_local_cache(
    tmp_path: Path,
) -> None:
    """As before the registry: a custom backend (the harness's) gets the file template cache."""
    assert isinstance(template_store_for(TinyBackend(str(tmp_path)), str(tmp_path)), TemplateCache)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"DISKLEDGER_PREALLOCATE": "full"},
            "DISKLEDGER_PREALLOCATE='full' is not one of none, space",
        ),
    ],
)
@pytest.mark.parametrize("name", ["raw", "qcow2"])
def test_bad_file_settings_are_refused(name: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        registry.spec(name).load_settings(environ)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"DISKLEDGER_CEPH_OP_TIMEOUT": "soon"},
            "DISKLEDGER_CEPH_OP_TIMEOUT='soon' is not a number of seconds",
        ),
        (
            {"DISKLEDGER_CEPH_RETRY_BUDGET": "0"},
            "DISKLEDGER_CEPH_RETRY_BUDGET='0' is not between 0 and 3600 seconds",
        ),
        (
            {"DISKLEDGER_CEPH_OP_TIMEOUT": "3601"},
            "DISKLEDGER_CEPH_OP_TIMEOUT='3601' is not between 0 and 3600 seconds",
        ),
    ],
)
def test_bad_ceph_settings_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        registry.spec("rbd").load_settings(environ)
    assert str(caught.value) == message


def test_settings_default_and_read_every_variable() -> None:
    assert registry.spec("raw").load_settings({}) == FileSettings(preallocate=False)
    assert (
        registry.spec("qcow2").load_settings({"DISKLEDGER_PREALLOCATE": "none"}) == FileSettings()
    )
    assert registry.spec("rbd").load_settings({}) == CephConfig(
        conf="/etc/ceph/ceph.conf", pool="rbd"
    )
    environ = {
        "DISKLEDGER_CEPH_CONF": "/etc/ceph/other.conf",
        "DISKLEDGER_RBD_POOL": "disks",
        "DISKLEDGER_RBD_USER": "diskledger",
        "DISKLEDGER_CEPH_KEYRING": "/etc/ceph/keyring",
        "DISKLEDGER_RBD_SNAPSHOT_POOL": "images",
        "DISKLEDGER_CEPH_OP_TIMEOUT": "2.5",
        "DISKLEDGER_CEPH_RETRY_BUDGET": "12",
    }
    assert registry.spec("rbd").load_settings(environ) == CephConfig(
        conf="/etc/ceph/other.conf",
        pool="disks",
        user="diskledger",
        keyring="/etc/ceph/keyring",
        snapshot_pool="images",
        op_timeout=2.5,
        retry_budget=12.0,
        busy_budget=12.0,
    )


def _rbd_with_key(tmp_path: Path, key: str, user: str | None = "diskledger") -> RbdBackend:
    keyring = tmp_path / "keyring"
    keyring.write_text(f"[client.diskledger]\n\tkey = {key}\n")
    return RbdBackend(
        str(tmp_path), CephConfig("ceph.conf", "rbd", user=user, keyring=str(keyring))
    )


def test_the_rbd_backend_gives_its_cephx_credentials(tmp_path: Path) -> None:
    secret = bytes(range(16))
    backend = _rbd_with_key(tmp_path, base64.b64encode(secret).decode())
    assert isinstance(backend, Authenticates)
    assert backend.client_credentials() == ("diskledger", secret)
    assert backend.client_user == "diskledger"
    nobody = _rbd_with_key(tmp_path, "irrelevant", user=None)
    assert nobody.client_credentials() is None and nobody.client_user is None
    assert not isinstance(RawBackend(str(tmp_path)), Authenticates)


def test_a_key_that_is_not_base64_is_refused(tmp_path: Path) -> None:
    backend = _rbd_with_key(tmp_path, "not*base64")
    with pytest.raises(InvalidInput) as caught:
        backend.client_credentials()
    assert str(caught.value).startswith(
        f"the key of client.diskledger in {tmp_path / 'keyring'} is not base64: "
    )


def test_the_user_is_known_without_its_keyring(tmp_path: Path) -> None:
    """Removing the secret needs only the user's name; reading the key needs the keyring."""
    backend = RbdBackend(str(tmp_path), CephConfig("ceph.conf", "rbd", user="diskledger"))
    assert backend.client_user == "diskledger"
    with pytest.raises(InvalidInput, match=r"^a libvirt secret needs the RBD user and its keyring"):
        backend.client_credentials()


# -- a third-party backend, installed --------------------------------------------------------

TINY_MODULE = """
from diskledger.backends import BackendSpec, FileSettings, RawBackend, TemplateCache


class TinyBackend(RawBackend):
    name = "tiny"


def make(root, settings):
    return TinyBackend(root, preallocate=settings.preallocate)


SPEC = BackendSpec(
    name="tiny",
    load_settings=FileSettings.from_environ,
    make=make,
    templates=lambda backend, root, size: TemplateCache(root, max_virtual_size=size),
)
"""

TINY_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "tiny-backend"
version = "0.1"

[project.entry-points."diskledger.backends"]
tiny = "tiny_backend:SPEC"
broken = "tiny_backend_missing:SPEC"
notaspec = "tiny_backend:TinyBackend"
misnamed = "tiny_backend:SPEC"
"""

PROBE = """
import json, sys
from diskledger.backends import backend_for, registry

root = sys.argv[1]
found = {"names": list(registry.names())}
spec = registry.spec("tiny")
backend = spec.make(root, spec.load_settings({"DISKLEDGER_PREALLOCATE": "space"}))
location = backend.disk_location("vm-1", "root")
seen = backend.create(location, "op-1", size=1 << 20, template=None)
found["tiny"] = [type(backend).__name__, backend.name, backend.preallocates, location, seen.size]
found["again"] = registry.spec("tiny") is spec and backend_for("tiny", root).name == "tiny"
for name in ("broken", "notaspec", "misnamed", "ploop"):
    try:
        registry.spec(name)
    except Exception as exc:
        cause = exc.__cause__
        found[name] = [type(exc).__name__, str(exc), type(cause).__name__ if cause else None]
print(json.dumps(found))
"""


def _venv_with(package: Path, venv: Path) -> Path:
    """A new virtual environment with ``package`` pip-installed into it, which also sees this
    interpreter's site-packages (diskledger and its dependencies): ``--system-site-packages``
    reaches the base interpreter's, not this virtual environment's, so it is chained in with a
    ``.pth`` line."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
    )
    python = venv / "bin" / "python"
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sysconfig.get_path("purelib")
    Path(own, "_diskledger_dev.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            package,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return python


def _probe(python: Path, root: Path, environ: Mapping[str, str]) -> dict[str, object]:
    done = subprocess.run(
        [python, "-c", PROBE, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(environ),
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout)
    return found


def test_an_installed_distribution_adds_a_backend_through_its_entry_point(tmp_path: Path) -> None:
    package = tmp_path / "tiny"
    package.mkdir()
    (package / "tiny_backend.py").write_text(TINY_MODULE)
    (package / "pyproject.toml").write_text(TINY_PYPROJECT)
    python = _venv_with(package, tmp_path / "venv")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}

    found = _probe(python, tmp_path / "root", environ)

    assert found["names"] == [*BUILT_IN, "broken", "misnamed", "notaspec", "tiny"]
    location = str(tmp_path / "root" / "disks" / "vm-1" / "root")
    assert found["tiny"] == ["TinyBackend", "tiny", True, location, MiB]
    assert os.path.getsize(location) == MiB
    assert found["again"] is True
    ours = "of tiny-backend 0.1"
    assert found["broken"] == [
        "InvalidInput",
        "backend 'broken': cannot load entry point broken = tiny_backend_missing:SPEC "
        f"{ours}: ModuleNotFoundError: No module named 'tiny_backend_missing'",
        "ModuleNotFoundError",
    ]
    assert found["notaspec"] == [
        "InvalidInput",
        f"backend 'notaspec': entry point notaspec = tiny_backend:TinyBackend {ours} is a type, "
        "not a diskledger.backends.registry.BackendSpec",
        None,
    ]
    assert found["misnamed"] == [
        "InvalidInput",
        f"backend 'misnamed': entry point misnamed = tiny_backend:SPEC {ours} declares the "
        "backend 'tiny'",
        None,
    ]
    assert found["ploop"] == [
        "UnknownBackend",
        "unknown backend 'ploop'; choose one of: raw, qcow2, rbd, lvm, parallels, broken, misnamed, "
        "notaspec, tiny",
        None,
    ]
