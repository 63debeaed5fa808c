"""docs/cli.md shows what the commands print now: its session is run again and compared."""

from __future__ import annotations

from pathlib import Path

from diskledger.cli.transcript import BEGIN, DOC, END, SESSION, render


def test_the_session_in_docs_cli_is_what_the_commands_print_now(qemu_img: None) -> None:
    shown = DOC.read_text().partition(BEGIN + "\n")[2].partition(END)[0]
    assert shown.strip() == render().strip(), (
        "docs/cli.md's session is stale: run `python -m diskledger.cli.transcript`"
    )


def test_the_session_shows_every_command_an_operator_runs_on_one_host() -> None:
    shown = {tuple(w for w in c if not w.startswith(("!", "-")))[:2] for c in SESSION}
    for command in [
        ("template", "add"),
        ("template", "list"),
        ("template", "show"),
        ("status",),
        ("recover",),
        ("verify",),
        ("history", "vm-1/root"),
        *(("disk", a) for a in ("create", "resize", "snapshot", "rollback", "remove-snapshot")),
        *(("disk", a) for a in ("export", "import", "delete", "list", "show", "xml")),
    ]:
        assert any(s[: len(command)] == command for s in shown), command
    assert Path(DOC).name == "cli.md"
