from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from diskledger.backends import Backend, Qcow2Backend, RawBackend, runner


@pytest.fixture(scope="session", autouse=True)
def qemu_tools() -> None:
    """The suite runs against the real qemu-img; without it, skip locally and fail under CI."""
    missing = [tool for tool in ("qemu-img", "qemu-io", "cp") if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (Debian package qemu-utils)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _assert_pinned(argv: Sequence[str]) -> None:
    """Every qemu-img call names the format; it never lets qemu-img guess it."""
    if os.path.basename(argv[0]) != "qemu-img":
        return
    if argv[1] == "snapshot":
        assert "--image-opts" in argv, argv
        assert argv[-1].startswith("driver=qcow2,file.filename=/"), argv
        return
    assert "-f" in argv, argv
    if argv[1] == "convert":
        assert "-O" in argv, argv
    if "-b" in argv:
        assert "-F" in argv, argv


@pytest.fixture(autouse=True)
def commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, ...]]]:
    """Records every command the backends run, checking that each qemu-img call pins a format."""
    calls: list[tuple[str, ...]] = []
    real = runner.run

    def recording(argv: Sequence[str], **options: Any) -> str:
        _assert_pinned(argv)
        calls.append(("prlimit", *argv) if options.get("untrusted") else tuple(argv))
        return real(argv, **options)

    monkeypatch.setattr(runner, "run", recording)
    yield calls


@pytest.fixture(params=["raw", "qcow2"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A raw or a qcow2 backend rooted at ``tmp_path``, for what only file backends do."""
    made: Backend = {"raw": RawBackend, "qcow2": Qcow2Backend}[request.param](str(tmp_path))
    return made
