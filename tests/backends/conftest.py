from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from diskledger.backends import Backend, TemplateCache, TemplateSource, backend_for, runner
from tests.backends.helpers import MiB, make_image


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
    return backend_for(request.param, str(tmp_path))


@pytest.fixture(params=["raw", "qcow2"])
def template(request: pytest.FixtureRequest, tmp_path: Path) -> TemplateSource:
    """A cached 1 MiB template holding 0x11 in its first 64 KiB, in raw or qcow2."""
    fmt = request.param
    source = tmp_path / "sources" / f"template.{fmt}"
    source.parent.mkdir()
    make_image(source, fmt, MiB, pattern=0x11)
    seen = TemplateCache(str(tmp_path)).import_file(str(source), fmt, f"tpl-{fmt}", "fetch1")
    assert seen.size == MiB
    return TemplateSource(seen.artifact.location, fmt, MiB)
