"""Shell completion and the man page (issue 18).

bash: the script ``diskledger completion bash`` prints is sourced in a real, non-interactive
bash, ``COMP_WORDS``/``COMP_CWORD``/``COMP_LINE``/``COMP_POINT`` are set as bash sets them
(words parted at ``=`` and ``:`` too) and the function the script registers for ``diskledger``
is called: ``COMPREPLY`` is what a TAB would offer. Names come from a real ledger (a template,
disks and snapshots made by the Engine on qcow2) through the real ``diskledger __complete``.
zsh: the script loads under compinit, its helpers ask ``__complete`` with what was typed, and a
TAB in an interactive zsh (zpty) completes a snapshot name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diskledger.cli import build_parser
from diskledger.cli.completion import DEFAULT_ROOT, candidates, script
from diskledger.cli.manpage import render
from diskledger.engine import Config, Engine
from diskledger.states.disk import DiskState
from diskledger.states.template import TemplateState
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MANPAGE = REPO / "docs" / "diskledger.1"


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The venv's ``diskledger`` first on PATH, no DISKLEDGER_* from the test's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKLEDGER_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}", HOME=str(home))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory, qemu_img: None) -> Path:
    """A root whose SQLite ledger has template ``base``, disks ``vm/a`` (snapshots ``s1``,
    ``s2``) and ``vm/b``, and ``vm/gone``, deleted."""
    root = tmp_path_factory.mktemp("completion") / "root"
    image = root.parent / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M"], check=True)
    with Engine.open(root=root, backend="qcow2", environ={}) as engine:
        engine.add_template("base", image, "qcow2")
        for disk in ("vm/a", "vm/b", "vm/gone"):
            engine.create(disk, template="base")
        engine.snapshot("vm/a", "s1")
        engine.snapshot("vm/a", "s2")
        engine.delete("vm/gone")
    return root


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("bash", "bash")
    if not (BIN / "diskledger").exists():
        pytest.fail(f"no diskledger console script in {BIN}: pip install -e .", pytrace=False)
    path = tmp_path_factory.mktemp("bash") / "diskledger.bash"
    path.write_text(script("bash", build_parser()))
    return path


def _comp_words(line: str) -> list[str]:
    """``COMP_WORDS`` as bash makes them: words at blanks, and ``=``/``:`` words of their own
    (COMP_WORDBREAKS)."""
    words = [part for token in line.split() for part in re.split(r"([=:]+)", token) if part]
    if not line or line[-1].isspace():
        words.append("")
    return words


_CALL = r"""
source "$SCRIPT"
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE=$LINE; COMP_POINT=${#LINE}
spec=$(complete -p diskledger)
function=${spec##*-F }; function=${function%% *}
"$function" diskledger "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def complete_bash(bash_script: Path, home: Path, line: str, **env: str) -> list[str]:
    """What a TAB at the end of ``line`` offers in bash."""
    result = subprocess.run(
        ["bash", "-c", _CALL, "bash", *_comp_words(line)],
        env=_env(home, SCRIPT=str(bash_script), LINE=line, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return [word for word in result.stdout.split("\n") if word]


def test_bash_completes_commands_and_options(bash_script: Path, tmp_path: Path) -> None:
    assert complete_bash(bash_script, tmp_path, "diskledger di") == ["disk"]
    assert complete_bash(bash_script, tmp_path, "diskledger disk cr") == ["create"]
    assert complete_bash(bash_script, tmp_path, "diskledger disk remove-") == ["remove-snapshot"]
    assert complete_bash(bash_script, tmp_path, "diskledger --ver") == ["--version"]
    assert complete_bash(bash_script, tmp_path, "diskledger disk list --a") == ["--all"]
    assert complete_bash(bash_script, tmp_path, "diskledger completion ") == ["bash", "zsh"]
    # The hidden command is not offered.
    assert "__complete" not in complete_bash(bash_script, tmp_path, "diskledger ")


def test_bash_completes_disk_names(bash_script: Path, tmp_path: Path, ledger: Path) -> None:
    disks = ["vm/a", "vm/b"]  # not vm/gone, deleted
    assert complete_bash(bash_script, tmp_path, f"diskledger disk show --root {ledger} ") == disks
    assert complete_bash(bash_script, tmp_path, f"diskledger disk show --root={ledger} v") == disks
    assert (
        complete_bash(
            bash_script, tmp_path, "diskledger disk show vm/", DISKLEDGER_ROOT=str(ledger)
        )
        == disks
    )
    url = f"sqlite:///{ledger}/ledger.db"
    assert complete_bash(bash_script, tmp_path, f"diskledger disk delete --ledger {url} vm/b") == [
        "vm/b"
    ]
    assert complete_bash(bash_script, tmp_path, f"diskledger history --root {ledger} ") == disks
    # Options before the name, some with values, do not count as the name.
    line = f"diskledger disk resize --json --op-id x1 --backend qcow2 --root {ledger} "
    assert complete_bash(bash_script, tmp_path, line) == disks


def test_bash_completes_snapshots_of_the_disk_typed(
    bash_script: Path, tmp_path: Path, ledger: Path
) -> None:
    env = {"DISKLEDGER_ROOT": str(ledger)}
    assert complete_bash(bash_script, tmp_path, "diskledger disk snapshot vm/a ", **env) == [
        "s1",
        "s2",
    ]
    assert complete_bash(
        bash_script, tmp_path, f"diskledger disk rollback --root={ledger} vm/a s"
    ) == ["s1", "s2"]
    url = f"sqlite:///{ledger}/ledger.db"
    line = f"diskledger disk remove-snapshot vm/a --ledger={url} s2"
    assert complete_bash(bash_script, tmp_path, line) == ["s2"]
    assert complete_bash(bash_script, tmp_path, "diskledger disk rollback vm/b ", **env) == []


def test_bash_completes_templates_and_files(
    bash_script: Path, tmp_path: Path, ledger: Path
) -> None:
    line = f"diskledger disk create --root {ledger} vm/c --template "
    assert complete_bash(bash_script, tmp_path, line) == ["base"]
    (tmp_path / "image.qcow2").touch()
    line = f"diskledger template add --root {ledger} t2 {tmp_path}/im"
    assert complete_bash(bash_script, tmp_path, line) == [f"{tmp_path}/image.qcow2"]
    line = f"diskledger disk show --root {tmp_path}/ima"
    assert complete_bash(bash_script, tmp_path, line) == []  # --root takes directories


def test_complete_without_a_ledger_prints_nothing_and_creates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv in (
        ["disks", "--root", str(empty)],
        ["snapshots", "vm/a", "--root", str(empty / "missing")],
        ["templates", "--ledger", f"sqlite:///{empty}/ledger.db"],
        ["disks", "--ledger", "sqlite://"],
    ):
        result = subprocess.run(
            [str(BIN / "diskledger"), "__complete", *argv],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert list(empty.iterdir()) == []


def test_complete_reads_a_ledger_without_creating_anything(tmp_path: Path, ledger: Path) -> None:
    before = sorted(p.name for p in ledger.iterdir())
    result = subprocess.run(
        [str(BIN / "diskledger"), "__complete", "snapshots", "vm/a", "--root", str(ledger)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "s1\ns2\n", "")
    assert sorted(p.name for p in ledger.iterdir()) == before
    assert not any(name.endswith(("-wal", "-shm")) for name in before)


def test_candidates_of_an_open_ledger_read_its_log(tmp_path: Path) -> None:
    """While an engine has the ledger open (its -wal and -shm present), a name it just
    recorded is offered, and no file is added."""
    root = tmp_path / "root"
    with Engine.open(root=root, backend="qcow2", environ={}) as engine:
        engine.create("vm/live", size="1M")
        before = sorted(p.name for p in root.iterdir())
        assert {"ledger.db-wal", "ledger.db-shm"} <= set(before)
        assert candidates("disks", disk=None, root=str(root), ledger=None) == ["vm/live"]
        assert sorted(p.name for p in root.iterdir()) == before


def test_candidates_follow_config_and_states(
    tmp_path: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same defaults and variables as Config.load, without importing it on a TAB.
    assert Config.load(environ={}).root == Path(DEFAULT_ROOT)
    assert DiskState.ABSENT.value == TemplateState.ABSENT.value == "absent"
    monkeypatch.delenv("DISKLEDGER_LEDGER", raising=False)
    monkeypatch.setenv("DISKLEDGER_ROOT", str(ledger))
    assert candidates("disks", disk=None, root=None, ledger=None) == ["vm/a", "vm/b"]
    assert candidates("templates", disk=None, root=None, ledger=None) == ["base"]
    assert candidates("snapshots", disk=None, root=None, ledger=None) == []
    assert candidates("snapshots", disk="vm/gone", root=None, ledger=None) == []
    monkeypatch.setenv("DISKLEDGER_LEDGER", f"sqlite:///{ledger}/ledger.db")
    assert candidates("disks", disk=None, root=str(tmp_path), ledger=None) == ["vm/a", "vm/b"]
    # Anything wrong: no names, no error.
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    assert candidates("disks", disk=None, root=None, ledger=f"sqlite:///{garbage}") == []
    assert candidates("disks", disk=None, root=None, ledger="nosuchdb://x") == []
    assert candidates("nonsense", disk=None, root=str(ledger), ledger=None) == []


def test_candidates_import_neither_sqlalchemy_nor_the_engine(ledger: Path) -> None:
    code = (
        "import sys\n"
        "from diskledger.cli.completion import candidates\n"
        f"assert candidates('disks', disk=None, root={str(ledger)!r}, ledger=None)"
        " == ['vm/a', 'vm/b']\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('sqlalchemy', 'diskledger.engine',"
        " 'diskledger.store', 'shtab')))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


@pytest.mark.postgres
def test_candidates_of_a_postgresql_ledger(tmp_path: Path, postgres_url: str) -> None:
    with Engine.open(root=tmp_path, ledger=postgres_url, backend="qcow2", environ={}) as engine:
        engine.create("vm/pg", size="1M")
        engine.snapshot("vm/pg", "first")
    assert candidates("disks", disk=None, root=None, ledger=postgres_url) == ["vm/pg"]
    assert candidates("snapshots", disk="vm/pg", root=None, ledger=postgres_url) == ["first"]
    assert candidates("templates", disk=None, root=None, ledger=postgres_url) == []


@pytest.fixture(scope="module")
def zsh_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tool("zsh", "zsh")
    directory = tmp_path_factory.mktemp("zsh")
    (directory / "_diskledger").write_text(script("zsh", build_parser()))
    return directory


def _zsh(home: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["zsh", "-f", "-c", code],
        env=_env(home, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_zsh_script_loads(zsh_script: Path, tmp_path: Path) -> None:
    # As docs/cli-completion.md says to: sourced after compinit, or autoloaded from $fpath.
    sourced = _zsh(
        tmp_path,
        "autoload -U compinit; compinit -u; source <(diskledger completion zsh); "
        "print -r -- $_comps[diskledger]",
    )
    assert (sourced.returncode, sourced.stderr, sourced.stdout) == (0, "", "_shtab_diskledger\n")
    autoloaded = _zsh(
        tmp_path,
        f"fpath=({zsh_script} $fpath); autoload -U compinit; compinit -u; "
        "print -r -- $_comps[diskledger]",
    )
    assert (autoloaded.returncode, autoloaded.stderr, autoloaded.stdout) == (0, "", "_diskledger\n")


def test_zsh_functions_ask_for_names_with_what_was_typed(
    zsh_script: Path, tmp_path: Path, ledger: Path
) -> None:
    code = (
        f"autoload -U compinit; compinit -D -u; source {zsh_script}/_diskledger; "
        'compadd() { print -rl -- "${(@P)2}" }; '
        f"LBUFFER='diskledger disk snapshot --root {ledger} vm/a '; "
        "_diskledger_complete_snapshots; print -- --; "
        f"LBUFFER='diskledger disk show --root={ledger} --json v'; "
        "_diskledger_complete_disks; print -- --; "
        f"LBUFFER='diskledger disk create --ledger \"sqlite:///{ledger}/ledger.db\" x --template '; "
        "_diskledger_complete_templates"
    )
    result = _zsh(tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("--\n") == ["s1\ns2\n", "vm/a\nvm/b\n", "base\n"]


_ZPTY = r"""
zmodload zsh/zpty
zpty shell zsh -f -i
zpty -w shell 'PS1="> "; unsetopt beep; fpath=($SCRIPTS $fpath); autoload -U compinit; compinit -u'
zpty -w -n shell "diskledger disk rollback --root $ROOT vm/a s1"$'\t'
zpty -w -n shell $'\C-a'"echo MARK "$'\n'
output=""
for attempt in {1..200}; do
  while zpty -r -t shell chunk; do output+=$chunk; done
  [[ $output == *"MARK diskledger"*$'\n'* ]] && break
  sleep 0.05
done
zpty -d shell
print -r -- $output
"""


def test_zsh_tab_completes_a_snapshot_name(zsh_script: Path, tmp_path: Path, ledger: Path) -> None:
    """In an interactive zsh: TAB after ``vm/a s1`` makes the word ``s1 `` (the one snapshot
    name it starts), then the line is echoed."""
    result = _zsh(tmp_path, _ZPTY, SCRIPTS=str(zsh_script), ROOT=str(ledger))
    assert result.returncode == 0, result.stderr
    echoed = re.findall(r"MARK (diskledger disk rollback [^\r\n]*)", result.stdout)
    assert f"diskledger disk rollback --root {ledger} vm/a s1 " in [
        e.rstrip() + " " for e in echoed
    ]


def test_man_page_is_generated_from_the_parser() -> None:
    assert MANPAGE.read_text() == render(), (
        "docs/diskledger.1 is stale: python -m diskledger.cli.manpage docs/diskledger.1"
    )


def test_man_page_renders_without_warnings(tmp_path: Path) -> None:
    require_tool("groff", "groff-base")
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(MANPAGE)], capture_output=True, text=True
    )
    assert (result.returncode, result.stderr) == (0, "")
    require_tool("man", "man-db")
    shown = subprocess.run(
        ["man", "--warnings", "-l", str(MANPAGE)],
        capture_output=True,
        text=True,
        env=_env(tmp_path, MANWIDTH="100"),
    )
    assert (shown.returncode, shown.stderr) == (0, "")
    text = re.sub(".\b", "", shown.stdout)  # no overstrike (bold, underline)
    for words in ("disk create", "disk remove-snapshot", "template add", "watch", "completion"):
        assert words in text
    for section in ("EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO", "SHELL COMPLETION"):
        assert section in text
    assert "--template TEMPLATE_ID" in text and "--op-id OP_ID" in text


def test_man_page_names_every_setting() -> None:
    """Every DISKLEDGER_* variable the package reads is in ENVIRONMENT, but the tests' own."""
    tests_only = {"DISKLEDGER_FAULT", "DISKLEDGER_BOOT_ID", "DISKLEDGER_LVM_"}
    read = {
        name
        for path in (REPO / "diskledger").rglob("*.py")
        if "testing" not in path.parts
        for name in re.findall(r"DISKLEDGER_[A-Z0-9_]+", path.read_text())
    }
    page = MANPAGE.read_text().replace("\\-", "-")
    environment = page.split(".SH ENVIRONMENT", 1)[1].split(".SH ", 1)[0]
    missing = sorted(name for name in read - tests_only if name not in environment)
    assert not missing, f"not in diskledger(1) ENVIRONMENT (diskledger/cli/manpage.py): {missing}"
    assert "NO_COLOR" in environment


def test_complete_wall_time(tmp_path: Path, ledger: Path) -> None:
    """``diskledger __complete`` runs on every TAB: report its time (the process is most of it:
    candidates themselves take about a millisecond)."""
    argv = [str(BIN / "diskledger"), "__complete", "disks", "--root", str(ledger)]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(argv, env=_env(tmp_path), check=True, capture_output=True, timeout=60)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(100):
        candidates("disks", disk=None, root=str(ledger), ledger=None)
    per_call = (time.perf_counter() - start) / 100
    print(f"__complete: {min(times) * 1000:.0f} ms as a process, {per_call * 1000:.2f} ms a call")
    assert per_call < 0.05


@pytest.fixture(autouse=True)
def _no_ambient_ledger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("DISKLEDGER_ROOT", "DISKLEDGER_LEDGER", "DISKLEDGER_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_a_tab_starts_without_the_engine_and_says_nothing_on_bad_words(tmp_path: Path) -> None:
    # The console script answers __complete before it imports the command line's modules.
    probe = (
        "import sys; sys.argv = ['diskledger', '__complete', 'disks', '--root', sys.argv[1]]\n"
        "from diskledger.cli import main\n"
        "code = main()\n"
        "assert 'sqlalchemy' not in sys.modules and 'diskledger.engine' not in sys.modules\n"
        "raise SystemExit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "root")], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    bad = subprocess.run(
        [sys.executable, "-m", "diskledger.cli", "__complete", "bogus", "--nope"],
        capture_output=True,
        text=True,
    )
    assert (bad.returncode, bad.stdout, bad.stderr) == (0, "", "")
