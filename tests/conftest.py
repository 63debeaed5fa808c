"""Fixtures shared by the whole suite. Real components only; see tests/support/."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.fixtures import postgres_server, postgres_url  # noqa: F401

IN_CI = os.environ.get("CI") == "true"


def require_tool(tool: str, package: str) -> None:
    """Skip when ``tool`` is missing, except under CI=true, where that is a failure."""
    if shutil.which(tool) is None:
        reason = f"{tool} is not installed (Debian package {package})"
        if IN_CI:
            pytest.fail(f"{reason}; under CI=true a missing component is a failure", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """A fresh, empty ledger on each database the store supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def qemu_img() -> None:
    require_tool("qemu-img", "qemu-utils")


@pytest.fixture(scope="session")
def template_files(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> dict[str, Path]:
    """A 64 MiB raw and a 64 MiB qcow2 image with known bytes in the first sector."""
    directory = tmp_path_factory.mktemp("templates")
    raw = directory / "base.raw"
    with raw.open("wb") as handle:
        handle.write(b"TEMPLATE".ljust(512, b"\0"))
        handle.truncate(64 << 20)
    qcow2 = directory / "base.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    return {"raw": raw, "qcow2": qcow2}
