"""The multi-host workload: ``python -m tests.multihost.worker --run-dir DIR --token T ...``, one
process per rig host (``Host.spawn``), driven by tests/multihost/run.py.

It opens the engine on the shared PostgreSQL ledger as a member (the host's environment:
``DISKLEDGER_LEDGER``, ``DISKLEDGER_HOST``, ``DISKLEDGER_BOOT_ID``, the Ceph settings; the
driver adds the test leases and ``DISKLEDGER_ROOT``, a directory every host shares, standing for
NFS), then runs

* the agent loop (``diskledger.engine.agent.serve``) in a thread: lease, takeover scans;
* ``--threads`` workload threads: a harness-like mix of operations with op ids (create blank,
  import, resize, snapshot, rollback, remove-snapshot, export, delete, direct-snapshot) on a pool
  of disks shared by every host, half on rbd (the rig's Ceph), half on raw files in the shared
  directory. Every result a client saw (op id, ``ok`` or ``error:<Class>``) is appended, fsynced,
  to ``DIR/results/<host>.jsonl`` — only once the call returned, so a line is a client's
  acknowledgement;
* a control thread: ``DIR/control/<token>.fault`` arms a fault point (the syntax of
  ``DISKLEDGER_FAULT``, e.g. ``mid-effect``): the next operation of this process that reaches it
  SIGKILLs the process (the driver then kills the whole host); ``DIR/control/<token>.quiesce``
  stops the workload threads from starting operations (the agent keeps running).

Witnesses (tests/multihost/witness.py, the host's ``DISKLEDGER_WITNESS`` file): every backend the
runtimes use is wrapped in :class:`WitnessedBackend`, which forwards everything (``isinstance``
against the runtime-checkable backend protocols still answers for the wrapped backend) and writes
a witness call around each mutating method, with ``diskledger.context.current()``'s op id, op and
step; the store is wrapped in :class:`WitnessedStore`, which witnesses an append carrying a
``<kind>.<op>.taken-over`` as the ``claim`` and the same thread's next append of that operation's
outcome as ``outcome``.

Two runtimes share one membership (one member per process): creates and imports need the
configured backend (``Runtime.backend``), so raw disks are made through a runtime configured for
``raw`` and rbd disks through one configured for ``rbd``; every other operation, and the agent,
use the rbd runtime (a disk is handled by the backend its stream names).

SIGTERM stops cleanly: workload threads finish their operation, the agent stops, the member
leaves (``member.left``), exit 0 — unless the member still owns an operation whose outcome it
could not record (a ledger error): then it exits 70 without leaving, so that another member
fences it before taking the operation over. A member that fences itself exits with status 75.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from diskledger import context, faults
from diskledger.backends import Backend
from diskledger.engine import Config, Engine
from diskledger.engine.agent import serve
from diskledger.engine.recovery import RecoveryReport
from diskledger.engine.runtime import Runtime, build
from diskledger.errors import DiskLedgerError, StoreError
from diskledger.events import COMPLETED, FAILED, NEEDS_OPERATOR, TAKEN_OVER, NewEvent, split_type
from diskledger.states import DiskState, DiskView
from diskledger.states.streams import disk_stream
from diskledger.store import EventStore
from tests.multihost.witness import Step, WitnessWriter, monotonic

__all__ = [
    "MUTATING",
    "WitnessedBackend",
    "WitnessedStore",
    "main",
]

log = logging.getLogger("diskledger.multihost.worker")

MUTATING = frozenset(
    {
        "create",
        "import_file",
        "resize",
        "snapshot",
        "rollback",
        "remove_snapshot",
        "delete",
        "export",
        "remove",
        "flatten",
        "direct_snapshot",
        "set_aside",
        "fence",
        "fence_member",
        "unfence_member",
    }
)
"""The backend methods that change storage (or fence a client off it): each call is witnessed."""

FENCE_CALLS = frozenset({"fence", "fence_member", "unfence_member"})
"""Calls made for a member, not for an operation: witnessed under the op id ``fence``."""

EXIT_OWNS_PENDING = 70
"""A stopping worker that still owns operations exits with this, without leaving."""
OUTCOME_PHASES = frozenset({COMPLETED, FAILED, NEEDS_OPERATOR})
MIB = 1 << 20
MAX_SIZE = 8 * MIB
MAX_SNAPSHOTS = 3

WriterRef = Callable[[], WitnessWriter | None]


class WitnessedBackend:
    """A backend whose mutating calls are witnessed; everything else is the wrapped backend's.

    Nothing is defined on the class but ``__getattr__``: a method the wrapped backend lacks
    stays missing, so ``isinstance(proxy, Flattens)`` answers as for the wrapped backend.
    """

    def __init__(self, inner: Backend, writer: WriterRef) -> None:
        self._inner = inner
        self._writer = writer
        self.unwitnessed = 0
        """Mutating calls made outside any operation context (the engine did not say whose)."""

    def __repr__(self) -> str:
        return f"<witnessed {self._inner!r}>"

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name in MUTATING and callable(value):
            return self._witnessed(name, value)
        return value

    def _witnessed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            writer = self._writer()
            if writer is None:
                return fn(*args, **kwargs)
            ctx = context.current()
            if name in FENCE_CALLS:
                op_id, op, step = "fence", name, "takeover"
            elif ctx is None:
                self.unwitnessed += 1
                log.warning("witness: %s called outside an operation context", name)
                op_id, op, step = "no-context", name, "effect"
            else:
                op_id, op, step = ctx.op_id, ctx.op, ctx.step
            with writer.call(op_id, op, cast(Step, step), name):
                return fn(*args, **kwargs)

        return call


class WitnessedStore:
    """An event store whose takeover claims and the outcomes that follow them are witnessed."""

    def __init__(self, inner: EventStore, writer: WriterRef) -> None:
        self._inner = inner
        self._writer = writer
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def append(
        self, stream: str, expected_version: int, events: Sequence[NewEvent], *, sync: bool = True
    ) -> Any:
        writer = self._writer()
        if writer is None:
            return self._inner.append(stream, expected_version, events, sync=sync)
        for event in events:
            _, op, phase = split_type(event.type)
            if phase == TAKEN_OVER and event.metadata.op_id:
                with writer.claim(event.metadata.op_id, op):
                    recorded = self._inner.append(stream, expected_version, events, sync=sync)
                self._local.claimed = (event.metadata.op_id, op)
                return recorded
        claimed: tuple[str, str] | None = getattr(self._local, "claimed", None)
        if claimed is not None and any(
            e.metadata.op_id == claimed[0] and split_type(e.type)[2] in OUTCOME_PHASES
            for e in events
        ):
            self._local.claimed = None
            with writer.outcome(*claimed):
                return self._inner.append(stream, expected_version, events, sync=sync)
        return self._inner.append(stream, expected_version, events, sync=sync)


class Results:
    """The client-visible result of every operation: one fsynced JSON line each."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def write(self, line: dict[str, Any]) -> None:
        data = (json.dumps(line, sort_keys=True) + "\n").encode()
        with self._lock:
            os.write(self._fd, data)
            os.fsync(self._fd)


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir = Path(args.run_dir)
        self.host = os.environ["DISKLEDGER_HOST"]
        self.boot_id = os.environ.get("DISKLEDGER_BOOT_ID", "")
        self.token: str = args.token
        self.stop = threading.Event()
        self.quiesce = threading.Event()
        self.agent_stop = threading.Event()
        self.left = False
        self.writer: WitnessWriter | None = None
        self.backends: list[WitnessedBackend] = []
        self.results = Results(self.run_dir / "results" / f"{self.host}.jsonl")
        self.rbd = self._runtime("rbd")
        self.raw = self._runtime("raw")
        # One member per process: the raw runtime acts as the rbd runtime's member.
        self.raw.membership = self.rbd.membership
        self.engines = {"rbd": Engine(self.rbd), "raw": Engine(self.raw)}
        self.counts: dict[str, int] = {}

    # -- the runtimes --------------------------------------------------------------------------

    def _writer_ref(self) -> WitnessWriter | None:
        return self.writer

    def _wrap(self, backend: Backend) -> Backend:
        proxy = WitnessedBackend(backend, self._writer_ref)
        self.backends.append(proxy)
        return cast(Backend, proxy)

    def _runtime(self, backend: str) -> Runtime:
        config = Config.load(backend=backend, recover=False)
        rt = build(
            config,
            store=lambda inner: cast(EventStore, WitnessedStore(inner, self._writer_ref)),
        )
        # The template store keeps the backend itself (it checks the concrete class); the
        # operations and the agent get the witnessed one.
        rt.backend = rt._backends[rt.backend.name] = self._wrap(rt.backend)
        make = rt.make_backend
        rt.make_backend = lambda name: self._wrap(make(name))
        return rt

    # -- running -------------------------------------------------------------------------------

    def run(self) -> int:
        owner = self._join()
        self.writer = WitnessWriter(
            os.environ["DISKLEDGER_WITNESS"],
            host=self.host,
            member=str(owner["member"]),
            epoch=int(str(owner["epoch"])),
        )
        self._announce(str(owner["member"]), int(str(owner["epoch"])))
        log.info("worker %s joined as %s (epoch %s)", self.token, owner["member"], owner["epoch"])
        threads = [
            threading.Thread(target=self._agent, name="agent", daemon=True),
            threading.Thread(target=self._control, name="control", daemon=True),
        ]
        workload = [
            threading.Thread(target=self._workload, args=(i,), name=f"workload-{i}", daemon=True)
            for i in range(self.args.threads)
        ]
        for t in [*threads, *workload]:
            t.start()
        # A timed wait: under a libfaketime rate an untimed one never returns to run the
        # SIGTERM handler (the signal arrives; the Python handler waits for the main thread).
        while not self.stop.wait(0.5):
            pass
        self.quiesce.set()
        deadline = time.monotonic() + 40  # the driver waits 60 s, then dumps stacks and kills
        for t in workload:
            t.join(max(0.0, deadline - time.monotonic()))
        owned = self._still_owned(str(owner["member"]), workload)
        if owned:
            # Leaving would hand these over without a fence (a left member is taken over as it
            # is): die instead, as a crashed process would, and let the lease path fence us.
            log.warning("worker %s: still owns %s: exiting without leaving", self.token, owned)
            logging.shutdown()
            os._exit(EXIT_OWNS_PENDING)
        self.agent_stop.set()  # the agent leaves the ledger once no operation runs
        threads[0].join(30)
        self.raw.membership = None
        if self.left:
            self.rbd.membership = None  # serve recorded member.left already
        self.engines["raw"].close()
        self.engines["rbd"].close()
        unwitnessed = sum(b.unwitnessed for b in self.backends)
        log.info(
            "worker %s stopped: %s; unwitnessed calls %d", self.token, self.counts, unwitnessed
        )
        return 0

    def _join(self) -> dict[str, Any]:
        """Join now (the witness lines carry the epoch), retrying what a ledger that is
        restarting, or stalled by a writer cut off mid-append, answers for a while."""
        membership = self.rbd.membership
        assert membership is not None
        deadline = time.monotonic() + 60
        while True:
            try:
                return membership.owner()
            except StoreError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("worker %s: joining failed, retrying: %s", self.token, exc)
                time.sleep(1)

    def _still_owned(self, member: str, workload: Sequence[threading.Thread]) -> list[str]:
        """Operations this member still owns (an outcome it could not record), or why it
        cannot tell."""
        running = [t.name for t in workload if t.is_alive()]
        if running:
            return [f"threads still running: {running}"]
        try:
            return [e.operation.op_id for e in self.rbd.store.pending() if e.owner == member]
        except DiskLedgerError as exc:
            return [f"unknown: {exc}"]

    def _announce(self, member: str, epoch: int) -> None:
        line = {
            "token": self.token,
            "host": self.host,
            "boot_id": self.boot_id,
            "member": member,
            "epoch": epoch,
            "pid": os.getpid(),
        }
        fd = os.open(self.run_dir / "workers.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _agent(self) -> None:
        def report(done: RecoveryReport) -> None:
            log.info(
                "agent: forward %d, back %d, needs-operator %d",
                len(done.rolled_forward),
                len(done.rolled_back),
                len(done.needs_operator),
            )

        try:
            serve(self.rbd, self.agent_stop, report)
        except DiskLedgerError:
            log.exception("agent stopped")
        else:
            self.left = True

    def _control(self) -> None:
        control = self.run_dir / "control"
        fault = control / f"{self.token}.fault"
        quiesce = control / f"{self.token}.quiesce"
        with contextlib.ExitStack() as armed:
            while not self.stop.wait(0.02):
                if fault.exists():
                    spec = fault.read_text().strip()
                    armed.enter_context(faults.armed(spec))
                    fault.unlink()
                    log.warning("worker %s: fault armed: %s", self.token, spec)
                if quiesce.exists() and not self.quiesce.is_set():
                    log.info("worker %s: quiesced", self.token)
                    self.quiesce.set()

    # -- the workload --------------------------------------------------------------------------

    def _workload(self, index: int) -> None:
        rng = random.Random(f"{self.args.seed}-{self.token}-{index}")
        n = 0
        while not self.quiesce.is_set():
            n += 1
            try:
                self._one(rng, index, n)
            except Exception:
                log.exception("workload %d: unexpected error", index)
            self.quiesce.wait(rng.uniform(0.0, self.args.think))

    def _one(self, rng: random.Random, index: int, n: int) -> None:
        backend = rng.choice(("rbd", "raw"))
        kind = "r" if backend == "rbd" else "f"
        disk = f"{self.args.prefix}{kind}{rng.randrange(self.args.disks)}/root"
        try:
            view = self.rbd.store.disk(disk_stream(disk))
        except DiskLedgerError:
            return  # the ledger is out of reach; try again
        op_id = f"{self.host}-{self.token[:6]}-{index}-{n}"
        op, call = self._choose(rng, backend, disk, view, op_id, index, n)
        t_start = monotonic()
        try:
            call()
        except DiskLedgerError as exc:
            result, message = f"error:{type(exc).__name__}", str(exc)[:300]
        except Exception as exc:  # an error diskledger did not translate: still a result
            result, message = f"error:{type(exc).__name__}", str(exc)[:300]
            log.warning("%s %s (%s): untranslated %r", op, disk, op_id, exc)
        else:
            result, message = "ok", ""
        self.counts[result] = self.counts.get(result, 0) + 1
        self.results.write(
            {
                "op_id": op_id,
                "op": op,
                "disk": disk,
                "backend": backend,
                "result": result,
                "message": message,
                "t_start": t_start,
                "t_end": monotonic(),
                "host": self.host,
                "boot_id": self.boot_id,
                "token": self.token,
            }
        )

    def _choose(
        self,
        rng: random.Random,
        backend: str,
        disk: str,
        view: DiskView | None,
        op_id: str,
        index: int,
        n: int,
    ) -> tuple[str, Callable[[], object]]:
        make = self.engines[backend]
        engine = self.engines["rbd"]
        if view is None or view.state is DiskState.ABSENT:
            if rng.random() < 0.1:
                source = self.run_dir / "import-source.raw"
                return "import", lambda: make.import_disk(disk, source, "raw", op_id=op_id)
            size = rng.choice((1, 2)) * MIB
            return "create", lambda: make.create(disk, size=size, op_id=op_id)
        snapshots = [s.name for s in view.snapshots]
        size = view.size or MIB
        choices: list[tuple[float, str]] = [(1.0, "export"), (0.8, "delete")]
        if size + MIB <= MAX_SIZE:
            choices.append((2.5, "resize"))
        if len(snapshots) < MAX_SNAPSHOTS:
            choices.append((2.5, "snapshot"))
        if snapshots:
            choices += [(1.5, "rollback"), (1.5, "remove-snapshot")]
        if backend == "rbd":
            choices.append((0.3, "direct-snapshot"))
        op = _weighted(rng, choices)
        snapshot = f"{self.host}t{index}n{n}"
        if op == "resize":
            return op, lambda: engine.resize(disk, size + MIB, op_id=op_id)
        if op == "snapshot":
            return op, lambda: engine.snapshot(disk, snapshot, op_id=op_id)
        if op == "rollback":
            chosen = rng.choice(snapshots)
            return op, lambda: engine.rollback(disk, chosen, op_id=op_id)
        if op == "remove-snapshot":
            chosen = rng.choice(snapshots)
            return op, lambda: engine.remove_snapshot(disk, chosen, op_id=op_id)
        if op == "export":
            target = self.run_dir / "exports" / f"{op_id}.raw"
            return op, lambda: _export(engine, disk, target, op_id)
        if op == "direct-snapshot":
            return op, lambda: engine.direct_snapshot(disk, snapshot, f"ds-{op_id}", op_id=op_id)
        return "delete", lambda: engine.delete(disk, op_id=op_id)


def _export(engine: Engine, disk: str, target: Path, op_id: str) -> None:
    engine.export(disk, target, op_id=op_id)
    # The copy is the client's, which keeps nothing: disk space stays flat over a long run.
    target.unlink()


def _weighted(rng: random.Random, choices: Sequence[tuple[float, str]]) -> str:
    total = sum(w for w, _ in choices)
    pick = rng.uniform(0, total)
    for weight, name in choices:
        pick -= weight
        if pick <= 0:
            return name
    return choices[-1][1]


@contextlib.contextmanager
def _terminated(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.multihost.worker")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--disks", type=int, default=4, help="disks per backend in the pool")
    parser.add_argument("--think", type=float, default=0.1, help="max pause between operations")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--prefix", default="mh", help="instance names start with it")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {os.environ.get('DISKLEDGER_HOST')} %(process)d %(threadName)s "
        "%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("transitions").setLevel(logging.WARNING)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the driver's "where are you stuck"
    deadline = time.monotonic() + 60
    while True:  # a ledger restarting, or stalled by a writer cut off mid-append, for a while
        try:
            worker = Worker(args)
            break
        except StoreError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("worker %s: opening the ledger failed, retrying: %s", args.token, exc)
            time.sleep(1)
    with _terminated(worker.stop):
        return worker.run()


if __name__ == "__main__":
    sys.exit(main())
