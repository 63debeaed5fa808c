"""``diskledger demo``: the main job on the embedded default, readable for a person."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from diskledger.backends import qemu
from diskledger.engine import Engine
from diskledger.errors import TemplateNotFound
from diskledger.render import disk_json, event_json, print_disks, print_history, print_templates
from diskledger.states import DiskState

__all__ = ["run_demo"]

TEMPLATE = "demo-base"
ROOT_DISKS = {"web-1/root": "1G", "web-2/root": None, "db-1/root": "2G"}
EPHEMERAL = ("db-1/ephemeral", "512M")


def _source_image(directory: Path) -> Path:
    """A small qcow2 image with recognisable bytes in its first sector, made with qemu-img."""
    qcow2 = directory / "demo-base.qcow2"
    raw = directory / "demo-base.raw"
    with raw.open("wb") as handle:
        handle.write(b"diskledger demo image\n".ljust(512, b"\0"))
        handle.truncate(256 << 20)
    qemu.convert(str(raw), "raw", str(qcow2), "qcow2")
    raw.unlink()
    return qcow2


def run_demo(engine: Engine, *, quiet: bool = False) -> dict[str, Any]:
    def say(text: str) -> None:
        if not quiet:
            print(text)

    say(f"ledger:  {engine.store.url}   backend: {engine.backend.name}\n")
    try:
        engine.template(TEMPLATE)
        say(f"== template {TEMPLATE} is already cached")
    except TemplateNotFound:
        # The source lives outside the root: everything under the root is named by the ledger.
        with tempfile.TemporaryDirectory(prefix="diskledger-demo-") as scratch:
            source = _source_image(Path(scratch))
            say(f"== caching template {TEMPLATE} from a fresh qcow2 image ({source})")
            engine.add_template(TEMPLATE, source, "qcow2")
    if not quiet:
        print_templates(engine.list_templates(), {TEMPLATE: []})

    say("\n== creating disks (a disk left by an earlier demo run is deleted first)")
    for disk in (*ROOT_DISKS, EPHEMERAL[0]):
        if any(v.disk == disk for v in engine.list()):
            engine.delete(disk)
            say(f"   deleted {disk}")
    for disk, size in ROOT_DISKS.items():
        engine.create(disk, template=TEMPLATE, size=size)
        say(f"   created {disk} from {TEMPLATE}" + (f" at {size}" if size else ""))
    engine.create(EPHEMERAL[0], size=EPHEMERAL[1])
    say(f"   created {EPHEMERAL[0]}, blank, {EPHEMERAL[1]}")

    say("\n== resizing web-1/root to 4G, snapshotting db-1/root, then growing it")
    engine.resize("web-1/root", "4G")
    engine.snapshot("db-1/root", "before-upgrade")
    engine.resize("db-1/root", "3G")

    live = [v for v in engine.list() if v.state is not DiskState.ABSENT]
    say("")
    if not quiet:
        print_disks(live)
    trail = engine.history("db-1/root")
    say("\n== audit trail of db-1/root (diskledger history db-1/root)")
    if not quiet:
        print_history(trail)
    return {
        "disks": [disk_json(v) for v in live],
        "history": {"db-1/root": [event_json(e) for e in trail]},
    }
