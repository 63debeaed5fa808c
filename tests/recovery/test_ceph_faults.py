"""Faults of the Ceph cluster itself: an OSD that stops answering for a while, or for longer than
the retry budget, and a process killed while it does; and the retry policies of
``diskledger.backends.rbd.policies`` applied by ``Cluster.call``, on their own.

The OSD is frozen with SIGSTOP and let go on with SIGCONT (``CephCluster.freeze_osd``/``thaw_osd``):
to a client that is an OSD which stopped answering, and the memstore OSD keeps its data (a real
restart would lose it). Requests to a frozen OSD go unanswered, so librados gives up on each after
``op_timeout`` seconds (2 s here) and ``Cluster.call`` retries it until its budget is spent.

Where the freeze lands: before the operation starts, or -- the interesting place -- just before
one named librbd request of the operation's effect (``clone``, ``rename``, ``resize``...): a hook
wraps ``Cluster.call`` and freezes the OSD the first time a request whose name starts with that
word is made, when the intent is durable and part of the effect may be done.

- **a few seconds** (thawed after 3 s, well inside the 30 s budget): the operation completes, in
  process; the ledger records it completed, ``verify`` is clean and the pools hold exactly what
  the ledger names;
- **past the budget** (budget 5 s, in a CLI process): one error line, "no answer from the cluster
  within 5 s"; after the thaw, ``recover`` in a fresh process leaves nothing behind and the disk
  (or template) exactly as before or exactly as after; an image that holds its exclusive lock is
  then closed in the background, not in the caller's time;
- **killed** (SIGKILL while the OSD is frozen under the process): the same, after the thaw and a
  ``recover`` in a fresh process.

"Nothing behind" is ``assert_consistent``: verify clean, nothing pending, the pools == what the
ledger names, no ``.tmp-`` name; plus no ``rbd_id.<name>`` object without its image (what a
rename cut short leaves).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from diskledger.backends.rbd.cluster import Cluster
from diskledger.backends.rbd.config import CephConfig
from diskledger.backends.rbd.images import Images
from diskledger.backends.rbd.policies import Policy
from diskledger.engine import Engine
from diskledger.errors import CephError, CephUnavailable, ImageBusy, StorageIOError
from tests.recovery.helpers import (
    ABSENT,
    MiB,
    PoolView,
    after,
    assert_consistent,
    cli,
    cli_args,
    cli_env,
    clone_backing,
    created_state,
    disk_state,
    error_line,
    open_engine,
    template_location,
    template_state,
)
from tests.support.ceph import POOL, SNAPSHOT_POOL, CephCluster
from tests.support.crash_report import live_stacks

DISK = "vm-1/root"
NEW_DISK = "vm-1/data"
OP_TIMEOUT = 2.0
SHORT_BUDGET = 5.0
RECOVERY_BUDGET = 45.0
"""Longer than Ceph's default ``osd_client_watch_timeout`` (30 s): see ``recover_in_a_fresh_process``."""
THAW_AFTER = 3.0
"""Seconds a short freeze lasts: past one op timeout (a request times out and is retried), well
inside the default 30 s budget."""


def settings(ceph: CephCluster, *, budget: float | None = None) -> dict[str, str]:
    """The cluster's DISKLEDGER_* settings with a 2 s op timeout (and ``budget``, if given)."""
    env = {**ceph.environ(), "DISKLEDGER_CEPH_OP_TIMEOUT": f"{OP_TIMEOUT:g}"}
    if budget is not None:
        env["DISKLEDGER_CEPH_RETRY_BUDGET"] = f"{budget:g}"
    return env


def osd_pid(ceph: CephCluster) -> int:
    return int((ceph.directory / "run" / "osd.0.pid").read_text().strip())


# -- the operations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """One operation on the prepared ledger: ``vm-1/root`` made from template ``base`` (16 MiB,
    raw) with a snapshot ``s0``."""

    op: str
    """The operation's name in the ledger (``disk.<op>.*``, ``template.fetch.*``)."""
    argv: tuple[str, ...]
    run: Callable[[Engine, Path], object]
    expected: Callable[[Path, dict[str, Any]], dict[str, Any]]
    """The state once the operation completed, from the root and the state before."""
    subject: str = DISK
    """The disk (or ``template:<id>``) whose state the operation changes."""

    def state(self, engine: Engine) -> dict[str, Any]:
        if self.subject.startswith("template:"):
            return template_state(engine, self.subject.removeprefix("template:"))
        return disk_state(engine, self.subject)


def _source(root: Path) -> Path:
    return root.parent / "sources" / "base.raw"


def _created(root: Path, before: dict[str, Any]) -> dict[str, Any]:
    backing = clone_backing(root, "base", "rbd")
    return created_state(root, NEW_DISK, "rbd", 32 * MiB, template="base", backing=backing)


