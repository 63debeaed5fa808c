"""``diskledger(1)``, generated from the parser: ``python -m diskledger.cli.manpage`` prints it as
roff. ``docs/diskledger.1`` is its output, checked in (a test keeps the two equal).

Every command and its options come from ``build_parser()``; the options every command shares
(and those of every command that changes something) are described once. The page carries no
date or version, so that it changes only when the command line does.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence

__all__ = ["render"]

_WIDE = 10_000
"""Usage lines are formatted on one line whatever the terminal ($COLUMNS): groff fills them."""

_ENVIRONMENT: Sequence[tuple[str, str]] = (
    (
        "DISKLEDGER_ROOT",
        "Where local artifacts live: the SQLite ledger, file disks, the template cache "
        "(default /var/lib/diskledger). The --root option overrides it.",
    ),
    (
        "DISKLEDGER_LEDGER",
        "The SQLAlchemy URL of the ledger (default sqlite:///$DISKLEDGER_ROOT/ledger.db; "
        "postgresql+psycopg://... for a ledger several hosts share). The --ledger option "
        "overrides it.",
    ),
    (
        "DISKLEDGER_BACKEND",
        "The disk backend: {backends}, or one installed as a package (default qcow2). "
        "The --backend option overrides it.",
    ),
    ("DISKLEDGER_HOST", "The template cache's scope and the events' host (default the hostname)."),
    ("DISKLEDGER_ACTOR", "Who the events' metadata name as the actor (default diskledger)."),
    (
        "DISKLEDGER_RECOVER",
        "0 not to recover operations left pending by dead processes when the ledger is opened "
        "(default 1; recover and verify never do).",
    ),
    (
        "DISKLEDGER_MAX_TEMPLATE_SIZE",
        "The largest virtual size a template may claim (default 16T).",
    ),
    (
        "DISKLEDGER_PREALLOCATE",
        "none (the default) or space: file disks get their whole virtual size allocated when "
        "made and grown.",
    ),
    (
        "DISKLEDGER_MEMBERS",
        "1 to join a shared ledger as a member with a lease, 0 not to (default: 1 for "
        "PostgreSQL, 0 for SQLite).",
    ),
    (
        "DISKLEDGER_LEASE_TTL, DISKLEDGER_LEASE_RENEW, DISKLEDGER_LEASE_DEADLINE, "
        "DISKLEDGER_TAKEOVER_SCAN",
        "A member's lease: seconds it lasts, between renewals, before an unrenewed lease "
        "stops the member, and between takeover scans (defaults 30, 5, 20, 5).",
    ),
    (
        "DISKLEDGER_LIBVIRT_URI",
        "The libvirt connection of attach and detach (default qemu:///system).",
    ),
    (
        "DISKLEDGER_DETACH_TIMEOUT",
        "Seconds a guest has to release an unplugged disk (default 30).",
    ),
    (
        "DISKLEDGER_FETCH_CONNECT_TIMEOUT, DISKLEDGER_FETCH_READ_TIMEOUT",
        "Seconds a template download from an http(s) URL has to connect, and may go without a "
        "byte (defaults 10 and 60).",
    ),
    (
        "DISKLEDGER_FETCH_ATTEMPTS, DISKLEDGER_FETCH_RETRY_WAIT",
        "Attempts at a download that failed transiently (default 3), and seconds before the "
        "first retry, doubled each time (default 0.5).",
    ),
    (
        "DISKLEDGER_FETCH_MAX_REDIRECTS, DISKLEDGER_FETCH_MAX_BYTES",
        "Redirects a download follows (default 3), and bytes it may bring (default: the "
        "template ceiling, DISKLEDGER_MAX_TEMPLATE_SIZE).",
    ),
    (
        "DISKLEDGER_CA_BUNDLE",
        "Certificate authorities trusted for https:// template sources (default: the "
        "system's, or REQUESTS_CA_BUNDLE).",
    ),
    (
        "DISKLEDGER_GLANCE_URL",
        "The image service (OpenStack Glance, API v2) glance://IMAGE_ID template sources come "
        "from, e.g. http://127.0.0.1:9292.",
    ),
    (
        "DISKLEDGER_GLANCE_TOKEN",
        "A token sent to the image service as X-Auth-Token when set (never recorded); a service "
        "without Keystone ignores it.",
    ),
    (
        "DISKLEDGER_KEY_PROVIDER, DISKLEDGER_KEY_DIR",
        "Where the keys of encrypted disks live: the local provider (the default) keeps them "
        "in a root-only directory, by default <root>-keys beside the root.",
    ),
    (
        "DISKLEDGER_LUKS_ITER_TIME",
        "Milliseconds of PBKDF work per LUKS key slot unlock (default 100).",
    ),
    (
        "DISKLEDGER_CEPH_CONF, DISKLEDGER_CEPH_KEYRING, DISKLEDGER_RBD_USER",
        "The rbd backend's cluster: its configuration (default /etc/ceph/ceph.conf), keyring "
        "and cephx client id (without client.).",
    ),
    (
        "DISKLEDGER_RBD_POOL, DISKLEDGER_RBD_SNAPSHOT_POOL",
        "The pool rbd disks are images in (default rbd), and where direct snapshots go.",
    ),
    (
        "DISKLEDGER_CEPH_OP_TIMEOUT, DISKLEDGER_CEPH_RETRY_BUDGET",
        "Seconds before an unanswered Ceph request fails (default 10), and of retries for "
        "transient and busy errors (default 30).",
    ),
    (
        "DISKLEDGER_RBD_SECRET_UUID",
        "The libvirt secret holding the RBD user's key (libvirt define-secret prints it).",
    ),
    (
        "DISKLEDGER_LVM_VG, DISKLEDGER_LVM_SPARSE",
        "The lvm backend's volume group (required), and a thin pool in it for sparse volumes.",
    ),
    (
        "DISKLEDGER_LVM_VOLUME_CLEAR, DISKLEDGER_LVM_VOLUME_CLEAR_SIZE",
        "How a deleted logical volume is cleared (zero, shred or none; default zero), and how "
        "many MiB of it (default 0: all).",
    ),
    (
        "NO_COLOR",
        "Set and not empty: no colour in what is printed for a person (nor when TERM is dumb "
        "or standard output is not a terminal).",
    ),
)

_EXIT_STATUS: Sequence[tuple[str, str]] = (
    ("0", "Success (for verify: the ledger and storage agree)."),
    (
        "1",
        "Refused or failed: bad input, no such disk, a transition its state does not allow, a "
        "conflict, storage or the ledger failed; nothing is half done. One line on standard "
        "error says why and what to do next.",
    ),
    ("2", "Usage error: the command line itself is wrong."),
    (
        "3",
        "Needs an operator: an operation is in flight or was left pending (diskledger "
        "recover), this member was fenced or lost an operation to a takeover, verify found a "
        "problem, or watch met a gap or a broken hash chain.",
    ),
    (
        "75",
        "This member lost its lease on a shared ledger and the process left at once "
        "(EX_TEMPFAIL): a supervisor starts it again as a new member.",
    ),
)

_FILES: Sequence[tuple[str, str]] = (
    (
        "$DISKLEDGER_ROOT/ledger.db",
        "The ledger, when it is SQLite (with ledger.db-wal and ledger.db-shm while it is open, "
        "and ledger.db-writer, where writers queue).",
    ),
    ("$DISKLEDGER_ROOT/disks/", "File disks (raw, qcow2, parallels), one directory per instance."),
    ("$DISKLEDGER_ROOT/templates/", "The template cache."),
    ("<root>-keys/", "The keys of encrypted disks (local key provider, root only)."),
)

_DESCRIPTION = (
    "Every transition of a disk (create, resize, snapshot, rollback, delete, ...) is recorded "
    "as events in a ledger (SQLite or PostgreSQL) before and after its effect on storage, so "
    "that a crash leaves nothing recover cannot finish or undo, and history shows who did what.",
    "Every command takes --json and then prints exactly one JSON document on standard output "
    "(watch prints one JSON line per event instead); errors are one line on standard error. "
    "Disks are named INSTANCE/NAME.",
)

_COMPLETION = (
    'bash: add eval "$(diskledger completion bash)" to ~/.bashrc.',
    "zsh: after compinit in ~/.zshrc, source <(diskledger completion zsh); or write it as "
    "_diskledger into a directory of $fpath: diskledger completion zsh > "
    "~/.zfunc/_diskledger, with fpath=(~/.zfunc $fpath) before compinit.",
    "Commands and options complete; so do disk, template and snapshot names, read from the "
    "ledger that --root, --ledger or the environment name.",
)

_SEE_ALSO = (("qemu-img", "1"), ("virsh", "1"), ("rbd", "8"), ("lvm", "8"), ("sqlite3", "1"))


def _text(text: str) -> str:
    """Roff-safe text: backslashes escaped, options' hyphens as minus signs, no line that
    starts with a control character."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"(?<![\w/])(--?)(?=\w)", lambda m: "\\-" * len(m[1]), text)
    return "\n".join(
        f"\\&{line}" if line.startswith((".", "'")) else line for line in text.split("\n")
    )


