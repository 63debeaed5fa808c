"""Helpers for the backend tests: images made and read with qemu-img/qemu-io directly."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def make_image(path: Path, fmt: str, size: int, *, pattern: int | None = None) -> None:
    subprocess.run(
        ["qemu-img", "create", "-f", fmt, str(path), str(size)], check=True, capture_output=True
    )
    if pattern is not None:
        write_pattern(str(path), fmt, pattern)


def qemu_io(path: str, fmt: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["qemu-io", "-f", fmt, "-c", command, path], capture_output=True, text=True, check=False
    )


def keyed_io(path: str, key: Path, command: str) -> subprocess.CompletedProcess[str]:
    """qemu-io on an encrypted qcow2 image, the key given as a secret file."""
    return subprocess.run(
        [
            "qemu-io",
            "--object",
            f"secret,id=k0,file={key},format=raw",
            "--image-opts",
            f"driver=qcow2,file.filename={path},encrypt.key-secret=k0",
            "-c",
            command,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def write_pattern(path: str, fmt: str, pattern: int, offset: int = 0) -> None:
    done = qemu_io(path, fmt, f"write -P {pattern:#x} {offset} 64k")
    assert done.returncode == 0, done.stderr


def has_pattern(path: str, fmt: str, pattern: int, offset: int = 0) -> bool:
    done = qemu_io(path, fmt, f"read -P {pattern:#x} {offset} 64k")
    return done.returncode == 0 and "verification failed" not in done.stdout


def info(path: str, fmt: str) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "-f", fmt, "--output=json", "-U", path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]
