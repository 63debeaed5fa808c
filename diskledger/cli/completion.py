"""Shell completion: the bash and zsh scripts, generated from the parser by shtab, and the names
they ask ``diskledger __complete`` for.

Commands and options complete from the parser itself. Arguments whose metavar names something
in the ledger complete from it: ``INSTANCE/NAME`` disk names, ``TEMPLATE_ID`` template names,
``SNAP`` the snapshots of the disk typed before it (the third word that is not an option:
``disk snapshot vm/a <TAB>``); ``SOURCE_FILE``, ``TARGET_FILE`` and ``FILE`` files, ``--root``
directories. The marks are set here, on the actions of the whole parser, so that the commands'
modules know nothing of completion. The shells' functions pass along the ``--root`` and
``--ledger`` already typed; ``DISKLEDGER_ROOT`` and ``DISKLEDGER_LEDGER`` reach
``__complete`` through the environment as they reach any command.

``candidates`` runs on every TAB: for a SQLite ledger it reads the read-model tables with the
standard library, read-only, creating nothing (not the ledger, not a ``-wal`` or ``-shm``
file), and never imports SQLAlchemy or the engine; any other ledger URL (PostgreSQL) is opened
as every command opens it. Any error means no names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

__all__ = ["DEFAULT_ROOT", "KINDS", "candidates", "mark", "script"]

DEFAULT_ROOT = "/var/lib/diskledger"
"""``diskledger.engine.config.DEFAULT_ROOT``, repeated so that a TAB does not import the engine
(a test checks that they agree)."""

KINDS = {"INSTANCE/NAME": "disks", "TEMPLATE_ID": "templates", "SNAP": "snapshots"}
"""Metavars whose arguments complete from the ledger, and the ``__complete`` kind each asks."""

_FILES = frozenset({"SOURCE_FILE", "SOURCE", "TARGET_FILE", "FILE"})
_DIRECTORIES = frozenset({"--root"})
_ABSENT = "absent"
"""``DiskState.ABSENT`` (a deleted disk) and ``TemplateState.ABSENT`` (a removed template)."""


def _function(kind: str) -> str:
    return f"_diskledger_complete_{kind}"


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Every action of ``parser`` and of its subparsers, at any depth, each once."""
    seen: set[int] = set()
    parsers = [parser]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    if id(sub) not in seen:
                        seen.add(id(sub))
                        parsers.append(sub)
            elif id(action) not in seen:
                seen.add(id(action))
                yield action


