"""The backend contract (``diskledger.testing.BackendContract``) on the file backends and the real
qemu-img, and what only file backends do.

The conftest's ``commands`` fixture checks every qemu-img call of every test here pins a format.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diskledger.backends import Backend, Qcow2Backend, RawBackend
from diskledger.testing import BackendContract, InspectingFileStorage, StorageAccess
from tests.backends.helpers import MiB


class TestRawContract(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return RawBackend(str(tmp_path))

    @pytest.fixture
    def storage(self, tmp_path: Path) -> StorageAccess:
        return InspectingFileStorage(tmp_path)


class TestQcow2Contract(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return Qcow2Backend(str(tmp_path))

    @pytest.fixture
    def storage(self, tmp_path: Path) -> StorageAccess:
        return InspectingFileStorage(tmp_path)


# -- what only file backends do (``backend`` is the conftest's: raw and qcow2) ----------------


def test_a_file_backend_keeps_disks_in_its_own_format(backend: Backend) -> None:
    assert backend.disk_format == backend.name


def test_probe_does_not_trust_a_temporary_file(backend: Backend) -> None:
    """A half-written temporary is evidence, not an image: it exists, with no format."""
    location = backend.disk_location("vm1", "disk0")
    temp, final = backend.create_artifacts(location, "op1")
    os.makedirs(os.path.dirname(location))
    Path(temp.location).write_bytes(b"half")

    temp_seen, final_seen = backend.probe([temp, final])

    assert temp_seen.exists and temp_seen.format is None and not final_seen.exists
    backend.remove([temp, final])
    assert not any(o.exists for o in backend.probe([temp, final]))
    backend.create(location, "op1", size=MiB, template=None)
    (final_seen,) = backend.probe([final])
    assert final_seen.exists and final_seen.allocated is not None


def test_delete_removes_the_instance_directory(backend: Backend, tmp_path: Path) -> None:
    location = backend.disk_location("vm1", "disk0")
    backend.create(location, "op-create", size=MiB, template=None)
    fmt = backend.disk_format
    backend.snapshot(location, fmt, "s1", "op-snap")
    backend.snapshot(location, fmt, "s2", "op-snap2")

    backend.delete(location, fmt, ["s1", "s2"])
    backend.delete(location, fmt, ["s1", "s2"])

    assert list((tmp_path / "disks").iterdir()) == []
