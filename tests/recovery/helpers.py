"""Helpers shared by the crash tests: real CLI processes, fresh engines, expected disk states.

Every operation that is crashed runs in its own CLI process (``python -m diskledger.cli``); the
test process only prepares state and, afterwards, recovers and checks through a fresh ``Engine``.
It never runs an operation it kills, so its recovery is that of a fresh process.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from diskledger.engine import Config, Engine
from diskledger.errors import DiskNotFound, TemplateNotFound
from diskledger.render import disk_json, template_json
from tests.support.ceph import POOL, SNAPSHOT_POOL, CephCluster

MiB = 1 << 20
CLI = (sys.executable, "-m", "diskledger.cli")
TEMP_MARK = ".tmp-"
IN_CI = os.environ.get("CI") == "true"

ABSENT: dict[str, Any] = {"state": "absent"}
"""How a disk or template the ledger does not hold (or holds as gone) compares."""

DISK_KEYS = ("state", "size", "format", "template", "backing", "snapshots", "location")
TEMPLATE_KEYS = ("state", "format", "virtual_size", "location", "source")


def unavailable(reason: str) -> None:
    """Skip for missing infrastructure, except under CI=true, where that is a failure."""
    if IN_CI:
        pytest.fail(f"{reason}; under CI=true a missing component is a failure", pytrace=False)
    pytest.skip(reason)


def write_data_image(path: Path, size: int, *, chunk: int, every: int, seed: int) -> Path:
    """A raw image of ``size`` bytes with ``chunk`` bytes of random data every ``every`` bytes
    (holes between): a sparse copy must really read and write the data parts."""
    rng = random.Random(seed)
    with path.open("wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, every):
            handle.seek(offset)
            handle.write(rng.randbytes(min(chunk, size - offset)))
    return path


# -- CLI processes -----------------------------------------------------------------------------


def cli_env(
    *, fault: str | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A CLI process's environment: nothing DISKLEDGER_* from outside but ``environ`` (the rbd
    backend's cluster settings, see ``CephCluster.environ``), no recovery when its engine opens
    (the test decides when recovery runs), and ``fault`` armed if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISKLEDGER_")}
    env.update(environ or {})
    env["DISKLEDGER_RECOVER"] = "0"
    if fault is not None:
        env["DISKLEDGER_FAULT"] = fault
    return env


def cli_args(root: Path, backend: str, argv: Sequence[str]) -> list[str]:
    return [*argv, "--root", str(root), "--backend", backend, "--json"]


def cli(
    root: Path,
    *argv: str,
    backend: str = "raw",
    fault: str | None = None,
    timeout: float = 120,
    environ: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one CLI command with ``--json`` in a new process and wait for it (``environ``: extra
    DISKLEDGER_* settings, the cluster's for ``rbd``)."""
    return subprocess.run(
        [*CLI, *cli_args(root, backend, argv)],
        env=cli_env(fault=fault, environ=environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(
    root: Path, *argv: str, backend: str = "raw", environ: Mapping[str, str] | None = None
) -> Any:
    done = cli(root, *argv, backend=backend, environ=environ)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}: {done.stderr}"
    return json.loads(done.stdout)


def error_line(stderr: str) -> str:
    """The CLI's one error line (the contract: exactly one line on stderr)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one error line, got {stderr!r}"
    assert lines[0].startswith("diskledger: error: "), lines[0]
    return lines[0]


_WORKER = """\
import importlib, json, pkgutil, sys
import diskledger
from diskledger.cli import main
# The command line imports most of diskledger on first use: import it all now, so that what runs
# after go is the command itself, as in a process that had run one before.
for info in pkgutil.walk_packages(diskledger.__path__, "diskledger."):
    if not info.name.endswith("__main__") and ".migrations" not in info.name:
        importlib.import_module(info.name)
from oslo_utils.imageutils import format_inspector
sys.stderr.write("ready\\n")
sys.stderr.flush()
sys.exit(main(json.loads(sys.stdin.readline())))
"""


@dataclass(frozen=True, slots=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    """From ``go`` to the end of the process's output (its exit, or its kill)."""
    answered: float | None
    """From ``go`` to its first byte on stdout: the outcome is recorded by then."""
    outlived: int = 0
    """How many of the tools it ran were still running when it was gone."""


class WarmCli:
    """A CLI process started ahead: its imports are done and it waits for its arguments.

    What runs after ``go`` is ``diskledger.cli.main(argv)`` in that process, exactly as the
    ``diskledger`` script runs it; only the interpreter start (~0.3 s, the same for every
    command) is taken out of the time a kill may land in. It leads its own process group, so
    ``kill()`` can take down the tools it runs (cp, qemu-img) with it, as a power cut would.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.started = 0.0
        self._ready = False
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._stdout = ""
        self._answered: float | None = None
        self._ended = 0.0

    def ready(self) -> None:
        if not self._ready:
            line = _pipe(self.proc.stderr).readline()
            assert line == "ready\n", f"the CLI worker did not start: {line!r}"
            self._ready = True

    def go(self, root: Path, backend: str, argv: Sequence[str]) -> None:
        self.ready()
        stdin = _pipe(self.proc.stdin)
        stdin.write(json.dumps(cli_args(root, backend, argv)) + "\n")
        stdin.flush()
        self.started = time.monotonic()
        self._reader.start()

    def _read_stdout(self) -> None:
        stdout = _pipe(self.proc.stdout)
        first = stdout.read(1)
        if first:
            self._answered = time.monotonic() - self.started
        self._stdout = first + stdout.read()
        self._ended = time.monotonic() - self.started

    def kill(self, *, group: bool = True) -> None:
        """SIGKILL the process (``group``: and every tool it runs) if it still runs."""
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.send_signal(signal.SIGKILL)  # no-op once it has been reaped

    def finish(self, timeout: float = 120) -> Finished:
        """Wait for the process, then for every tool it started (which may outlive it)."""
        self.proc.wait(timeout)
        self._reader.join(timeout)
        err = _pipe(self.proc.stderr).read()  # one line, or a traceback: never a full pipe
        outlived = len(group_members(self.proc.pid))
        wait_group_gone(self.proc.pid)
        return Finished(
            self.proc.returncode, self._stdout, err, self._ended, self._answered, outlived
        )

    def close(self) -> None:
        self.kill()
        self.proc.communicate()
        wait_group_gone(self.proc.pid)


class WarmPool:
    """Hands out ready ``WarmCli`` processes, starting the next one as each is taken, so that
    its interpreter starts while the previous operation runs."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._next = WarmCli(env)

    def take(self) -> WarmCli:
        worker, self._next = self._next, WarmCli(self.env)
        worker.ready()
        return worker

    def close(self) -> None:
        self._next.close()


def _pipe(stream: IO[str] | None) -> IO[str]:
    assert stream is not None
    return stream


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while members := group_members(pgid):
        assert time.monotonic() < deadline, f"processes {members} outlived the CLI by {timeout} s"
        time.sleep(0.005)


# -- engines and states ------------------------------------------------------------------------


def open_engine(
    root: Path, backend: str = "raw", environ: Mapping[str, str] | None = None
) -> Engine:
    """An engine on ``root`` that does not recover on open: the test says when it recovers.
    ``environ``: DISKLEDGER_* settings beyond root and backend (the cluster's, for ``rbd``)."""
    return Engine.open(
        Config.load(root=root, backend=backend, environ=dict(environ or {}), recover=False)
    )


def disk_state(engine: Engine, disk: str) -> dict[str, Any]:
    """The fields of ``disk show --json`` that say what the disk is (no version, no pending)."""
    try:
        doc = disk_json(engine.show(disk))
    except DiskNotFound:
        return ABSENT
    return ABSENT if doc["state"] == "absent" else {k: doc[k] for k in DISK_KEYS}


def template_state(engine: Engine, template: str) -> dict[str, Any]:
    try:
        doc = template_json(engine.template(template), [])
    except TemplateNotFound:
        return ABSENT
    return {k: doc[k] for k in TEMPLATE_KEYS}


def disk_location(root: Path, disk: str, backend: str = "raw") -> str:
    """Where ``backend`` keeps ``disk``: a file under the root, or ``pool/instance~name``."""
    if backend == "rbd":
        return f"{POOL}/{disk.replace('/', '~')}"
    return str(root / "disks" / disk)


def template_location(root: Path, template: str, backend: str = "raw") -> str:
    if backend == "rbd":
        return f"{POOL}/_base~{template}"
    return str(root / "templates" / template)


def disk_format(backend: str) -> str:
    """The format of the disks ``backend`` makes (RBD images are raw)."""
    return "raw" if backend == "rbd" else backend


def clone_backing(root: Path, template: str, backend: str) -> str | None:
    """The backing a disk made from ``template`` records: the cached template for a qcow2
    overlay, the template's protected snapshot for an RBD clone, none for a raw copy."""
    if backend == "qcow2":
        return template_location(root, template, backend)
    if backend == "rbd":
        return f"{template_location(root, template, backend)}@snap"
    return None


def created_state(
    root: Path,
    disk: str,
    backend: str,
    size: int,
    *,
    template: str | None = None,
    backing: str | None = None,
) -> dict[str, Any]:
    """A disk just created by ``backend`` (``raw``, ``qcow2`` or ``rbd``)."""
    return {
        "state": "created",
        "size": size,
        "format": disk_format(backend),
        "template": template,
        "backing": backing,
        "snapshots": [],
        "location": disk_location(root, disk, backend),
    }


def after(
    before: dict[str, Any], op: str, arg: Any = None, *, resized: bool = False
) -> dict[str, Any]:
    """The state a completed ``op`` leaves a live disk in (``arg``: the size or snapshot name;
    ``resized``: whether the disk ever grew, which removing its last snapshot returns it to)."""
    if op == "resize":
        state = "resized" if before["state"] == "created" else before["state"]
        return {**before, "state": state, "size": arg}
    if op == "snapshot":
        return {**before, "state": "snapshotted", "snapshots": [*before["snapshots"], arg]}
    if op == "remove-snapshot":
        left = [s for s in before["snapshots"] if s != arg]
        state = "snapshotted" if left else "resized" if resized else "created"
        return {**before, "state": state, "snapshots": left}
    if op in ("rollback", "export"):
        return before  # the data or a copy outside changes, not what the ledger says
    if op == "delete":
        return ABSENT
    raise AssertionError(f"no expected state for {op}")


def temp_leftovers(*directories: Path) -> list[str]:
    """Every name under ``directories`` that is a temporary (``*.tmp-*``) one."""
    found = []
    for directory in directories:
        for parent, dirs, files in os.walk(directory):
            found.extend(os.path.join(parent, n) for n in (*dirs, *files) if TEMP_MARK in n)
    return found


def assert_consistent(
    root: Path,
    *beside: Path,
    backend: str = "raw",
    ceph: CephCluster | None = None,
) -> None:
    """What every crash must end in: the ledger verifies (chain, read models, no orphan and no
    drift under the root or in the pool), nothing is pending, and no temporary name is left under
    the root or in ``beside`` (where exports were written). With ``ceph`` (the rbd backend), the
    pools hold exactly what the ledger names, too (``assert_pools_match_ledger``)."""
    environ = ceph.environ() if ceph is not None else None
    with open_engine(root, backend, environ) as engine:
        report = engine.verify()
        assert report.ok, json.dumps(report.to_json(), indent=2)
        again = engine.recover(dry_run=True)
        assert again.pending == [], again.to_json()
        if ceph is not None:
            with PoolView(ceph) as pools:
                assert_pools_match_ledger(engine, pools)
    assert temp_leftovers(root, *beside) == []


# -- the pools, as client.admin sees them -------------------------------------------------------


def ledger_pool_names(engine: Engine) -> dict[str, set[str]]:
    """What the ledger says each pool holds, as ``image`` and ``image@snapshot`` names: every
    live rbd disk with each snapshot it recorded, every cached template with its protected
    ``snap``, and in the snapshot pool each image a completed direct-snapshot published."""
    names: dict[str, set[str]] = {POOL: set(), SNAPSHOT_POOL: set()}

    def add(location: str, snapshots: Sequence[str]) -> None:
        pool, _, image = location.partition("/")
        names.setdefault(pool, set()).update([image, *(f"{image}@{s}" for s in snapshots)])

    for disk in engine.list():
        if disk.location and disk.backend == "rbd":
            add(disk.location, disk.snapshot_names)
    for template in engine.list_templates():
        if template.location and template.location.startswith(f"{POOL}/"):
            add(template.location, ["snap"])
    for event in engine.history():
        if event.type == "disk.direct-snapshot.completed":
            # rbd://<fsid>/<pool>/<image>/<snap>
            pool, image, snap = event.data["url"].removeprefix("rbd://").split("/")[1:]
            add(f"{pool}/{image}", [snap])
    return names


class PoolView:
    """The pools as client.admin sees them, through librbd in this process (an ``rbd ls``
    process per look would cost a tenth of a second each: the torture looks after every kill)."""

    def __init__(self, ceph: CephCluster) -> None:
        import rados

        # Timeouts: a request an OSD never answers fails the look (and the test, with the
        # reason) instead of stalling the whole run.
        self.cluster = rados.Rados(
            conffile=str(ceph.conf),
            rados_id="admin",
            conf={
                "keyring": str(ceph.admin_keyring),
                "rados_osd_op_timeout": "60",
                "rados_mon_op_timeout": "60",
            },
        )
        self.cluster.connect(timeout=10)

    def contents(self, pool: str) -> set[str]:
        """Every image (``name``) and snapshot (``name@snap``) in ``pool``."""
        import rbd

        found: set[str] = set()
        with self.cluster.open_ioctx(pool) as ioctx:
            for name in rbd.RBD().list(ioctx):
                found.add(name)
                try:
                    with rbd.Image(ioctx, name, read_only=True) as image:
                        found.update(f"{name}@{s['name']}" for s in image.list_snaps())
                except rbd.ImageNotFound:
                    continue
        return found

    def close(self) -> None:
        self.cluster.shutdown()

    def __enter__(self) -> PoolView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pool_mismatch(engine: Engine, pools: PoolView) -> dict[str, Any]:
    """How the pools differ from what the ledger names (empty when they are the same); a
    temporary (``.tmp-``) name is always a difference."""
    problems: dict[str, Any] = {}
    for pool, expected in ledger_pool_names(engine).items():
        found = pools.contents(pool)
        if found != expected:
            problems[pool] = {
                "unexpected": sorted(found - expected),
                "missing": sorted(expected - found),
            }
        if temporary := sorted(n for n in found if TEMP_MARK in n):
            problems.setdefault(pool, {})["temporary"] = temporary
    return problems


def assert_pools_match_ledger(engine: Engine, pools: PoolView) -> None:
    problems = pool_mismatch(engine, pools)
    assert problems == {}, json.dumps(problems, indent=2)


def rbd_spec(ceph: CephCluster, location: str) -> str:
    """``pool/image`` as qemu's rbd driver names it, as client.admin (for qemu-io)."""
    return f"rbd:{location}:id=admin:conf={ceph.conf}:keyring={ceph.admin_keyring}"
