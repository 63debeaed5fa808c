"""What a command line process imports and builds: only what its command needs.

An orchestrator runs ``diskledger`` once per call, so every import and every subparser is paid on
every call (docs/performance.md, the cli benchmark). These tests pin what was made lazy: reading a
disk or making one from a cached template imports neither oslo.utils' format inspector (only
bringing an image in needs it), nor libvirt, nor the backends that are not configured; importing
``diskledger`` imports none of its parts; and the parser ``main`` builds for one command is that
command's part of the whole parser. No timings here: ``python -m benchmarks cli`` measures them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from diskledger.cli import build_parser

# Runs one command in a fresh interpreter, as the console script does, and prints the modules
# the command imported (the command's own output goes to stderr).
RUN = """\
import json, sys
sys.stdout, out = sys.stderr, sys.stdout
sys.argv = ["diskledger", *sys.argv[1:]]
from diskledger.cli import main
status = main()
json.dump({"status": status, "modules": sorted(sys.modules)}, out)
"""

NEVER_FOR_A_DISK = (
    "oslo_utils",  # the format inspector: bringing an image in (template add, disk import)
    "libvirt",  # attach, detach, and recovery of those
    "diskledger.backends.rbd",
    "diskledger.backends.lvm",
    "diskledger.backends.parallels",
    "diskledger.backends.raw",
    "diskledger.engine.verify",  # the verify command
    "diskledger.engine.agent",  # the agent command
)


def run(root: Path, *argv: str) -> set[str]:
    env = {**os.environ, "DISKLEDGER_ROOT": str(root), "DISKLEDGER_BACKEND": "qcow2"}
    done = subprocess.run(
        [sys.executable, "-c", RUN, *argv, "--json"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["status"] == 0, done.stderr
    return set(result["modules"])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    here = tmp_path_factory.mktemp("startup")
    source = here / "source.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(source), "1M"], check=True)
    run(here / "root", "template", "add", "base", str(source), "--format", "qcow2")
    return here / "root"


def test_creating_a_disk_from_a_cached_template_imports_only_what_it_uses(root: Path) -> None:
    imported = run(root, "disk", "create", "vm/a", "--template", "base")
    assert "diskledger.backends.qcow2" in imported  # the configured backend: it is used
    assert sorted(imported & set(NEVER_FOR_A_DISK)) == []


def test_showing_and_listing_disks_import_only_what_they_use(root: Path) -> None:
    run(root, "disk", "create", "vm/b", "--template", "base")
    for argv in (("disk", "show", "vm/b"), ("disk", "list"), ("history", "vm/b")):
        assert sorted(run(root, *argv) & set(NEVER_FOR_A_DISK)) == [], argv


def test_importing_the_package_imports_none_of_its_parts() -> None:
    code = "import sys, diskledger; print(sorted(m for m in sys.modules if m.startswith('disk')))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert done.stdout.strip() == "['diskledger', 'diskledger.errors', 'diskledger.lazy']"


def test_the_package_still_gives_every_name_it_exports() -> None:
    code = (
        "import sys, diskledger\n"
        "assert 'diskledger.engine' not in sys.modules\n"
        "from diskledger import Engine, Config, LocalKeyDirectory\n"
        "import diskledger.engine\n"
        "assert Engine is diskledger.engine.Engine and Config is diskledger.engine.Config\n"
        "assert set(diskledger.__all__) <= set(dir(diskledger))\n"
        "from diskledger.backends import Qcow2Backend, TemplateCache, CephConfig\n"
        "from diskledger.backends.qcow2 import Qcow2Backend as Q\n"
        "assert Q is Qcow2Backend\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        import diskledger

        _ = diskledger.NoSuchName  # type: ignore[attr-defined]


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: dict[str, argparse.ArgumentParser] = dict(action.choices)
    return found


def _helps(parser: argparse.ArgumentParser, path: str = "") -> dict[str, str]:
    """The help of ``parser`` and of every parser under it, by command path."""
    helps = {path: parser.format_help()}
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subparsers:
        for name, sub in action.choices.items():
            helps.update(_helps(sub, f"{path} {name}".strip()))
    return helps


def test_the_parser_for_one_command_is_that_command_of_the_whole_parser() -> None:
    whole = build_parser()
    commands = _commands(whole)
    assert {"disk", "template", "history", "watch", "members", "demo"} <= set(commands)
    for name, sub in commands.items():
        alone = build_parser([name, "--json"])
        assert set(_commands(alone)) == {name}
        assert _helps(_commands(alone)[name]) == _helps(sub), name
        assert alone.format_usage() == whole.format_usage()
        if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            continue
        for action, leaf in _commands(sub).items():  # disk show, template add, ...
            narrow = build_parser([name, action, "vm/a"])
            assert set(_commands(narrow)) == {name}
            assert set(_commands(_commands(narrow)[name])) == {action}
            assert _helps(_commands(_commands(narrow)[name])[action]) == _helps(leaf)


@pytest.mark.parametrize(
    ("words", "whole"),
    [
        ([], ()),
        (["-h"], ()),
        (["--json", "disk"], ()),
        (["dsik", "show"], ()),
        (["disk"], ("disk",)),
        (["disk", "-h"], ("disk",)),
        (["disk", "shwo", "vm/a"], ("disk",)),
    ],
)
def test_without_a_command_or_an_action_the_whole_of_that_part_is_built(
    words: list[str], whole: tuple[str, ...]
) -> None:
    built = build_parser(words)
    if not whole:
        assert _helps(built) == _helps(build_parser())
    else:
        assert set(_commands(built)) == set(whole)
        assert _helps(built) == _helps(build_parser(whole))
        (group,) = whole
        assert _helps(_commands(built)[group]) == _helps(_commands(build_parser())[group])


@pytest.mark.parametrize(
    "argv",
    [
        ["disk", "show", "vm/a", "--json"],
        ["disk", "create", "vm/a", "--template", "t", "--size", "1G", "--op-id", "x"],
        ["history"],
        ["template", "add", "t", "f", "--format", "qcow2"],
        ["watch", "--from", "3"],
    ],
)
def test_a_narrowed_parser_parses_as_the_whole_one(argv: list[str]) -> None:
    assert build_parser(argv).parse_args(argv) == build_parser().parse_args(argv)
