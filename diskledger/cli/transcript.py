"""The "What each command prints" section of ``docs/cli.md``: a real session, run here.

``python -m diskledger.cli.transcript`` runs the commands below on a fresh SQLite ledger and a
qcow2 root in a temporary directory, and rewrites the part of ``docs/cli.md`` between its two
markers with what they printed (stdout and stderr as a terminal would interleave them, and the
exit status when it is not 0). What changes from run to run is replaced by fixed stand-ins: the
temporary paths by ``/var/lib/diskledger`` and ``/srv/images``, times, hashes and generated
operation ids. ``tests/docs`` checks that the page is what this prints now.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from diskledger.cli import main

__all__ = ["BEGIN", "END", "render", "rewrite"]

BEGIN: Final = "<!-- transcript: begin (python -m diskledger.cli.transcript writes this part) -->"
END: Final = "<!-- transcript: end -->"
DOC: Final = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

# (commands, what they show) in the order an operator meets them. ``{image}`` is a 64 MiB qcow2
# image file; ``!crash`` runs the command in a child process that an armed fault point kills.
SESSION: Final[tuple[tuple[str, ...], ...]] = (
    ("--version",),
    ("template", "add", "cirros", "{image}", "--format", "qcow2"),
    ("template", "list"),
    ("disk", "create", "vm-1/root", "--template", "cirros", "--size", "10G"),
    ("disk", "create", "vm-1/scratch", "--blank", "--size", "1G"),
    ("disk", "resize", "vm-1/root", "20G"),
    ("disk", "snapshot", "vm-1/root", "before-upgrade"),
    ("disk", "rollback", "vm-1/root", "before-upgrade"),
    ("disk", "remove-snapshot", "vm-1/root", "before-upgrade"),
    ("disk", "export", "vm-1/root", "{exports}/vm-1-root.qcow2"),
    ("disk", "import", "vm-2/root", "{image}", "--format", "qcow2"),
    ("disk", "delete", "vm-1/scratch"),
    ("disk", "list"),
    ("disk", "show", "vm-1/root"),
    ("template", "show", "cirros"),
    ("disk", "xml", "vm-1/root", "--dev", "vda"),
    ("history", "vm-1/root"),
    ("disk", "create", "vm-1/root", "--template", "cirros"),
    ("disk", "show", "vm-9/root"),
    ("disk", "resize", "vm-1/root", "-5G"),
    ("!crash", "disk", "create", "vm-3/root", "--template", "cirros"),
    ("status",),
    ("disk", "delete", "vm-3/root", "--recover-off"),
    ("recover", "--dry-run"),
    ("recover",),
    ("verify",),
    ("disk", "delete", "vm-3/root", "--quiet"),
    ("disk", "list", "--all"),
    ("template", "gc", "--older-than", "0", "--dry-run"),
    ("watch", "--from", "24", "--until-idle", "0.2"),
    ("members",),
)
_VOLATILE: Final = (
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?(\+00:00)?"), "2026-12-01 09:00:00"),
    (re.compile(r"\b[0-9a-f]{64}\b"), "9f2c…"),
    (re.compile(r"head [0-9a-f]{16}\b"), "head 9f2c4e1b7a0d5c38"),
    (re.compile(r"\d+ s old"), "4 s old"),
    (re.compile(r"\d+(\.\d+)? KiB, head"), "120.0 KiB, head"),
)


def render() -> str:
    """The transcript, as the Markdown between the markers."""
    with tempfile.TemporaryDirectory(prefix="diskledger-transcript-") as tmp:
        return _session(Path(tmp))


def _session(tmp: Path) -> str:
    root, images, exports = tmp / "root", tmp / "images", tmp / "exports"
    images.mkdir()
    exports.mkdir()
    image = images / "cirros.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    names = {"{image}": str(image), "{exports}": str(exports)}
    environ = {"DISKLEDGER_ROOT": str(root), "DISKLEDGER_BACKEND": "qcow2", "NO_COLOR": "1"}
    blocks = []
    ops = iter(f"{n:02x}" * 16 for n in range(1, 256))
    for command in SESSION:
        words = [names.get(w, w) for w in command]
        for key, value in names.items():
            words = [w.replace(key, value) for w in words]
        crash = words[:1] == ["!crash"]
        words = words[1:] if crash else words
        recover = "--recover-off" not in words
        words = [w for w in words if w != "--recover-off"]
        if _mutates(words) and "--op-id" not in words:
            words = [*words, "--op-id", next(ops)]
        shown = [w for w in words if w != "--op-id" and not re.fullmatch(r"([0-9a-f]{2})\1{15}", w)]
        if crash:
            output, status = _killed(words, environ)
        else:
            output, status = _run(words, environ, recover=recover)
        text = output
        for path, stand_in in ((str(root), "/var/lib/diskledger"), (str(images), "/srv/images")):
            text = text.replace(path, stand_in)
        text = text.replace(str(exports), "/srv/exports")
        for pattern, stand_in in _VOLATILE:
            text = pattern.sub(stand_in, text)
        prompt = " ".join(_quoted(w) for w in shown)
        for path, stand_in in ((str(images), "/srv/images"), (str(exports), "/srv/exports")):
            prompt = prompt.replace(path, stand_in)
        if crash:
            prompt = f"DISKLEDGER_FAULT=create@after-effect diskledger {prompt}  # killed"
        elif not recover:
            prompt = f"DISKLEDGER_RECOVER=0 diskledger {prompt}"
        else:
            prompt = f"diskledger {prompt}"
        trailer = f"[exit status {status}]\n" if status else ""
        blocks.append(f"```console\n$ {prompt}\n{text}{trailer}```\n")
    return "\n".join(blocks)


def _mutates(words: Sequence[str]) -> bool:
    mutating = {
        ("template", "add"),
        *(("disk", c) for c in ("create", "resize", "snapshot", "rollback", "remove-snapshot")),
        *(("disk", c) for c in ("export", "import", "delete")),
    }
    return tuple(words[:2]) in mutating


def _quoted(word: str) -> str:
    return word if re.fullmatch(r"[\w./=:@-]+", word) else repr(word)


def _run(words: Sequence[str], environ: dict[str, str], *, recover: bool) -> tuple[str, int]:
    """One command in this process, its stdout and stderr in one text, and its exit status."""
    saved = {key: os.environ.get(key) for key in (*environ, "DISKLEDGER_RECOVER")}
    os.environ.update(environ)
    os.environ["DISKLEDGER_RECOVER"] = "1" if recover else "0"
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            try:
                status = main(list(words))
            except SystemExit as exc:
                status = int(exc.code or 0)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return printed.getvalue(), status


def _killed(words: Sequence[str], environ: dict[str, str]) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-m", "diskledger.cli", *words],
        env={**os.environ, **environ, "DISKLEDGER_FAULT": "create@after-effect"},
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout + done.stderr, 0


def rewrite(doc: Path = DOC) -> bool:
    """Rewrite ``doc``'s transcript; True when it changed."""
    text = doc.read_text()
    head, _, rest = text.partition(BEGIN + "\n")
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"{doc}: no line {BEGIN!r}")
    updated = f"{head}{BEGIN}\n\n{render()}\n{END}{tail}"
    if updated == text:
        return False
    doc.write_text(updated)
    return True


if __name__ == "__main__":
    print(f"{DOC}: {'rewritten' if rewrite() else 'already current'}")