def mark(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Set shtab's ``complete`` on the actions of ``parser`` (the whole one) whose metavars or
    option strings say what they take; returns ``parser``."""
    import shtab

    for action in _actions(parser):
        complete: Any = None
        if action.metavar in KINDS:
            function = _function(KINDS[str(action.metavar)])
            complete = {"bash": function, "zsh": function}
        elif action.metavar in _FILES:
            complete = shtab.FILE
        elif _DIRECTORIES.intersection(action.option_strings):
            complete = shtab.DIRECTORY
        if complete is not None:
            action.complete = complete  # type: ignore[attr-defined]
    return parser


def _valued_options(parser: argparse.ArgumentParser) -> list[str]:
    """The option strings that take a value (the next word is not a positional argument)."""
    return sorted(
        {
            option
            for action in _actions(parser)
            if action.option_strings and action.nargs != 0
            for option in action.option_strings
        }
    )


_BASH = r"""
# bash splits words at COMP_WORDBREAKS ('=' and ':' among them: --ledger=postgresql://h/db is
# five words). The words before the cursor are joined back where no space parted them, and
# --option=value parted at its first '=', then shtab's function completes.
_diskledger() {
  local rest=${COMP_LINE:0:${COMP_POINT:-${#COMP_LINE}}} word i
  local current=${COMP_WORDS[COMP_CWORD]-}
  local -a words=()
  for (( i = 0; i < COMP_CWORD; i++ )); do
    word=${COMP_WORDS[i]}
    if [[ ${#words[@]} -eq 0 || -z $rest || $rest == [[:space:]]* ]]; then
      words+=("$word")
    else
      words[${#words[@]}-1]+=$word
    fi
    rest=${rest#"${rest%%[![:space:]]*}"}
    rest=${rest#"$word"}
  done
  local -a joined=("${words[@]}")
  words=()
  for word in "${joined[@]}"; do  # shtab knows --option value, not --option=value
    if [[ $word == --*=?* ]]; then
      words+=("${word%%=*}" "${word#*=}")
    else  # --option= just before the cursor: the value is the word being completed
      words+=("${word%=}")
    fi
  done
  words+=("$current")
  local COMP_CWORD=$(( ${#words[@]} - 1 ))
  local -a COMP_WORDS=("${words[@]}")
  _shtab_diskledger
}

# Which words before the cursor are positional, and which --root/--ledger were typed.
_diskledger_complete_scan() {
  local word pending=""
  _diskledger_complete_words=() _diskledger_complete_options=()
  for word in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
    if [[ -n $pending ]]; then
      [[ $pending == pass ]] && _diskledger_complete_options+=("${word/#\~/$HOME}")
      pending=""
      continue
    fi
    case $word in
      --root|--ledger) _diskledger_complete_options+=("$word"); pending=pass ;;
      --root=*|--ledger=*) _diskledger_complete_options+=("$word") ;;
      __VALUED__) pending=skip ;;
      -*) ;;
      *) _diskledger_complete_words+=("$word") ;;
    esac
  done
}

# $1: the kind (disks, templates, snapshots); $2: the word being completed.
_diskledger_complete_names() {
  local -a _diskledger_complete_words _diskledger_complete_options extra=()
  _diskledger_complete_scan
  [[ $1 == snapshots ]] && extra=("${_diskledger_complete_words[2]-}")
  local IFS=$'\n'
  compgen -W "$(diskledger __complete "$1" "${extra[@]}" \
    "${_diskledger_complete_options[@]}" 2>/dev/null)" -- "$2"
}
_diskledger_complete_disks() { _diskledger_complete_names disks "$1"; }
_diskledger_complete_templates() { _diskledger_complete_names templates "$1"; }
_diskledger_complete_snapshots() { _diskledger_complete_names snapshots "$1"; }
"""

_BASH_TAIL = "complete -o bashdefault -F _shtab_diskledger diskledger"
_BASH_TAIL_FIXED = "complete -o bashdefault -F _diskledger diskledger"

_ZSH = r"""
# The words of the line before the cursor (_arguments has shifted $words by then).
_diskledger_complete_names() {
  local -a typed positional options names
  local word pending=""
  typed=(${(Q)${(z)LBUFFER}})
  [[ $LBUFFER == *[[:space:]] ]] || typed[-1]=()
  for word in ${typed[2,-1]}; do
    if [[ -n $pending ]]; then
      [[ $pending == pass ]] && options+=(${word/#\~/$HOME})
      pending=""
      continue
    fi
    case $word in
      (--root|--ledger) options+=($word); pending=pass ;;
      (--root=*|--ledger=*) options+=($word) ;;
      (__VALUED__) pending=skip ;;
      (-*) ;;
      (*) positional+=($word) ;;
    esac
  done
  local -a extra
  [[ $1 == snapshots ]] && extra=("${positional[3]}")
  names=(${(f)"$(diskledger __complete $1 $extra $options 2>/dev/null)"})
  compadd -a names
}
_diskledger_complete_disks() { _diskledger_complete_names disks; }
_diskledger_complete_templates() { _diskledger_complete_names templates; }
_diskledger_complete_snapshots() { _diskledger_complete_names snapshots; }
"""

_ZSH_TAIL = """\
if [[ $zsh_eval_context[-1] == eval ]]; then
  # eval/source/. command, register function for later
  compdef _shtab_diskledger -N diskledger
else
  # autoload from fpath, call function directly
  _shtab_diskledger "$@\"
fi
"""

_ZSH_TAIL_FIXED = """\
if [[ ${funcstack[1]-} == _diskledger ]]; then
  # autoloaded from $fpath as _diskledger (#compdef): complete now
  _shtab_diskledger "$@"
else
  # eval, source or .: register for later
  compdef _shtab_diskledger diskledger
fi
"""


def script(shell: str, whole: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (``bash`` or ``zsh``) of the command line ``whole``
    (``diskledger.cli.build_parser()``)."""
    import shtab

    parser = mark(whole)
    valued = "|".join(o for o in _valued_options(parser) if o not in ("--root", "--ledger"))
    if shell == "bash":
        preamble = _BASH.replace("__VALUED__", valued)
        text = str(shtab.complete(parser, shell="bash", preamble=preamble))
        if _BASH_TAIL not in text:
            raise RuntimeError("shtab's bash script no longer ends as expected")
        return text.replace(_BASH_TAIL, _BASH_TAIL_FIXED)
    if shell == "zsh":
        preamble = _ZSH.replace("__VALUED__", valued)
        text = str(shtab.complete(parser, shell="zsh", preamble=preamble))
        # shtab calls the function outright unless eval'd: `source <(...)` would complete at
        # load time (and fail outside a completion widget). Register unless autoloaded.
        if _ZSH_TAIL not in text:
            raise RuntimeError("shtab's zsh script no longer ends as expected")
        return text.replace(_ZSH_TAIL, _ZSH_TAIL_FIXED)
    raise ValueError(f"no completion for shell {shell!r}: bash or zsh")


def candidates(kind: str, *, disk: str | None, root: str | None, ledger: str | None) -> list[str]:
    """The names ``kind`` (``disks``, ``templates``, or ``snapshots`` of ``disk``) in the ledger
    that ``root``/``ledger`` (or ``DISKLEDGER_ROOT``/``DISKLEDGER_LEDGER``) name, sorted; none
    on any error."""
    try:
        if kind == "snapshots" and not disk:
            return []
        url = ledger or os.environ.get("DISKLEDGER_LEDGER")
        if not url:
            base = Path(root or os.environ.get("DISKLEDGER_ROOT") or DEFAULT_ROOT).absolute()
            url = f"sqlite:///{base / 'ledger.db'}"
        path = _sqlite_path(url)
        if path is not None:
            return _from_sqlite(path, kind, disk) if path else []
        return _from_store(url, kind, disk)
    except Exception:
        return []


def _sqlite_path(url: str) -> str | None:
    """The database file of a SQLite URL ('' for an in-memory one), None for any other URL."""
    match = re.fullmatch(r"sqlite(?:\+\w+)?://(?P<rest>[^?]*)(?:\?.*)?", url, re.DOTALL)
    if match is None:
        return None
    rest = match["rest"]
    if not rest.startswith("/"):  # sqlite:// (memory) or something SQLAlchemy would refuse
        return ""
    database = unquote(rest[1:])
    return "" if database in ("", ":memory:") else database


def _from_sqlite(path: str, kind: str, disk: str | None) -> list[str]:
    database = Path(path).absolute()
    if not database.is_file():
        return []
    # A ledger is in WAL mode. With its -wal and -shm present (a process has it open) a
    # read-only connection reads the log through them; without them the file holds everything,
    # and immutable=1 reads it without making them (mode=ro alone would, and leave them).
    live = Path(f"{database}-wal").exists() and Path(f"{database}-shm").exists()
    uri = f"file:{quote(str(database))}?mode=ro" + ("" if live else "&immutable=1")
    connection = sqlite3.connect(uri, uri=True, timeout=1.0)
    try:
        if kind == "disks":
            rows = connection.execute(
                "SELECT disk FROM disks WHERE state != ? ORDER BY disk", (_ABSENT,)
            ).fetchall()
            return [str(name) for (name,) in rows]
        if kind == "templates":
            rows = connection.execute(
                "SELECT template FROM templates WHERE state != ? ORDER BY template", (_ABSENT,)
            ).fetchall()
            return [str(name) for (name,) in rows]
        if kind == "snapshots":
            rows = connection.execute(
                "SELECT view FROM disks WHERE disk = ? AND state != ?", (disk, _ABSENT)
            ).fetchall()
            return sorted(
                str(snapshot["name"])
                for (view,) in rows
                for snapshot in json.loads(view).get("snapshots", ())
            )
        return []
    finally:
        connection.close()


_ABSENT = "absent"  # a deleted disk, a template never cached (the read models' state column)


def _from_store(url: str, kind: str, disk: str | None) -> list[str]:
    """Any ledger but SQLite (PostgreSQL): opened as the commands open it, never upgraded."""
    from diskledger.engine import open_store

    store = open_store(url, upgrade=False)
    try:
        if kind == "templates":
            return sorted(t.template for t in store.templates() if t.state.value != _ABSENT)
        disks = [d for d in store.disks() if d.state.value != _ABSENT]
        if kind == "disks":
            return sorted(d.disk for d in disks)
        if kind == "snapshots":
            return sorted(name for d in disks if d.disk == disk for name in d.snapshot_names)
        return []
    finally:
        store.close()