def _quoted(text: str) -> str:
    return '"' + _text(text).replace('"', "\\(dq") + '"'


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=_WIDE, max_help_position=_WIDE)


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """(words, help, parser) of every public command that runs (the leaves), in parser order."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            if name not in helps:  # hidden (__complete)
                continue
            words = (*path, name)
            if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                yield from _commands(sub, words)
            else:
                yield words, str(helps[name] or ""), sub


def _shared(leaves: Sequence[argparse.ArgumentParser], option: str) -> list[argparse.Action]:
    """The actions (the same objects, from a parent parser) of every leaf that has ``option``."""
    having = [p for p in leaves if option in p._option_string_actions]
    if not having:
        return []
    ids = set.intersection(*({id(a) for a in p._actions} for p in having))
    return [a for a in having[0]._actions if id(a) in ids]


def _invocation(action: argparse.Action) -> str:
    formatter = _formatter("diskledger")
    if not action.option_strings:
        return f"\\fI{_text(formatter._format_args(action, action.dest))}\\fR"
    names = ", ".join(f"\\fB{_text(o)}\\fR" for o in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = formatter._format_args(action, action.dest.upper())
    return f"{names} \\fI{_text(metavar)}\\fR"


def _items(actions: Sequence[argparse.Action]) -> list[str]:
    lines: list[str] = []
    formatter = _formatter("diskledger")
    for action in actions:
        if action.help == argparse.SUPPRESS:
            continue
        text = formatter._expand_help(action) if action.help else ""
        if not text and action.choices is None:
            continue
        if action.choices is not None and not text:
            text = "one of " + ", ".join(map(str, action.choices))
        lines += [".TP", _invocation(action), _text(text)]
    return lines


def _usage(words: Sequence[str], parser: argparse.ArgumentParser, leave_out: set[int]) -> list[str]:
    formatter = _formatter(" ".join(("diskledger", *words)))
    actions = [a for a in parser._actions if id(a) not in leave_out]
    groups = [
        g
        for g in parser._mutually_exclusive_groups
        if all(id(a) not in leave_out for a in g._group_actions)
    ]
    formatter.add_usage(None, actions, groups, prefix="")
    usage = " ".join(formatter.format_help().split())
    rest = usage.removeprefix(" ".join(("diskledger", *words))).strip()
    return [".B " + _quoted(" ".join(("diskledger", *words))), *([_text(rest)] if rest else [])]


def _definitions(entries: Sequence[tuple[str, str]], bold: bool = True) -> list[str]:
    lines: list[str] = []
    for term, text in entries:
        lines += [".TP", (".B " if bold else "") + _text(term), _text(text)]
    return lines


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The page, as roff, for ``parser`` (by default the whole command line)."""
    if parser is None:
        from diskledger.cli.app import build_parser

        parser = build_parser()
    from diskledger.backends import BACKENDS

    commands = list(_commands(parser))
    leaves = [sub for _, _, sub in commands]
    common = [a for a in _shared(leaves, "--root") if "-h" not in a.option_strings]
    common_ids = {id(a) for a in common}
    mutating = [a for a in _shared(leaves, "--op-id") if id(a) not in common_ids]
    mutating = [a for a in mutating if "-h" not in a.option_strings]
    helps = {id(a) for p in leaves for a in p._actions if "-h" in a.option_strings}
    leave_out = common_ids | helps
    top = [a for a in parser._actions if a.option_strings]

    lines = [
        '.TH DISKLEDGER 1 "" "diskledger" "User Commands"',
        ".nh",
        ".SH NAME",
        "diskledger \\- " + _text((parser.description or "").rstrip(".").lower()),
        ".SH SYNOPSIS",
        ".B diskledger",
        ".I COMMAND",
        ".RI [ ACTION ]",
        ".RI [ OPTIONS ]",
        ".RI [ ARGUMENTS ]",
        ".br",
        ".B diskledger \\-\\-version",
        ".SH DESCRIPTION",
    ]
    for paragraph in _DESCRIPTION:
        lines += [_text(paragraph), ".PP"]
    lines.pop()
    lines += [".SH OPTIONS", *_items(top)]
    lines += [
        ".SS Options of every command",
        "Every command but completion takes these, and \\fB\\-h\\fR, \\fB\\-\\-help\\fR.",
        *_items(common),
        ".SS Options of the commands that change something",
        "Marked \\fI(changes)\\fR below.",
        *_items(mutating),
        ".SH COMMANDS",
    ]
    for words, text, sub in commands:
        changes = bool(mutating) and id(mutating[0]) in {id(a) for a in sub._actions}
        lines += [
            ".SS " + _quoted(" ".join(words)),
            *_usage(words, sub, leave_out | {id(a) for a in mutating}),
            ".PP",
            _text(text[:1].upper() + text[1:]) + (" \\fI(changes)\\fR" if changes else ""),
        ]
        own = [a for a in sub._actions if id(a) not in leave_out and a not in mutating]
        items = _items(own)
        if items:
            lines += [".RS", *items, ".RE"]
    lines += [".SH EXIT STATUS", *_definitions(_EXIT_STATUS)]
    environment = [(name, text.format(backends=", ".join(BACKENDS))) for name, text in _ENVIRONMENT]
    lines += [".SH ENVIRONMENT", *_definitions(environment)]
    lines += [".SH FILES", *_definitions(_FILES, bold=False)]
    lines += [".SH SHELL COMPLETION"]
    for paragraph in _COMPLETION:
        lines += [_text(paragraph), ".PP"]
    lines.pop()
    lines += [
        ".SH SEE ALSO",
        ",\n".join(f".BR {_text(name)} ({section})" for name, section in _SEE_ALSO),
        ".PP",
        "docs/cli.md, docs/cli-completion.md and docs/recovery.md in diskledger's source.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m diskledger.cli.manpage [FILE]``: print the page, or write it to FILE."""
    args = list(sys.argv[1:] if argv is None else argv)
    page = render()
    if args:
        with open(args[0], "w", encoding="utf-8") as out:
            out.write(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
