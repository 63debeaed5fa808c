"""The template cache across processes: fetched once however many ask, taken over when the
fetcher dies. Real processes, one ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diskledger.engine import Config, Engine

SCRIPT = str(Path(sys.executable).with_name("diskledger"))


@pytest.fixture
def big_template(tmp_path: Path) -> Path:
    """64 MiB of raw data with real bytes every 4 MiB, so a copy takes a moment."""
    path = tmp_path / "big.raw"
    with path.open("wb") as handle:
        for offset in range(0, 64 << 20, 4 << 20):
            handle.seek(offset)
            handle.write(os.urandom(1 << 20))
        handle.truncate(64 << 20)
    return path


def cli(root: Path, *argv: str, fault: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "DISKLEDGER_ROOT": str(root), "DISKLEDGER_BACKEND": "raw"}
    env.pop("DISKLEDGER_FAULT", None)
    if fault:
        env["DISKLEDGER_FAULT"] = fault
    return subprocess.Popen(
        [SCRIPT, *argv, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def create_from_uncached(
    root: Path, disk: str, source: Path, **kwargs: str
) -> subprocess.Popen[str]:
    return cli(
        root,
        "disk",
        "create",
        disk,
        "--template",
        "base",
        "--template-source",
        str(source),
        "--template-format",
        "raw",
        **kwargs,
    )


def fetch_events(root: Path) -> list[str]:
    with Engine.open(Config.load(root=root, environ={}, recover=False)) as engine:
        return [e.type for e in engine.history() if e.stream.startswith("template:")]


def test_eight_processes_fetch_one_uncached_template_once(
    tmp_path: Path, big_template: Path
) -> None:
    root = tmp_path / "root"
    procs = [create_from_uncached(root, f"vm-{n}/root", big_template) for n in range(8)]
    results = [
        (
            p.wait(timeout=120),
            p.stdout.read() if p.stdout else "",
            p.stderr.read() if p.stderr else "",
        )
        for p in procs
    ]
    for code, out, err in results:
        assert code == 0, err
        assert json.loads(out)["state"] == "created"
    types = fetch_events(root)
    assert types.count("template.fetch.started") == 1, types
    assert types.count("template.fetch.completed") == 1
    with Engine.open(Config.load(root=root, environ={}, recover=False)) as engine:
        assert len(engine.template_users("base")) == 8
        assert engine.verify().ok


def test_a_killed_fetcher_is_taken_over(tmp_path: Path, big_template: Path) -> None:
    root = tmp_path / "root"
    fetcher = create_from_uncached(root, "vm-1/root", big_template, fault="fetch@mid-effect")
    assert fetcher.wait(timeout=60) == -9
    leftovers = [p.name for p in (root / "templates").iterdir()]
    assert any(".tmp-" in name for name in leftovers), "the killed fetcher left its partial copy"
    taker = create_from_uncached(root, "vm-2/root", big_template)
    assert taker.wait(timeout=120) == 0, taker.stderr.read() if taker.stderr else ""
    types = fetch_events(root)
    assert types == [
        "template.fetch.started",
        "template.fetch.failed",
        "template.fetch.started",
        "template.fetch.completed",
    ], types
    assert [p.name for p in (root / "templates").iterdir()] == ["base"]
    with Engine.open(Config.load(root=root, environ={}, recover=False)) as engine:
        assert engine.verify().ok


def test_ensure_template_does_not_spin_on_a_refusal(tmp_path: Path, big_template: Path) -> None:
    """A cached file nobody owns is a refusal, not a race to wait out."""
    from diskledger.errors import Conflict

    root = tmp_path / "root"
    (root / "templates").mkdir(parents=True)
    (root / "templates" / "base").write_bytes(b"planted")
    config = Config.load(root=root, backend="raw", environ={})
    with Engine.open(config) as engine, pytest.raises(Conflict, match="does not own"):
        engine.ensure_template("base", big_template, "raw", timeout=5)