def _cloned(root: Path, before: dict[str, Any]) -> dict[str, Any]:
    backing = clone_backing(root, "base", "rbd")
    return created_state(root, NEW_DISK, "rbd", 16 * MiB, template="base", backing=backing)


def _fetched(root: Path, before: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": "cached",
        "format": "raw",
        "virtual_size": 16 * MiB,
        "location": template_location(root, "other", "rbd"),
        "source": str(_source(root)),
    }


OPS: dict[str, Op] = {
    "create": Op(
        "create",
        ("disk", "create", NEW_DISK, "--template", "base", "--size", "32M"),
        lambda e, _: e.create(NEW_DISK, template="base", size="32M"),
        _created,
        subject=NEW_DISK,
    ),
    "clone": Op(
        "create",
        ("disk", "create", NEW_DISK, "--template", "base"),
        lambda e, _: e.create(NEW_DISK, template="base"),
        _cloned,
        subject=NEW_DISK,
    ),
    "resize": Op(
        "resize",
        ("disk", "resize", DISK, "32M"),
        lambda e, _: e.resize(DISK, "32M"),
        lambda _, old: after(old, "resize", 32 * MiB),
    ),
    "snapshot": Op(
        "snapshot",
        ("disk", "snapshot", DISK, "s1"),
        lambda e, _: e.snapshot(DISK, "s1"),
        lambda _, old: after(old, "snapshot", "s1"),
    ),
    "remove-snapshot": Op(
        "remove-snapshot",
        ("disk", "remove-snapshot", DISK, "s0"),
        lambda e, _: e.remove_snapshot(DISK, "s0"),
        lambda _, old: after(old, "remove-snapshot", "s0"),
    ),
    "rollback": Op(
        "rollback",
        ("disk", "rollback", DISK, "s0"),
        lambda e, _: e.rollback(DISK, "s0"),
        lambda _, old: after(old, "rollback", "s0"),
    ),
    "delete": Op(
        "delete",
        ("disk", "delete", DISK),
        lambda e, _: e.delete(DISK),
        lambda _, old: ABSENT,
    ),
    "flatten": Op(
        "flatten",
        ("disk", "flatten", DISK),
        lambda e, _: e.flatten(DISK),
        lambda _, old: {**old, "backing": None},
    ),
    "direct-snapshot": Op(
        "direct-snapshot",
        ("disk", "direct-snapshot", DISK, "ds", "image-1"),
        lambda e, _: e.direct_snapshot(DISK, "ds", "image-1"),
        lambda _, old: old,
    ),
    "fetch": Op(
        "fetch",
        ("template", "add", "other", "SOURCE", "--format", "raw"),
        lambda e, root: e.add_template("other", _source(root), "raw"),
        _fetched,
        subject="template:other",
    ),
}


@dataclass(slots=True)
class Prepared:
    root: Path
    ceph: CephCluster
    environ: dict[str, str]
    op: Op
    before: dict[str, Any] = field(default_factory=dict)

    def engine(self) -> Engine:
        return open_engine(self.root, "rbd", self.environ)

    @property
    def argv(self) -> list[str]:
        return [str(_source(self.root)) if a == "SOURCE" else a for a in self.op.argv]

    def outcome(self) -> str:
        """The phase of the operation's last event: ``completed``, ``failed``, or ``none``."""
        with self.engine() as engine:
            phases = [
                e.type.rsplit(".", 1)[1]
                for e in engine.history()
                if e.type.count(".") == 2 and e.type.split(".")[1] == self.op.op
            ]
        return phases[-1] if phases else "none"

    def assert_old_or_new(self) -> str:
        """Consistent, and the subject exactly as before or as after; returns which."""
        assert_consistent(self.root, backend="rbd", ceph=self.ceph)
        assert stale_names(self.ceph) == []
        with self.engine() as engine:
            now = self.op.state(engine)
        new = self.op.expected(self.root, self.before)
        assert now in (self.before, new), json.dumps(
            {"now": now, "before": self.before, "after": new}, indent=2
        )
        return "new" if now == new else "old"


def prepare(
    op: str, tmp_path: Path, ceph: CephCluster, source: Path, *, budget: float | None = None
) -> Prepared:
    """A fresh root and ledger with template ``base`` and ``vm-1/root`` (snapshot ``s0``)."""
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "base.raw").write_bytes(source.read_bytes())
    prepared = Prepared(tmp_path / "root", ceph, settings(ceph, budget=budget), OPS[op])
    with prepared.engine() as engine:
        engine.add_template("base", sources / "base.raw", "raw")
        engine.create(DISK, template="base")
        engine.snapshot(DISK, "s0")
        prepared.before = prepared.op.state(engine)
    return prepared


