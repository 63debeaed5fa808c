"""The power-loss rig's workload, run INSIDE the test guest on the file system under test (ext4
on dm-log-writes): a seeded mix of operations on a raw and a qcow2 engine, each called with an
op id, each return logged, and a dm-log-writes mark after it, so that a replayed crash state
knows exactly which calls had returned before it.

    python3 workload.py SEED OPS DM_NAME|- [NAME_PREFIX] [--unsafe-no-fsync] [--judge=RECORDS]

``--judge``: first recover and judge what a killed run left (``judge``), then go on.

Prints one JSON line per call (``n``, what was called, whether it returned, and the world a
caller sees after it: ``world.py``), then ``{"done": ...}``. ``--unsafe-no-fsync`` is the
control: ``os.fsync`` does nothing and SQLite runs ``synchronous=OFF``, so the rig must see
acknowledged operations lost, or it proves nothing.

Self-contained (diskledger and ``world.py``): the guest has diskledger, not this repository's
``tests`` package.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from world import (
    BACKENDS,
    HOST,
    MOUNT,
    exports_of,
    observe,
    observe_disk,
    observe_exports,
    open_engines,
    recover_and_judge,
    root_of,
)

from diskledger.engine import Config, Engine, encryption
from diskledger.errors import DiskLedgerError
from diskledger.store import connect

MiB = 1 << 20
SOURCES = "/tmp/pl-sources"
"""Template and import sources live off the file system under test, as a download would."""


def unsafe() -> None:
    """The control: no fsync anywhere in this process, and a ledger that never syncs."""
    os.fsync = lambda fd: None  # type: ignore[assignment]
    os.fdatasync = lambda fd: None  # type: ignore[assignment]
    configure = connect._configure_sqlite

    def no_sync(engine: Any, *args: Any) -> None:
        configure(engine, *args)

        @connect.sa_event.listens_for(engine, "connect")
        def _off(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.cursor().execute("PRAGMA synchronous=OFF")

    connect._configure_sqlite = no_sync  # type: ignore[assignment]


def sector(label: str) -> bytes:
    text = f"{label}|".encode()
    return text.ljust(512, bytes([0x41 + zlib.crc32(text) % 26]))


def make_sources() -> dict[str, tuple[str, str]]:
    """Source images (path, format) with a few known sectors each."""
    os.makedirs(SOURCES, exist_ok=True)
    sources = {}
    for name, size in (("alpine", MiB), ("cirros", 2 * MiB), ("blob", MiB + 512 * 1024)):
        raw = os.path.join(SOURCES, f"{name}.raw")
        with open(raw, "wb") as image:
            image.truncate(size)
            for offset in (0, size // 3 // 512 * 512, size - 512):
                image.seek(offset)
                image.write(sector(f"{name}@{offset}"))
        sources[f"{name}-raw"] = (raw, "raw")
        qcow2 = os.path.join(SOURCES, f"{name}.qcow2")
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow2], check=True
        )  # fmt: skip
        sources[f"{name}-qcow2"] = (qcow2, "qcow2")
    return sources


class Workload:
    def __init__(self, seed: int, dm_name: str | None, prefix: str = "vm") -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.dm_name = dm_name
        self.sources = make_sources()
        self.engines = {
            backend: Engine.open(
                Config.load(
                    root=root_of(backend),
                    backend=backend,
                    environ={**os.environ, "DISKLEDGER_HOST": HOST},
                )
            )
            for backend in BACKENDS
        }
        os.makedirs(exports_of(), exist_ok=True)
        self.world: dict[str, Any] = observe(self.engines)
        self.n = 0
        self.names = 0
        self.prefix = prefix
        self.backend = BACKENDS[0]

    def mark(self, label: str) -> None:
        if self.dm_name is None:
            return
        subprocess.run(["dmsetup", "message", self.dm_name, "0", "mark", label], check=True)

    # -- choosing -------------------------------------------------------------------------------

    def disks(self, backend: str) -> dict[str, Any]:
        disks: dict[str, Any] = self.world[backend]["disks"]
        return disks

    def step(self) -> dict[str, Any]:
        backend = self.rng.choice(BACKENDS)
        engine = self.engines[backend]
        templates: list[str] = self.world[backend]["templates"]
        disks = self.disks(backend)
        choices: list[tuple[int, Callable[[], dict[str, Any]]]] = [
            (3 if len(templates) < 2 else 1, lambda: self.add_template(backend)),
            (1, lambda: self.import_disk(backend)),
            (1 if len(disks) >= 4 else 2, lambda: self.blank(backend)),
        ]
        if templates:
            many = len(disks) >= 4
            choices.append(
                (1 if many else 4, lambda: self.create(backend, self.rng.choice(templates)))
            )
        if disks:
            disk = self.rng.choice(sorted(disks))
            seen = disks[disk]
            choices += [
                (4, lambda: self.write(backend, disk)),
                (3, lambda: self.call(engine.resize, disk, seen["size"] + self.grow())),
                (3, lambda: self.call(engine.snapshot, disk, f"s{self.new_name()}")),
                (2, lambda: self.export(backend, disk)),
                (3 if len(disks) >= 4 else 1, lambda: self.call(engine.delete, disk)),
            ]
            if seen["snapshots"]:
                snap = self.rng.choice(seen["snapshots"])
                choices += [
                    (4, lambda: self.call(engine.rollback, disk, snap)),
                    (2, lambda: self.call(engine.remove_snapshot, disk, snap)),
                ]
            # Refused and failed calls are outcomes too: the ledger must keep saying so.
            choices.append(
                (1, lambda: self.call(engine.resize, disk, max(512, seen["size"] - MiB)))
            )
        weights = [weight for weight, _ in choices]
        action = self.rng.choices([a for _, a in choices], weights=weights)[0]
        self.backend = backend
        return action()

    def grow(self) -> int:
        return self.rng.choice((512 * 1024, MiB, 3 * 512 * 1024))

    def new_name(self) -> int:
        self.names += 1
        return self.names

    # -- calls ----------------------------------------------------------------------------------

    def op_id(self) -> str:
        return f"pl-{self.seed}-{self.n}"

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        record: dict[str, Any] = {
            "op": method.__name__,
            "args": [str(a) for a in args],
            "op_id": self.op_id(),
        }
        self.calling(record)
        try:
            method(*args, op_id=self.op_id(), **kwargs)
        except DiskLedgerError as exc:
            record.update(returned=False, error=f"{type(exc).__name__}: {exc}")
        else:
            record.update(returned=True)
        return record

    def add_template(self, backend: str) -> dict[str, Any]:
        source = self.rng.choice(sorted(self.sources))
        path, fmt = self.sources[source]
        return self.call(self.engines[backend].add_template, f"t-{source}", path, fmt)

    def create(self, backend: str, template: str) -> dict[str, Any]:
        disk = f"{self.prefix}-{self.new_name()}/root"
        size = None if self.rng.random() < 0.5 else 4 * MiB
        return self.call(
            self.engines[backend].create,
            disk,
            template=template,
            size=size,
            encrypt=self.encrypt(backend),
        )

    def blank(self, backend: str) -> dict[str, Any]:
        disk = f"{self.prefix}-{self.new_name()}/data"
        size = self.rng.choice((MiB, 2 * MiB))
        return self.call(
            self.engines[backend].create, disk, size=size, encrypt=self.encrypt(backend)
        )

    def encrypt(self, backend: str) -> bool:
        """A qcow2 disk is sometimes encrypted: its key is a file on the same file system."""
        return backend == "qcow2" and self.rng.random() < 0.3

    def import_disk(self, backend: str) -> dict[str, Any]:
        path, fmt = self.sources[self.rng.choice(sorted(self.sources))]
        disk = f"{self.prefix}-{self.new_name()}/imported"
        return self.call(self.engines[backend].import_disk, disk, path, fmt)

    def export(self, backend: str, disk: str) -> dict[str, Any]:
        fmt = self.rng.choice(("raw", "qcow2"))
        target = os.path.join(exports_of(), f"{disk.replace('/', '-')}-{self.n}.{fmt}")
        return self.call(self.engines[backend].export, disk, target, fmt)

    def write(self, backend: str, disk: str) -> dict[str, Any]:
        """A guest writing to its disk, flushed before the call returns: not an operation of
        diskledger's, but what its snapshots, rollbacks and exports must carry."""
        view = self.engines[backend].show(disk)
        assert view.location is not None and view.size is not None
        offset = self.rng.randrange(0, view.size // 4096) * 4096
        pattern = self.n % 250 + 1
        record = {"op": "write", "args": [disk, str(offset), str(pattern)]}
        self.calling(record)
        if view.encryption is not None:
            with encryption.luks(self.engines[backend].runtime, view.encryption) as luks:
                subprocess.run(
                    ["qemu-io", *luks.object_args(), "--image-opts",
                     luks.image_opts(view.location), "-c", f"write -P {pattern} {offset} 4096",
                     "-c", "flush"],
                    check=True, capture_output=True,
                )  # fmt: skip
        elif view.format == "raw":
            fd = os.open(view.location, os.O_WRONLY)
            try:
                os.pwrite(fd, bytes([pattern]) * 4096, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            subprocess.run(
                ["qemu-io", "-f", view.format, "-c", f"write -P {pattern} {offset} 4096",
                 "-c", "flush", view.location],
                check=True, capture_output=True,
            )  # fmt: skip
        return {**record, "returned": True}

    def calling(self, record: dict[str, Any]) -> None:
        """Said before each call: a guest killed during it leaves this as its last line."""
        print(json.dumps({"calling": self.n, "backend": self.backend, **record}), flush=True)

    # -- the world after each call --------------------------------------------------------------

    def refresh(self, backend: str, record: dict[str, Any]) -> None:
        engine = self.engines[backend]
        part = self.world[backend]
        part["templates"] = sorted(t.template for t in engine.list_templates())
        names = {d.disk for d in engine.list()} | set(part["disks"])
        touched = [a for a in record["args"] if a in names]
        for disk in touched:
            seen = observe_disk(engine, disk)
            if seen is None:
                part["disks"].pop(disk, None)
            else:
                part["disks"][disk] = seen
        if record["op"] == "export":
            self.world["exports"] = observe_exports()

    def run(self, ops: int) -> None:
        os.sync()
        self.mark("start")
        started = time.monotonic()
        print(json.dumps({"n": 0, "op": None, "returned": True, "world": self.world}), flush=True)
        for self.n in range(1, ops + 1):
            record = self.step()
            self.mark(f"ack-{self.n}")
            record["n"] = self.n
            record["backend"] = self.backend
            self.refresh(self.backend, record)
            record["world"] = self.world
            print(json.dumps(record, sort_keys=True), flush=True)
        full = observe(self.engines)
        print(
            json.dumps(
                {
                    "done": ops,
                    "seconds": round(time.monotonic() - started, 1),
                    "consistent": full == self.world,
                    "world": full,
                }
            ),
            flush=True,
        )


def judge(path: str) -> None:
    """After a guest kill: recover what the last run left and judge it against what its calls
    had returned (``world.recover_and_judge``); one JSON line."""
    records = json.loads(Path(path).read_text())
    engines = open_engines()
    try:
        running = records[-1]["world"] is None
        lo = len(records) - 1 - running
        result = recover_and_judge(engines, records, lo, lo + running)
    except Exception as exc:  # the host reports it; the workload still runs
        result = {"problems": [f"{type(exc).__name__}: {exc}"]}
    finally:
        for engine in engines.values():
            engine.close()
    print(json.dumps({"judged": True, "acked": lo, **result}), flush=True)


def main(argv: list[str]) -> int:
    flags = {a.partition("=")[0]: a.partition("=")[2] for a in argv if a.startswith("--")}
    seed, ops, dm_name, *rest = [a for a in argv if not a.startswith("--")]
    if "--unsafe-no-fsync" in flags:
        unsafe()
    Path(MOUNT).mkdir(parents=True, exist_ok=True)
    if "--judge" in flags:
        judge(flags["--judge"])
    Workload(int(seed), None if dm_name == "-" else dm_name, *rest).run(int(ops))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
