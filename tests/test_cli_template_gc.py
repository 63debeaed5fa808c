"""``diskledger template gc`` on qcow2, raw and rbd (the ``cli`` fixture of tests/test_cli.py:
rbd on the dev Ceph cluster): what it removes and keeps, ``--dry-run``, ``--json``, the history
it leaves, a template added again, and bad durations refused with one line, nothing changed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.recovery.helpers import PoolView, template_location
from tests.support.ceph import POOL
from tests.test_cli import Cli, cli  # noqa: F401 (the fixture)


def add(cli: Cli, template: str, files: dict[str, Path]) -> None:  # noqa: F811
    fmt = "raw" if cli.backend == "rbd" else "qcow2"
    cli.json("template", "add", template, str(files[fmt]), "--format", fmt)


def stored(cli: Cli, template: str) -> bool:  # noqa: F811
    """Whether the template's file (or image, with its protected snapshot) exists."""
    location = template_location(cli.root, template, cli.backend)
    if cli.ceph is None:
        return Path(location).exists()
    with PoolView(cli.ceph) as pools:
        return location.partition("/")[2] in pools.contents(POOL)


def test_gc_removes_unused_keeps_used_and_records_each_removal(
    cli: Cli,  # noqa: F811
    template_files: dict[str, Path],
) -> None:
    add(cli, "unused", template_files)
    add(cli, "used", template_files)
    cli.json("disk", "create", "vm-1/root", "--template", "used")

    # Young: nothing goes with the default age (24 h).
    code, out, err = cli.run("template", "gc")
    assert code == 0, err
    assert re.search(r"^kept template unused: unused for \d+s, less than 1d$", out, re.M), out
    assert "kept template used: in use by vm-1/root" in out

    before = cli.fingerprint()
    code, out, err = cli.run("template", "gc", "--older-than", "0", "--dry-run")
    assert code == 0, err
    assert out.splitlines()[0].startswith("would remove template unused: unused for ")
    assert cli.fingerprint() == before  # a dry run changes nothing

    report = cli.json("template", "gc", "--older-than", "0")
    actions = {t["template"]: t["action"] for t in report["templates"]}
    assert actions == {"unused": "removed", "used": "kept"}
    assert {t["template"]: t["users"] for t in report["templates"]}["used"] == ["vm-1/root"]
    assert [t["unused_since"] is None for t in report["templates"]] == [False, True]
    assert report["older_than"] == 0 and report["dry_run"] is False
    assert not stored(cli, "unused") and stored(cli, "used")
    assert [t["template"] for t in cli.json("template", "list")] == ["used"]

    types = [e["type"] for e in cli.json("history")]
    assert types[-2:] == ["template.remove.started", "template.remove.completed"]
    assert cli.json("verify")["ok"] is True

    # Added again, it is a template like any other.
    add(cli, "unused", template_files)
    cli.json("disk", "create", "vm-2/root", "--template", "unused")
    assert stored(cli, "unused")
    assert cli.json("template", "gc", "--older-than", "0")["templates"][0]["action"] == "kept"


def test_a_template_whose_disks_are_deleted_is_collected(
    cli: Cli,  # noqa: F811
    template_files: dict[str, Path],
) -> None:
    add(cli, "base", template_files)
    cli.json("disk", "create", "vm-1/root", "--template", "base")
    cli.json("disk", "delete", "vm-1/root")
    code, out, err = cli.run("template", "gc", "--older-than", "90s")
    assert code == 0, err
    assert re.fullmatch(r"kept template base: unused for \d+s, less than 90s\n", out), out
    code, out, err = cli.run("template", "gc", "--older-than", "0s")
    assert code == 0, err
    assert out.startswith("removed template base: unused for ")
    assert not stored(cli, "base")
    assert cli.json("verify")["ok"] is True


@pytest.mark.parametrize("duration", ["5x", "h", "-5m", "1h30m", "", "7 d"])
def test_bad_durations_are_refused_with_one_line_and_nothing_changed(
    cli: Cli,  # noqa: F811
    template_files: dict[str, Path],
    duration: str,
) -> None:
    add(cli, "base", template_files)
    before = cli.fingerprint()
    code, out, err = cli.run("template", "gc", "--older-than", duration)
    assert code == 1
    assert out == ""
    assert err == (
        f"diskledger: error: invalid duration {duration!r}: give seconds or a number with s, m, "
        "h or d (e.g. 24h)\n"
    )
    assert cli.fingerprint() == before
    assert stored(cli, "base")


def test_remove_takes_one_unused_template_now_and_refuses_one_in_use(
    cli: Cli,  # noqa: F811
    template_files: dict[str, Path],
) -> None:
    add(cli, "unused", template_files)
    add(cli, "used", template_files)
    cli.json("disk", "create", "vm-1/root", "--template", "used")
    code, out, err = cli.run("template", "remove", "unused")
    assert code == 0, err
    assert re.fullmatch(r"removed template unused, op [0-9a-f]{8}\n", out), out
    assert not stored(cli, "unused")

    before = cli.fingerprint()
    for template, why in [
        ("used", "template used is in use by disk vm-1/root"),
        ("unused", "no template unused is cached"),
    ]:
        code, out, err = cli.run("template", "remove", template)
        assert (code, out) == (1, "")
        assert err.startswith("diskledger: error: ") and err.count("\n") == 1, err
        assert why in err, err
    assert cli.fingerprint() == before
    assert stored(cli, "used")