def stale_names(ceph: CephCluster) -> list[str]:
    """``rbd_id.<name>`` objects of names the pool's directory does not list: what a rename
    cut short leaves behind (the name still opens an image, or a removed one)."""
    import rbd

    stale = []
    with PoolView(ceph) as view:
        for pool in (POOL, SNAPSHOT_POOL):
            with view.cluster.open_ioctx(pool) as ioctx:
                listed = set(rbd.RBD().list(ioctx))
                ids = [o.key for o in ioctx.list_objects() if o.key.startswith("rbd_id.")]
                stale += [f"{pool}/{k}" for k in ids if k.removeprefix("rbd_id.") not in listed]
    return stale


def remove_broken_names(ceph: CephCluster) -> None:
    """Clean up after a rename cut short and a removal through the wrong name: names the
    directory lists whose image is gone (librbd removes those by name, which ``purge`` never
    gets to: it opens each image first), then ``rbd_id`` objects of names nobody lists."""
    import rbd

    with PoolView(ceph) as view:
        for pool in (POOL, SNAPSHOT_POOL):
            with view.cluster.open_ioctx(pool) as ioctx:
                for name in rbd.RBD().list(ioctx):
                    try:
                        rbd.Image(ioctx, name, read_only=True).close()
                    except rbd.ImageNotFound:
                        rbd.RBD().remove(ioctx, name)
        for entry in stale_names(ceph):
            pool, _, key = entry.partition("/")
            with view.cluster.open_ioctx(pool) as ioctx:
                ioctx.remove_object(key)


def fence_dead_watchers(ceph: CephCluster) -> None:
    """Blocklist (for 2 minutes) every client that still watches an image: at the end of a
    test only the processes it killed do, and their watches would keep the pools from being
    emptied until the OSD expires them (30 s). What an operator does to fence a dead host."""
    import rbd

    addresses: set[str] = set()
    with PoolView(ceph) as view:
        for pool in (POOL, SNAPSHOT_POOL):
            with view.cluster.open_ioctx(pool) as ioctx:
                for name in rbd.RBD().list(ioctx):
                    try:
                        with rbd.Image(ioctx, name, read_only=True) as image:
                            addresses.update(w["addr"] for w in image.watchers_list())
                    except rbd.ImageNotFound:
                        continue
    for address in sorted(addresses):
        subprocess.run(
            [*admin_ceph(ceph), "osd", "blocklist", "add", address, "120"],
            check=True,
            capture_output=True,
            timeout=60,
        )


def admin_ceph(ceph: CephCluster) -> list[str]:
    return ["ceph", "-c", str(ceph.conf), "-n", "client.admin", "-k", str(ceph.admin_keyring)]


@pytest.fixture
def pools(rbd_pools: CephCluster) -> Iterator[CephCluster]:
    """The cluster with empty pools and a running OSD, also after a test that froze it; the
    clients the test killed are fenced, so that the pools can be emptied at once."""
    try:
        yield rbd_pools
    finally:
        rbd_pools.thaw_osd()
        rbd_pools.settle()
        fence_dead_watchers(rbd_pools)
        remove_broken_names(rbd_pools)


@pytest.fixture
def source(small_templates: dict[str, Path]) -> Path:
    return small_templates["raw"]


# -- freezing the OSD under a request ----------------------------------------------------------


@contextmanager
def freeze_before(
    monkeypatch: pytest.MonkeyPatch, ceph: CephCluster, request: str, *, thaw_after: float
) -> Iterator[list[str]]:
    """Freeze the OSD just before the first librbd request whose name starts with ``request``,
    and thaw it ``thaw_after`` seconds later; yields the names of the requests it froze under."""
    fired: list[str] = []
    timers: list[threading.Timer] = []
    original = Cluster.call

    def call(
        self: Cluster, what: str, fn: Callable[[], Any], *, policy: Policy | None = None
    ) -> Any:
        if not fired and what.startswith(request):
            fired.append(what)
            ceph.freeze_osd()
            timers.append(threading.Timer(thaw_after, ceph.thaw_osd))
            timers[-1].start()
        return original(self, what, fn, policy=policy)

    monkeypatch.setattr(Cluster, "call", call)
    try:
        yield fired
    finally:
        monkeypatch.setattr(Cluster, "call", original)
        for timer in timers:
            timer.join()
        ceph.thaw_osd()


_RUNNER = """\
import os, signal, sys
import rados, rbd
from diskledger.backends.rbd.cluster import Cluster
from diskledger.cli import main

request, pid, marker, trace = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
call = Cluster.call
fired = []

def freezing(self, what, fn, **kw):
    if request and not fired and what.startswith(request):
        fired.append(what)
        os.kill(pid, signal.SIGSTOP)
        with open(marker, "w") as out:
            out.write(what)
    return call(self, what, fn, **kw)

Cluster.call = freezing

# librbd's and the objecter's own account, and an admin socket to ask for the requests in
# flight: what a CLI that does not end is waiting for (its Python stack says only "in librbd").
class Traced(rados.Rados):
    def __init__(self, *args, conf=None, **kw):
        conf = dict(conf or {}, log_file=trace + ".log", admin_socket=trace + ".asok",
                    debug_rbd="20", debug_objecter="20", debug_rados="10", debug_ms="0")
        super().__init__(*args, conf=conf, **kw)

rados.Rados = Traced  # rbd is imported first: it keeps the real type for its checks
sys.exit(main(sys.argv[5:]))
"""


