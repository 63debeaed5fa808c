"""A full file system, for real: the root on a 48 MiB tmpfs, and copies that do not fit.

The copy fails with ENOSPC part way; the CLI must say so in one line and exit 1, the compensation
must remove the partial copy (the space comes back), and the ledger must record the failure and
verify clean. Needs root to mount; elsewhere it skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.recovery.helpers import (
    MiB,
    assert_consistent,
    cli,
    cli_json,
    error_line,
    unavailable,
    write_data_image,
)

FS_MIB = 48
NO_SPACE = "No space left on device"


@pytest.fixture
def small_fs(tmp_path: Path, qemu_img: None) -> Iterator[Path]:
    """A tmpfs of FS_MIB MiB mounted under the test's directory, unmounted after."""
    if os.geteuid() != 0:
        unavailable("mounting a size-limited tmpfs needs root")
    mountpoint = tmp_path / "small-fs"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_MIB}m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def data_file(directory: Path, name: str, mib: int) -> Path:
    """A raw image of ``mib`` MiB that is all data: its copy takes exactly that much space."""
    return write_data_image(directory / name, mib * MiB, chunk=MiB, every=MiB, seed=mib)


def test_copies_that_do_not_fit_fail_cleanly(small_fs: Path, tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    root = small_fs / "root"

    # 4 + 28 MiB of templates and a 4 MiB disk fit; a second copy of the 28 MiB one does not,
    # and neither does a 16 MiB template.
    cli_json(
        root, "template", "add", "small", str(data_file(sources, "small", 4)), "--format", "raw"
    )
    cli_json(root, "template", "add", "big", str(data_file(sources, "big", 28)), "--format", "raw")
    assert (
        cli_json(root, "disk", "create", "vm-1/root", "--template", "small")["state"] == "created"
    )
    free = free_bytes(small_fs)
    assert free < 28 * MiB

    failed = cli(root, "disk", "create", "vm-2/root", "--template", "big")
    assert (failed.returncode, failed.stdout) == (1, "")
    assert NO_SPACE in error_line(failed.stderr)
    assert free_bytes(small_fs) > free - MiB  # the partial copy is gone (the ledger grew a bit)
    trail = [e["type"] for e in cli_json(root, "history", "vm-2/root")]
    assert trail == [
        "disk.template-bound",
        "disk.create.started",
        "disk.create.failed",
        "disk.template-released",
    ]
    assert cli_json(root, "disk", "show", "vm-2/root")["state"] == "absent"

    huge = data_file(sources, "huge", 16)
    failed = cli(root, "template", "add", "huge", str(huge), "--format", "raw")
    assert (failed.returncode, failed.stdout) == (1, "")
    assert NO_SPACE in error_line(failed.stderr)
    fetch = [e["type"] for e in cli_json(root, "history") if e["stream"].endswith("/huge")]
    assert fetch == ["template.fetch.started", "template.fetch.failed"]

    assert_consistent(root)
    assert sorted(p.name for p in (root / "templates").iterdir()) == ["big", "small"]
    assert [d["disk"] for d in cli_json(root, "disk", "list")] == ["vm-1/root"]