class FreezingCli:
    """``diskledger <argv> --json`` in its own process (group) that freezes the OSD before its
    first librbd request named ``request`` (none: the test froze it already) and records it in
    ``marker``. Beside ``marker``: librados' debug log (rbd, objecter) and its admin socket,
    read when the CLI does not end."""

    def __init__(self, p: Prepared, request: str | None, marker: Path) -> None:
        self.marker = marker
        self.trace = marker.with_name(marker.name + ".librados")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _RUNNER,
                request or "",
                str(osd_pid(p.ceph)),
                str(marker),
                str(self.trace),
                *cli_args(p.root, "rbd", p.argv),
            ],
            env=cli_env(environ=p.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait_frozen(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.proc.poll() is not None:
                _, err = self.proc.communicate()
                raise AssertionError(f"the CLI ended before it froze the OSD: {err}")
            assert time.monotonic() < deadline, "the CLI never made the request"
            time.sleep(0.01)
        time.sleep(0.05)  # the marker is written before its content
        return self.marker.read_text()

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Where it waits, read while the OSD is still frozen (seen once, in flatten).
            stacks = live_stacks(self.proc.pid)
            requests = self._objecter_requests()
            self.kill()
            raise AssertionError(
                f"the CLI had not ended after {timeout:.0f} s; its threads:\n{stacks}\n\n"
                f"its requests in flight (objecter_requests):\n{requests}\n\n"
                f"the end of its librados log:\n{self._log_tail()}"
            ) from None
        return self.proc.returncode, out, err

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()

    def _objecter_requests(self) -> str:
        asok = self.trace.with_name(self.trace.name + ".asok")
        command = ["ceph", "--admin-daemon", str(asok), "objecter_requests"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{asok}: {exc}"
        return (done.stdout + done.stderr).strip()

    def _log_tail(self, lines: int = 300) -> str:
        try:
            text = self.trace.with_name(self.trace.name + ".log").read_text(errors="replace")
        except OSError as exc:
            return str(exc)
        return "\n".join(text.splitlines()[-lines:])


def recover_in_a_fresh_process(p: Prepared) -> dict[str, Any]:
    """``diskledger recover --json`` in a new process. The dead process's watches on the images
    it had open stay until the OSD expires them (``osd_client_watch_timeout``, 30 s after its
    last ping) and an image with watchers cannot be removed: recovery fences the dead writer's
    clients first; the budget is longer than the watch timeout so that, were it unable to, the
    busy policy could still wait the watch out."""
    environ = settings(p.ceph, budget=RECOVERY_BUDGET)
    done = cli(p.root, "recover", backend="rbd", environ=environ, timeout=300)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["needs_operator"] == [], json.dumps(report["needs_operator"], indent=2)
    return report


# -- (a) a few seconds without an answer: the operation completes -----------------------------

SHORT_FREEZES = [
    ("create", "clone"),
    ("clone", "clone"),
    ("create", "rename"),
    ("resize", "resize"),
    ("snapshot", "snapshot"),
    ("remove-snapshot", "remove snapshot"),
    ("rollback", "roll"),
    ("delete", "remove snapshot"),
    ("flatten", "flatten"),
    ("direct-snapshot", "flatten"),
    ("fetch", "rename"),
]


@pytest.mark.parametrize(
    ("op", "request_name"), SHORT_FREEZES, ids=[f"{o}@{r}" for o, r in SHORT_FREEZES]
)
def test_an_osd_frozen_for_seconds_under_a_request_delays_the_operation(
    op: str,
    request_name: str,
    pools: CephCluster,
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = prepare(op, tmp_path, pools, source)
    with (
        p.engine() as engine,
        freeze_before(monkeypatch, pools, request_name, thaw_after=THAW_AFTER) as fired,
    ):
        started = time.monotonic()
        p.op.run(engine, p.root)
        took = time.monotonic() - started
    assert fired, f"{op} made no request named {request_name}"
    assert took >= THAW_AFTER - 0.5  # it did wait for the OSD
    assert p.outcome() == "completed"
    assert p.assert_old_or_new() == "new"


@pytest.mark.parametrize("op", ["create", "resize", "snapshot", "delete"])
def test_an_operation_started_while_the_osd_is_frozen_completes_once_it_answers(
    op: str, pools: CephCluster, source: Path, tmp_path: Path
) -> None:
    """The brief's scenario as it reads: freeze, start the operation in a thread, thaw."""
    p = prepare(op, tmp_path, pools, source)
    failures: list[BaseException] = []
    with p.engine() as engine:

        def run() -> None:
            try:
                p.op.run(engine, p.root)
            except BaseException as exc:  # reported by the test thread
                failures.append(exc)

        pools.freeze_osd()
        worker = threading.Thread(target=run)
        try:
            worker.start()
            time.sleep(THAW_AFTER)
            assert worker.is_alive(), "the operation did not wait for the frozen OSD"
        finally:
            pools.thaw_osd()
        worker.join(60)
        assert not worker.is_alive(), "the operation did not finish after the thaw"
    assert failures == []
    assert p.outcome() == "completed"
    assert p.assert_old_or_new() == "new"


# -- (b) no answer within the budget: one clear error, then recover ----------------------------

LONG_FREEZES = [
    ("resize", None),
    ("create", None),
    ("clone", "clone"),
    ("create", "rename"),
    ("snapshot", "snapshot"),
    ("delete", "remove snapshot"),
    ("direct-snapshot", "flatten"),
]


@pytest.mark.parametrize(
    ("op", "request_name"), LONG_FREEZES, ids=[f"{o}@{r or 'start'}" for o, r in LONG_FREEZES]
)
def test_an_osd_frozen_past_the_budget_fails_with_one_line_then_recovers(
    op: str, request_name: str | None, pools: CephCluster, source: Path, tmp_path: Path
) -> None:
    p = prepare(op, tmp_path, pools, source, budget=SHORT_BUDGET)
    if request_name is None:
        pools.freeze_osd()
    try:
        proc = FreezingCli(p, request_name, tmp_path / "frozen")
        started = time.monotonic()
        code, _, err = proc.finish()
        took = time.monotonic() - started
    finally:
        pools.thaw_osd()
    line = error_line(err)
    assert code == 1
    assert f"no answer from the cluster within {SHORT_BUDGET:g} s" in line, line
    # The effect's budget plus one attempt, then the compensation's single attempt (the
    # cluster was just found silent), plus the interpreter's start: never a second budget, and
    # no wait for the image's close (in the background, even when it holds its lock).
    assert took < SHORT_BUDGET + 2 * OP_TIMEOUT + 4, took
    report = recover_in_a_fresh_process(p)
    assert [o["op"] for o in report["pending"]] in ([], [p.op.op])
    p.assert_old_or_new()


def test_an_image_that_holds_its_lock_is_closed_in_the_background_once_the_osd_is_silent(
    pools: CephCluster, tmp_path: Path
) -> None:
    """What a flatten meets when the OSD freezes after librbd took the image's exclusive lock
    (in the test above, when the SIGSTOP lands late): closing the image would release the lock
    in three requests, an op timeout each, before the error could be reported. Once a request
    ran out of its budget unanswered, the close goes on in a thread of its own; it ends once
    the OSD answers, and leaves neither lock nor watch behind."""
    scratch = f"{POOL}/lock-held"
    environ = settings(pools, budget=SHORT_BUDGET)
    with open_engine(tmp_path / "root", "rbd", environ) as engine:
        cluster: Cluster = engine.backend.cluster  # type: ignore[attr-defined]
        images: Images = engine.backend.rbd  # type: ignore[attr-defined]
        images.create(scratch, 4 << 20)
        with images.image(scratch) as image:
            cluster.call("write", lambda: image.write(b"x" * 4096, 0))  # takes the lock
        assert cluster.closing() == []  # an answered cluster: closed on the spot
        try:
            with pytest.raises(CephUnavailable, match="no answer"), images.image(scratch) as image:
                cluster.call("write", lambda: image.write(b"x" * 4096, 0))
                assert list(image.lock_get_owners()), "the exclusive lock is not held"
                pools.freeze_osd()
                cluster.call("write", lambda: image.write(b"y" * 4096, 1 << 20))
            closing = cluster.closing()
            assert len(closing) == 1, "the close waited for the frozen OSD"
            assert cluster.silent
        finally:
            pools.thaw_osd()
        closing[0].join(60)
        assert not closing[0].is_alive()
        assert cluster.closing() == []
        pools.settle()
        with images.image(scratch, read_only=True) as image:
            assert not cluster.call("look at the lock", image.list_lockers)
        assert images.watchers(scratch) == []
        images.remove_image(scratch)


# -- (c) killed while the OSD is frozen under it ----------------------------------------------

KILLS = [
    ("create", "clone"),
    ("clone", "clone"),
    ("create", "rename"),
    ("resize", "resize"),
    ("snapshot", "snapshot"),
    ("delete", "remove snapshot"),
    ("direct-snapshot", "flatten"),
    ("fetch", "snapshot"),
]


@pytest.mark.parametrize(("op", "request_name"), KILLS, ids=[f"{o}@{r}" for o, r in KILLS])
def test_a_process_killed_while_the_osd_is_frozen_recovers_in_a_fresh_process(
    op: str, request_name: str, pools: CephCluster, source: Path, tmp_path: Path
) -> None:
    p = prepare(op, tmp_path, pools, source)
    proc = FreezingCli(p, request_name, tmp_path / "frozen")
    try:
        assert proc.wait_frozen().startswith(request_name)
        time.sleep(1.0)  # inside librados, waiting for the OSD
        proc.kill()
    finally:
        pools.thaw_osd()
    recover_in_a_fresh_process(p)
    p.assert_old_or_new()


# -- a rename cut short ------------------------------------------------------------------------
#
# librbd renames an image in steps: write ``rbd_id.<new>`` (the new name now opens the image),
# rename the entry in the pool's directory, remove ``rbd_id.<old>``. A process killed between
# them leaves two names that open the same image. Seen here by freezing the OSD 6.5 ms into a
# rename and killing the process; the tests below build the two states directly, as client.admin,
# from a create killed just before its rename (``create@mid-effect``). Recovery finds the final
# name whole and rolls forward; removing the temporary name with librbd's remove would remove the
# image both names open (the published disk), so the backend must finish the rename instead.


def _half_renamed(ceph: CephCluster, directory_updated: bool) -> tuple[str, str]:
    """Turn the create's temporary image into a half-done rename to its final name."""
    import rbd

    with PoolView(ceph) as view, view.cluster.open_ioctx(POOL) as ioctx:
        (temp,) = [n for n in rbd.RBD().list(ioctx) if ".tmp-" in n]
        final = temp.partition(".tmp-")[0]
        image_id = ioctx.read(f"rbd_id.{temp}")
        if directory_updated:  # the last step (removing rbd_id.<old>) is missing
            rbd.RBD().rename(ioctx, temp, final)
            ioctx.write_full(f"rbd_id.{temp}", image_id)
        else:  # only the first step (writing rbd_id.<new>) was done
            ioctx.write_full(f"rbd_id.{final}", image_id)
    return temp, final


@pytest.mark.parametrize("directory_updated", [False, True], ids=["id-written", "dir-renamed"])
def test_a_create_killed_inside_its_rename_recovers_without_losing_the_disk(
    directory_updated: bool, pools: CephCluster, source: Path, tmp_path: Path
) -> None:
    p = prepare("create", tmp_path, pools, source)
    done = cli(p.root, *p.argv, backend="rbd", fault="create@mid-effect", environ=p.environ)
    assert done.returncode == -signal.SIGKILL, done.stderr
    _half_renamed(pools, directory_updated)
    recover_in_a_fresh_process(p)
    p.assert_old_or_new()


# -- a clone in place cut short ---------------------------------------------------------------
#
# A create from a template at the template's size clones under the disk's final name (no
# temporary name, no rename; ``RbdBackend.clone_template``). librbd clones in steps: the child's
# ``rbd_id`` object, its directory entry and header (the name now opens an image with no parent),
# the parent attached to the child, the child attached to the parent's snapshot, the parent's
# image-meta copied. The tests below build each state a clone killed part way leaves, as
# client.admin, under the final name of a create killed at its intent; recovery must tell each
# from a whole clone (by the ``rbd-clone`` artifact its intent names), roll it back and leave
# nothing, not even the ``rbd_id`` object; a whole clone there is rolled forward.


def _child_detach(ioctx: Any, parent: str, child: str) -> None:
    """Undo the last step of a v2 clone: ``child_detach`` on the parent's header (cls_rbd),
    as if the cloning client died before it."""
    import rbd

    with rbd.Image(ioctx, parent, read_only=True) as image:
        parent_id = image.id()
        snap_id = next(s["id"] for s in image.list_snaps() if s["name"] == "snap")
    with rbd.Image(ioctx, child, read_only=True) as image:
        child_id = image.id()

    # cls::rbd::ChildImageSpec: ENCODE_START(2, 1), pool id, image id, pool namespace.
    body = struct.pack("<q", ioctx.get_pool_id()) + _text(child_id) + _text("")
    spec = struct.pack("<BBI", 2, 1, len(body)) + body
    ioctx.execute(
        f"rbd_header.{parent_id}", "rbd", "child_detach", struct.pack("<Q", snap_id) + spec
    )


def _leave_a_clone(ceph: CephCluster, state: str) -> None:
    import rbd

    name = NEW_DISK.replace("/", "~")
    with PoolView(ceph) as view, view.cluster.open_ioctx(POOL) as ioctx:
        if state == "id-object":  # the first write of the clone
            ioctx.write_full(f"rbd_id.{name}", _text("0123456789ab"))
        elif state == "no-parent":  # the child's header, without its parent
            rbd.RBD().create(ioctx, name, 16 * MiB, old_format=False)
        else:  # a v2 clone, whole or not yet listed by its parent's snapshot
            ceph.rbd(
                "clone",
                "--rbd-default-clone-format",
                "2",
                f"{POOL}/_base~base@snap",
                f"{POOL}/{name}",
            )
            if state == "not-listed":
                _child_detach(ioctx, "_base~base", name)


def _text(value: str) -> bytes:
    """A string as Ceph encodes it: its length (32 bits, little-endian), then its bytes."""
    return struct.pack("<I", len(value)) + value.encode()


@pytest.mark.parametrize("state", ["id-object", "no-parent", "not-listed", "whole"])
def test_a_create_killed_inside_its_clone_in_place_recovers_to_one_outcome(
    state: str, pools: CephCluster, source: Path, tmp_path: Path
) -> None:
    p = prepare("clone", tmp_path, pools, source)
    done = cli(p.root, *p.argv, backend="rbd", fault="create@after-intent", environ=p.environ)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with p.engine() as engine:
        (intent,) = [e for e in engine.history(NEW_DISK) if e.type == "disk.create.started"]
    assert [a["kind"] for a in intent.data["artifacts"]] == ["rbd-clone", "rbd-image"]
    _leave_a_clone(pools, state)

    report = recover_in_a_fresh_process(p)

    decided = [o["decision"] for o in (*report["rolled_forward"], *report["rolled_back"])]
    assert decided == ["roll-forward" if state == "whole" else "roll-back"], report
    assert p.assert_old_or_new() == ("new" if state == "whole" else "old")
    if state != "whole":
        with p.engine() as engine:  # the name is free again: the disk can be made
            engine.create(NEW_DISK, template="base")
            assert engine.verify().ok


# -- the policies on their own (no cluster) ----------------------------------------------------


def _cluster(**overrides: float) -> Cluster:
    return Cluster(CephConfig(conf="/nonexistent/ceph.conf", pool=POOL, **overrides))  # type: ignore[arg-type]


def _failing(codes: list[int], calls: list[float], result: str = "done") -> Callable[[], str]:
    """Raises OSError(code) for each of ``codes`` in turn, then returns ``result``."""

    def fn() -> str:
        calls.append(time.monotonic())
        if len(calls) <= len(codes):
            code = codes[len(calls) - 1]
            raise OSError(code, os.strerror(code))
        return result

    return fn


QUICK = Policy("quick", CephConfig(conf="c", pool=POOL).busy.retry_on, 5.0, 0.01, 0.05)
"""The busy policy's errnos with waits short enough for many cases."""


@pytest.mark.parametrize(
    "code",
    [errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.ECONNRESET, errno.EROFS, errno.EBADMSG],
    ids=errno.errorcode.get,
)
def test_a_transient_errno_twice_then_success_is_retried(code: int) -> None:
    calls: list[float] = []
    assert _cluster().call("stat pool/image", _failing([code, code], calls)) == "done"
    assert len(calls) == 3


def test_the_transient_policy_waits_as_declared() -> None:
    """0.2 s, then 0.4 s (exponential from 0.2 s)."""
    calls: list[float] = []
    rados = pytest.importorskip("rados")

    def fn() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise rados.TimedOut("timed out", errno=errno.ETIMEDOUT)
        return "done"

    assert _cluster().call("stat pool/image", fn) == "done"
    waits = [b - a for a, b in itertools.pairwise(calls)]
    assert 0.18 <= waits[0] < 0.35 and 0.38 <= waits[1] < 0.6, waits


PERMANENT = [
    (errno.ENOENT, CephError),
    (errno.EEXIST, CephError),
    (errno.EPERM, CephError),
    (errno.EACCES, CephError),
    (errno.EINVAL, CephError),
    (errno.ENOSPC, StorageIOError),
    (errno.EDQUOT, StorageIOError),
]


@pytest.mark.parametrize(
    ("code", "error"), PERMANENT, ids=[errno.errorcode[c] for c, _ in PERMANENT]
)
def test_a_permanent_errno_is_not_retried(code: int, error: type[Exception]) -> None:
    for policy in (None, CephConfig(conf="c", pool=POOL).busy):
        calls: list[float] = []
        with pytest.raises(error) as caught:
            _cluster().call("create pool/image", _failing([code], calls), policy=policy)
        assert len(calls) == 1
        assert type(caught.value) is error and caught.value.errno == code  # type: ignore[attr-defined]
        assert str(caught.value).startswith("ceph: create pool/image: ")


def test_ebusy_is_retried_only_under_the_busy_policy() -> None:
    cluster = _cluster(busy_budget=0.3)
    calls: list[float] = []
    with pytest.raises(ImageBusy, match="still in use"):
        cluster.call("remove pool/image", _failing([errno.EBUSY], calls))
    assert len(calls) == 1
    calls = []
    assert cluster.call("remove pool/image", _failing([errno.EBUSY], calls), policy=QUICK)
    assert len(calls) == 2


@pytest.mark.parametrize("budget", [0.05, 0.3, 1.0])
def test_the_budget_bounds_the_total_time(budget: float) -> None:
    calls: list[float] = []
    started = time.monotonic()
    with pytest.raises(
        CephUnavailable, match=re.escape(f"no answer from the cluster within {budget:g} s")
    ):
        _cluster(retry_budget=budget).call(
            "stat pool/image", _failing([errno.ETIMEDOUT] * 1000, calls)
        )
    took = time.monotonic() - started
    # No attempt starts once its wait would end past the budget; the attempts are instant here.
    assert took <= budget + 0.05, took
    assert len(calls) >= (2 if budget >= 0.2 else 1)


def test_after_a_call_ran_out_of_budget_the_next_tries_once_until_one_is_answered() -> None:
    cluster = _cluster(retry_budget=0.5)
    calls: list[float] = []
    with pytest.raises(CephUnavailable, match=r"within 0\.5 s"):
        cluster.call("stat pool/a", _failing([errno.ETIMEDOUT] * 1000, calls))
    assert len(calls) > 1

    calls = []  # the compensation's probe, say: one attempt, at once
    with pytest.raises(CephUnavailable, match="tried once"):
        cluster.call("stat pool/b", _failing([errno.ETIMEDOUT] * 1000, calls))
    assert len(calls) == 1

    calls = []  # the cluster is back: answered, and retries resume after it
    assert cluster.call("stat pool/c", _failing([], calls)) == "done"
    calls = []
    assert cluster.call("stat pool/d", _failing([errno.ETIMEDOUT], calls)) == "done"
    assert len(calls) == 2


def test_erofs_answered_at_once_is_a_lock_held_elsewhere_and_unanswered_is_unavailable() -> None:
    """librbd says EROFS when it could not take the image's exclusive lock: at once when another
    client holds it, after the op timeout when nobody answered the request."""
    cluster = _cluster(retry_budget=0.3, op_timeout=0.1)
    with pytest.raises(ImageBusy, match="exclusive lock"):
        cluster.call("resize pool/image", _failing([errno.EROFS] * 1000, []))

    def slow() -> None:
        time.sleep(0.06)
        raise OSError(errno.EROFS, "RBD read-only image")

    with pytest.raises(CephUnavailable, match="no answer from the cluster"):
        _cluster(retry_budget=0.3, op_timeout=0.1).call("resize pool/image", slow)


def test_a_lost_connection_is_not_retried_on_dead_handles() -> None:
    """ESHUTDOWN (blocklisted) from a request on the caller's handles: retrying on them would
    only fail again; one attempt, and a clear error."""
    calls: list[float] = []
    with pytest.raises(CephUnavailable, match="lost its connection to the cluster"):
        _cluster().call("open pool/image", _failing([errno.ESHUTDOWN] * 10, calls))
    assert len(calls) == 1


def test_the_retry_warnings_never_reach_stderr_without_logging_configured() -> None:
    """The CLI's errors are one line on stderr: the library's retry warnings must not be
    printed by Python's last-resort handler when nobody configured logging."""
    code = (
        "import errno, os\n"
        "from diskledger.backends.rbd.cluster import Cluster\n"
        "from diskledger.backends.rbd.config import CephConfig\n"
        "n = []\n"
        "def fn():\n"
        "    n.append(1)\n"
        "    if len(n) < 3: raise OSError(errno.ETIMEDOUT, 'timed out')\n"
        "    return 1\n"
        "Cluster(CephConfig(conf='c', pool='p')).call('stat p/i', fn)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""


# -- a lost connection, for real ---------------------------------------------------------------


def test_a_blocklisted_client_reconnects_for_the_next_request(
    pools: CephCluster, source: Path, tmp_path: Path
) -> None:
    """The cluster blocklists this client (as it does one whose lock another client broke):
    the request that finds out fails at once with one clear error, never hangs on the dead
    handles; the next request opens a new connection, and the engine carries on."""
    p = prepare("resize", tmp_path, pools, source)
    with p.engine() as engine:
        backend = engine.backend
        cluster: Cluster = backend.cluster  # type: ignore[attr-defined]
        handle = cluster._connected()
        address = handle.get_addrs()
        admin = admin_ceph(pools)
        subprocess.run([*admin, "osd", "blocklist", "add", address], check=True, timeout=60)
        try:
            started = time.monotonic()
            with pytest.raises(CephUnavailable, match="lost its connection"):
                engine.resize(DISK, "32M")
            assert time.monotonic() - started < OP_TIMEOUT * 5
            assert cluster._connected() is not handle  # a new connection
            assert disk_state(engine, DISK) == p.before
            engine.resize(DISK, "32M")
        finally:
            subprocess.run([*admin, "osd", "blocklist", "rm", address], check=False, timeout=60)
    assert p.outcome() == "completed"
    assert p.assert_old_or_new() == "new"
