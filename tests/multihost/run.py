"""The multi-host chaos run: the real workload on the rig, nemeses, then the checker.

``run(cluster, kills=30, ...)`` starts, on every host of a started :class:`Cluster`, one
``diskledger watch --json`` subscriber (its lines go to ``feeds/<host>.jsonl``) and one workload
process (tests/multihost/worker.py: the agent loop plus workload threads, as a member of a fresh
PostgreSQL ledger with the test leases), then applies the nemeses one at a time in a random order
— at most one host is ever down — and finally heals everything, stops the workload, lets the
agents settle for 3 x ttl, stops the workers (they leave the ledger cleanly) and checks:

* ``check_all`` (tests/multihost/checker.py) over the ledger, the witness log, the nemeses and
  the three feeds, with the lease ttl and the takeover latency bound;
* ``acknowledged``: every success a client saw is ``completed``; a refusal that promises nothing
  happened (invalid input, not found, illegal transition, operation pending, an unowned artifact)
  has no intent;
* ``settled``: the pending index is empty (an operation of a dead member that waits for an
  operator is confirmed by this driver, as an operator would, once that member is fenced and its
  process provably gone);
* ``verify``: ``diskledger verify --json`` from a host (Ceph is reachable only from the hosts);
* ``self-fence``: a zombie thawed after a long freeze exits within ``renew_deadline + 1 s``; a
  host cut from PostgreSQL has its worker exit within ``renew_deadline + 1 s`` of the cut;
* ``liveness``: every killed member was fenced within 30 s, no worker or subscriber died of
  anything but the nemeses.

Host kills are of two kinds, half each by default (``fault_share``):

* **at a fault point**: the driver arms the worker (``control/<token>.fault``; the syntax of
  ``DISKLEDGER_FAULT``, armed at a random moment rather than at start-up) with one of
  ``after-intent``, ``mid-effect``, ``after-effect``, ``after-outcome`` in turn; the next
  operation reaching it SIGKILLs the worker, and the driver kills the whole host at once (the
  kill is recorded when the driver saw the worker die, within milliseconds);
* **from the outside, at a random moment**: anywhere at all (inside a qemu-img run, an append,
  a Ceph request).

After a kill the host comes back as a new incarnation (new boot id) either quickly (half the
time: its own new agent may then take over at once, a provably dead process on its host) or only
once another host took its member over (the lease path); the driver waits for the member to be
fenced before the next nemesis either way.

Runnable: ``python -m tests.multihost.run --kills 100 --freezes-short 10 ...`` builds its own rig
(``--help``); exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from diskledger import errors
from diskledger.engine import Config, Engine
from diskledger.engine.runtime import build
from diskledger.events import split_type
from diskledger.states import MemberState
from diskledger.states.streams import member_stream
from diskledger.store import EventStore, PendingEntry, open_store
from tests.multihost.checker import (
    CheckResult,
    LedgerEvent,
    Report,
    Violation,
    check_all,
    read_ledger,
)
from tests.multihost.rig import CEPH, PG, Cluster, Host, HostProcess, NemesisEvent, monotonic
from tests.multihost.witness import WitnessCall, read_witness

__all__ = [
    "KNOWN_BUGS",
    "Mix",
    "RunResult",
    "Timers",
    "check_acknowledged",
    "check_claim_chain",
    "known_bug",
    "main",
    "run",
]

POINTS = ("after-intent", "mid-effect", "after-effect", "after-outcome")
PARTITIONS: tuple[tuple[str, ...], ...] = ((PG,), (CEPH,), (PG, CEPH))
DEFINITE = (
    errors.InvalidInput,
    errors.NotFound,
    errors.IllegalTransition,
    errors.OperationPending,
    errors.DiskAttached,
)
"""Refusals raised before an intent is recorded: the client may rely on nothing having happened.
(``Conflict`` itself is one too — an artifact the ledger does not own — but not its subclasses
``ConcurrencyError`` and ``OwnershipLost``, which may come after the intent.)"""
NO_OP = frozenset({"resize"})
"""Operations that may succeed without recording anything (a resize to the size the disk has:
another host grew it between the workload's read and its request)."""
STUCK_AFTER = 30.0
"""An operation pending this long while its owner runs is stuck (a takeover waits a lease)."""
FENCED_WITHIN = 30.0
"""A killed member not fenced this long after the kill is a hang (the bound is ~6.5 s)."""


@dataclass(frozen=True)
class Timers:
    """The test leases (research doc 4.2): ttl 3 s, renew 0.5 s, deadline 2 s, scan 0.5 s."""

    ttl: float = 3.0
    renew: float = 0.5
    deadline: float = 2.0
    scan: float = 0.5
    fence: float = 1.5
    """What the Ceph fence may take (blocklist, wait for the OSD map)."""
    settle: float = 2.0
    """What settling one operation may take (probe, remove or finish, record)."""
    margin: float = 3.0
    """For two cores shared by three hosts, Ceph and PostgreSQL."""

    @property
    def freeze_may_fence(self) -> float:
        """The shortest freeze that may cost a member its lease (1.5 s): a renewal may be just
        due as it starts, and the thawed member fences itself ``deadline`` after the last one
        it sent. The short freezes stay at half of it, leaving 0.75 s for a late renewal."""
        return self.deadline - self.renew

    @property
    def latency_bound(self) -> float:
        """ttl + 2 x scan + fence + settle (6.5 s), plus the margin."""
        return self.ttl + 2 * self.scan + self.fence + self.settle + self.margin

    def environ(self) -> dict[str, str]:
        return {
            "DISKLEDGER_LEASE_TTL": f"{self.ttl:g}",
            "DISKLEDGER_LEASE_RENEW": f"{self.renew:g}",
            "DISKLEDGER_LEASE_DEADLINE": f"{self.deadline:g}",
            "DISKLEDGER_TAKEOVER_SCAN": f"{self.scan:g}",
        }


@dataclass(frozen=True)
class Mix:
    """How many of each nemesis."""

    kills: int = 30
    fault_share: float = 0.5
    """The share of kills made at an armed fault point (the rest: from outside, at random)."""
    freezes_short: int = 5
    freezes_long: int = 5
    partitions: int = 10
    """Cycling PostgreSQL only, Ceph only, both."""
    listener_kills: int = 5
    pg_restarts: int = 0
    subscriber_kills: int = 0
    link_downs: int = 0
    """A host's cable pulled for a while (everything cut, as a partition from both)."""
    clock_offsets: int = 0
    """A host's wall clock moved by ±10 min for a while (libfaketime)."""
    clock_rates: int = 0
    """A host's worker restarted with its clock running x0.7, x1.4 or x0.4 for a while."""

    def schedule(self, rng: random.Random) -> list[tuple[str, Any]]:
        fault_kills = round(self.kills * self.fault_share)
        items: list[tuple[str, Any]] = [("kill", POINTS[i % 4]) for i in range(fault_kills)]
        items += [("kill", None)] * (self.kills - fault_kills)
        items += [("freeze-short", None)] * self.freezes_short
        items += [("freeze-long", None)] * self.freezes_long
        items += [("partition", PARTITIONS[i % 3]) for i in range(self.partitions)]
        items += [("listener-kill", None)] * self.listener_kills
        items += [("pg-restart", None)] * self.pg_restarts
        items += [("subscriber-kill", None)] * self.subscriber_kills
        items += [("link-down", None)] * self.link_downs
        items += [("clock-offset", None)] * self.clock_offsets
        items += [("clock-rate", (0.7, 1.4, 0.4)[i % 3]) for i in range(self.clock_rates)]
        rng.shuffle(items)
        return items


@dataclass
class WorkerProc:
    token: str
    host: str
    boot_id: str
    process: HostProcess
    started: float
    member: str | None = None
    epoch: int | None = None
    exited: float | None = None
    code: int | None = None
    armed: str | None = None
    stopping: bool = False


@dataclass
class HostState:
    host: Host
    worker: WorkerProc | None = None
    subscriber: HostProcess | None = None
    hold: bool = False
    """No respawn (frozen, partitioned, killed and waiting)."""
    respawn_at: float = 0.0


KNOWN_BUGS: dict[str, str] = {}
"""Engine bugs a run found and that are not fixed yet, with their evidence in docs/multihost.md
("Chaos runs"): a violation matching one is reported as it is and listed under
``RunResult.known`` (the smoke test then shows XFAIL). Fixed, so their violations fail the
run — E1 (a member cut from PostgreSQL fenced itself only once its
hanging renewal returned), E2 (an operation whose outcome append the ledger refused stayed
pending while its process lived), C1 (the checker counted a member reclaiming its own operation
as a takeover without a fence), E4 (a temporary a fenced member wrote after the fence stayed
behind: its refused publish now removes it, and verify knows it while it exists), E5 (a taker
whose pending index was read before another taker's claim claimed the operation again: it now
checks the owner on the view it claims against)."""


def known_bug(v: Violation) -> str | None:
    """Which known (unfixed) engine bug a violation is evidence of, if any."""
    return None


@dataclass
class RunResult:
    report: Report
    figures: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def known(self) -> dict[str, int]:
        """Violations that are evidence of a known engine bug, counted per bug."""
        return dict(Counter(b for v in self.report.violations if (b := known_bug(v))))

    @property
    def unexplained(self) -> list[Violation]:
        return [v for v in self.report.violations if known_bug(v) is None]

    def render(self) -> str:
        lines = [self.report.render()]
        for bug, n in sorted(self.known.items()):
            lines.append(f"known engine bug {bug} ({n} violations): {KNOWN_BUGS[bug]}")
        lines.append(f"unexplained violations: {len(self.unexplained)}")
        return "\n".join(lines) + "\n\nfigures:\n" + json.dumps(self.figures, indent=2)


class Chaos:
    """One run; see the module docstring."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        timers: Timers,
        threads: int,
        disks: int,
        think: float,
        seed: str,
        partition_seconds: float,
        log: IO[str],
    ) -> None:
        self.cluster = cluster
        self.timers = timers
        self.threads = threads
        self.disks = disks
        self.think = think
        self.seed = seed
        self.rng = random.Random(seed)
        self.partition_seconds = partition_seconds
        self.out = log
        self.run_id = secrets.token_hex(3)
        self.dir = cluster.work_dir / f"chaos-{self.run_id}"
        self.shared = self.dir / "shared"
        self.db = f"chaos_{self.run_id}"
        self.workers: dict[str, WorkerProc] = {}
        self.hosts = {h.name: HostState(h) for h in cluster.hosts}
        self.logs: dict[str, IO[bytes]] = {}
        self.feeds: dict[str, Path] = {}
        self.store: EventStore | None = None
        self.operator: Engine | None = None
        self.stopping = False
        self.quiesced = False
        self.stuck: list[dict[str, Any]] = []
        """Operations seen pending for STUCK_AFTER seconds while their owner ran, or still
        pending once everything healed and settled."""
        self.nemeses: list[tuple[float, str, str]] = []
        """(when, kind, the host aimed at), for the digests of liveness failures."""
        self._pending_since: dict[tuple[str, str | None], float] = {}
        self.breaker_confirmed: set[str] = set()
        """Members confirmed down because the circuit breaker held their takeover."""
        self.crashed_at_start = 0
        self._workers_seen = 0
        self._operator_at = 0.0
        self.confirmed: set[str] = set()
        # figures
        self.kills: Counter[str] = Counter()
        self.restarts = Counter[str]()
        self.fenced_after: list[float] = []
        self.killed_at: dict[str, float] = {}
        """Each member alive when its host was killed: the kill's time."""
        self.zombie_exits: list[dict[str, Any]] = []
        self.problems: list[tuple[str, dict[str, Any]]] = []
        self.worker_exits: Counter[str] = Counter()
        self.subscriber_exits: Counter[str] = Counter()
        self.listeners_terminated = 0

    def say(self, message: str) -> None:
        print(f"[chaos {monotonic():.1f}] {message}", file=self.out, flush=True)

    # -- setup ---------------------------------------------------------------------------------

    def start(self) -> None:
        for sub in ("shared", "results", "control", "exports", "feeds", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        with (self.dir / "import-source.raw").open("wb") as source:
            source.truncate(1 << 20)
        url = self.cluster.postgres.fresh_database(self.db)
        self.store = open_store(url)  # creates the schema before any host races to
        config = Config.load(
            ledger=url,
            backend="raw",
            root=self.shared,
            recover=False,
            environ={"DISKLEDGER_MEMBERS": "0", "DISKLEDGER_HOST": "chaos-operator"},
        )
        self.operator = Engine(build(config))
        for name, state in self.hosts.items():
            self.logs[name] = (self.dir / "logs" / f"{name}.log").open("ab")
            self.feeds[name] = self.dir / "feeds" / f"{name}.jsonl"
            self.feeds[name].touch()
            self._spawn_subscriber(state)
            self._spawn_worker(state)
        self._wait_until("every worker joined", self._all_joined, 60)

    def environ(self) -> dict[str, str]:
        return {
            **self.timers.environ(),
            "DISKLEDGER_LEDGER": self.cluster.ledger_url_for(self.db),
            "DISKLEDGER_ROOT": str(self.shared),
            "DISKLEDGER_MEMBERS": "1",
            "DISKLEDGER_RECOVER": "0",
            "DISKLEDGER_CEPH_OP_TIMEOUT": "5",
            "DISKLEDGER_CEPH_RETRY_BUDGET": "10",
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn_worker(self, state: HostState) -> WorkerProc:
        token = uuid.uuid4().hex[:12]
        argv = [
            sys.executable,
            "-m",
            "tests.multihost.worker",
            "--run-dir",
            str(self.dir),
            "--token",
            token,
            "--threads",
            str(self.threads),
            "--disks",
            str(self.disks),
            "--think",
            str(self.think),
            "--seed",
            f"{self.seed}-{self.run_id}",
            "--prefix",
            f"c{self.run_id}",
        ]
        log = self.logs[state.host.name]
        process = state.host.spawn(argv, self.environ(), stdout=log, stderr=log)
        worker = WorkerProc(
            token, state.host.name, process.boot_id, process, monotonic(), armed=None
        )
        self.workers[token] = worker
        state.worker = worker
        return worker

    def _spawn_subscriber(self, state: HostState) -> None:
        name = state.host.name
        after = _resume_position(self.feeds[name])
        argv = [
            sys.executable,
            "-m",
            "diskledger.cli",
            "watch",
            "--json",
            "--from",
            str(after),
            "--heartbeat",
            "5",
        ]
        env = {
            "DISKLEDGER_LEDGER": self.cluster.ledger_url_for(self.db),
            "DISKLEDGER_ROOT": str(self.shared),
            "DISKLEDGER_BACKEND": "raw",
            "DISKLEDGER_MEMBERS": "0",
        }
        with self.feeds[name].open("ab") as out:
            state.subscriber = state.host.spawn(argv, env, stdout=out, stderr=self.logs[name])
        self.restarts[f"subscriber {name}"] += 1

    # -- supervision ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Notice exits, respawn what should run, read who joined, play the operator."""
        now = monotonic()
        for state in self.hosts.values():
            worker = state.worker
            if worker is not None and worker.code is None:
                code = worker.process.poll()
                if code is not None:
                    self._worker_exited(worker, code)
            sub = state.subscriber
            if sub is not None and sub.returncode is None and sub.poll() is not None:
                code = sub.returncode
                if not self.stopping and code not in (-9,):
                    self.subscriber_exits[f"exit {code}"] += 1
                    if code == 3:
                        self.problems.append(
                            ("a subscriber saw a gap or a hash break", {"host": state.host.name})
                        )
            if self.stopping or state.hold or now < state.respawn_at:
                continue
            if state.host.boot_id is not None and (sub is None or sub.returncode is not None):
                self._spawn_subscriber(state)
            if worker is None or worker.code is not None:
                worker = self._spawn_worker(state)
                state.respawn_at = now + 1.0
                if self.quiesced:
                    (self.dir / "control" / f"{worker.token}.quiesce").touch()
        self._read_workers()
        if now - self._operator_at >= 1.0:
            self._operator_at = now
            self._play_operator()

    def _worker_exited(self, worker: WorkerProc, code: int) -> None:
        worker.exited, worker.code = monotonic(), code
        if worker.stopping and code == 0:
            return
        if code not in (0, 75, -9):
            # It left without a word (no member.left): its member may be fenced, as a crashed
            # one's is. The checker's false-takeover check needs to know.
            self.cluster.nemeses.record(
                NemesisEvent(
                    "exit",
                    worker.host,
                    worker.boot_id,
                    worker.exited,
                    worker.exited,
                    {"code": code},
                )
            )
        if worker.stopping and code == 70:
            self.worker_exits["stopped owning operations (70)"] += 1
            return
        kind = {
            75: "fenced itself (75)",
            -9: "killed",
            70: "stopped owning operations (70)",
        }.get(code, f"exit {code}")
        self.worker_exits[kind] += 1
        if code not in (0, 75, -9) and not self.stopping:
            log = self.dir / "logs" / f"{worker.host}.log"
            tail = log.read_text(errors="replace").splitlines()[-25:]
            if worker.member is None:
                self.crashed_at_start += 1
                if self.crashed_at_start >= 5:
                    lines = "\n".join(tail)
                    raise RuntimeError(f"workers keep dying before they join; {log}:\n{lines}")
            self.problems.append(
                (
                    f"worker {worker.token} on {worker.host} exited {code}",
                    {"member": worker.member, "log": str(log), "log_tail": tail},
                )
            )

    def _read_workers(self) -> None:
        path = self.dir / "workers.jsonl"
        if not path.exists() or path.stat().st_size == self._workers_seen:
            return
        with path.open("rb") as lines:
            lines.seek(self._workers_seen)
            data = lines.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._workers_seen += len(complete)
        for line in complete.decode().splitlines():
            raw = json.loads(line)
            worker = self.workers.get(raw["token"])
            if worker is not None:
                worker.member, worker.epoch = raw["member"], int(raw["epoch"])

    def _all_joined(self) -> bool:
        self.tick()
        return all(
            s.worker is not None and s.worker.member is not None and s.worker.code is None
            for s in self.hosts.values()
        )

    def _play_operator(self) -> None:
        """Confirm down the dead members whose operations wait for an operator (files on the
        shared directory have no storage fence: in-place changes need this word), and those a
        circuit breaker holds (docs/multihost.md, "What needs an operator"): an operator
        confirms only members whose process they know is gone."""
        assert self.store is not None and self.operator is not None
        by_member = {w.member: w for w in self.workers.values() if w.member}
        try:
            self._answer_breaker(by_member)
            pending = self.store.pending()
            now = monotonic()
            for entry in pending:
                owner = entry.owner
                # Per owner: a takeover hands the operation to a live member, and its own time
                # pending starts then.
                seen = self._pending_since.setdefault((entry.operation.op_id, owner), now)
                worker = by_member.get(owner or "")
                if worker is not None and worker.code is None and now - seen > STUCK_AFTER:
                    self._stuck(entry, now - seen)
                if owner is None or owner in self.confirmed:
                    continue
                if worker is None or worker.code is None:
                    continue  # its process may still run: no operator would confirm
                record = self.store.member(member_stream(owner))
                if record is None or record.view.state is not MemberState.FENCED:
                    continue  # the lease path first
                last = self.store.read_stream(entry.stream)[-1]
                if not last.type.endswith(".needs-operator"):
                    continue
                self.operator.confirm_down(owner, by="chaos-operator")
                self.confirmed.add(owner)
        except errors.DiskLedgerError as exc:
            self.say(f"operator: the ledger did not answer: {exc}")

    def _answer_breaker(self, by_member: Mapping[str, WorkerProc]) -> None:
        assert self.store is not None and self.operator is not None
        held = {
            str(name)
            for record in self.store.members()
            if record.view.state is MemberState.LIVE and record.view.suspended
            for name in record.view.suspended.get("stale", ())
        }
        for member in sorted(held - self.confirmed):
            worker = by_member.get(member)
            if worker is None or worker.code is None:
                continue  # its process may still run
            record = self.store.member(member_stream(member))
            if record is None or record.view.state in (MemberState.FENCED, MemberState.LEFT):
                continue
            self.say(f"operator: the circuit breaker holds {member}, whose process is gone")
            self.operator.confirm_down(member, by="chaos-operator")
            self.confirmed.add(member)
            self.breaker_confirmed.add(member)

    def _stuck(self, entry: PendingEntry, age: float) -> None:
        """An operation pending this long while its owner's process runs: it will not settle
        until that process dies (no scan takes over a live member's operations)."""
        op_id = entry.operation.op_id
        if any(d["op_id"] == op_id for d in self.stuck):
            return
        assert self.store is not None
        last = self.store.read_stream(entry.stream)[-1]
        self.say(f"{entry.stream} {entry.operation.op} ({op_id}) pending {age:.0f} s, owner alive")
        self.stuck.append(
            {
                "stream": entry.stream,
                "op": entry.operation.op,
                "op_id": op_id,
                "owner": entry.owner,
                "owner_alive": True,
                "last_event": last.type,
                "pending_for_s": round(age, 1),
                "owner_nemeses": self._nemeses_on(
                    (entry.owner or "").partition("/")[0], monotonic() - age - STUCK_AFTER
                ),
            }
        )

    def pause(self, seconds: float) -> None:
        deadline = monotonic() + seconds
        while True:
            self.tick()
            left = deadline - monotonic()
            if left <= 0:
                return
            time.sleep(min(0.05, left))

    def _wait_until(self, what: str, condition: Any, timeout: float) -> bool:
        deadline = monotonic() + timeout
        while not condition():
            if monotonic() > deadline:
                self.say(f"timed out after {timeout:g} s waiting for {what}")
                return False
            self.pause(0.05)
        return True

    def _member_states(self, members: Sequence[str]) -> dict[str, MemberState | None]:
        assert self.store is not None
        states: dict[str, MemberState | None] = {}
        for member in members:
            try:
                record = self.store.member(member_stream(member))
            except errors.DiskLedgerError:
                return {m: None for m in members}
            states[member] = None if record is None else record.view.state
        return states

    def _member_digest(self) -> dict[str, Any]:
        """Every member not gone, as the takers see it: what a liveness failure is read with
        (the rig's ledger does not outlive the run)."""
        assert self.store is not None
        try:
            return {
                r.member: {
                    "state": r.view.state.value,
                    "expires_in": None if r.expires_in is None else round(r.expires_in, 2),
                    "renewals": r.renewals,
                    "suspended": r.view.suspended,
                    "confirmed_down": r.view.confirmed_down is not None,
                }
                for r in self.store.members()
                if r.view.state not in (MemberState.FENCED, MemberState.LEFT)
            }
        except errors.DiskLedgerError as exc:
            return {"error": str(exc)}

    def _live_worker(self, state: HostState, timeout: float = 30) -> WorkerProc | None:
        self._wait_until(
            f"a joined worker on {state.host.name}",
            lambda: (
                state.worker is not None
                and state.worker.code is None
                and state.worker.member is not None
            ),
            timeout,
        )
        worker = state.worker
        return worker if worker is not None and worker.code is None else None

    # -- nemeses -------------------------------------------------------------------------------

    def kill(self, state: HostState, point: str | None) -> None:
        host = state.host
        worker = self._live_worker(state)
        state.hold = True
        boot_id = host.boot_id
        running = [w for w in self.workers.values() if w.boot_id == boot_id and w.code is None]
        params: dict[str, Any] = {"how": "external"}
        t_kill: float | None = None
        if point is not None and worker is not None:
            (self.dir / "control" / f"{worker.token}.fault").write_text(point)
            worker.armed = point
            deadline = monotonic() + 20
            polled = monotonic()
            while worker.process.poll() is None and monotonic() < deadline:
                time.sleep(0.002)
                if monotonic() - polled > 0.2:
                    self.tick()  # the other hosts meanwhile
                    polled = monotonic()
            if worker.process.returncode == -9:
                t_kill = monotonic()
                params = {"how": "fault", "point": point}
            else:
                params = {"how": "external", "armed": point, "note": "fault point not reached"}
                self.say(f"{host.name}: {point} not reached in 20 s: killed from outside")
                (self.dir / "control" / f"{worker.token}.fault").unlink(missing_ok=True)
        if t_kill is None:
            t_kill = monotonic()
        host.kill()
        self.cluster.nemeses.record(
            NemesisEvent("kill", host.name, boot_id, t_kill, monotonic(), params)
        )
        self.kills[params.get("point") or params["how"]] += 1
        self.tick()
        self._read_workers()
        victims = [w.member for w in running if w.member is not None]
        for member in victims:
            self.killed_at[member] = t_kill
        quick = self.rng.random() < 0.5
        if quick:
            self.pause(0.5)
            state.hold = False
        fenced = self._wait_until(
            f"{host.name}'s killed members fenced",
            lambda: all(s is MemberState.FENCED for s in self._member_states(victims).values()),
            FENCED_WITHIN,
        )
        if fenced:
            self.fenced_after.append(monotonic() - t_kill)
        else:
            self.problems.append(
                (
                    f"{host.name} killed, its members not fenced within {FENCED_WITHIN:g} s",
                    {
                        "members": self._member_states(victims),
                        "kill": t_kill,
                        "every member": self._member_digest(),
                    },
                )
            )
        state.hold = False
        # Let the takeover finish (settle) before the next nemesis: one host down at a time.
        if not self._wait_until(
            f"{host.name}'s killed members' operations settled",
            lambda: not self._owned_by(victims),
            FENCED_WITHIN,
        ):
            self.problems.append(
                (
                    f"{host.name} killed, its members' operations not settled within "
                    f"{FENCED_WITHIN:g} s",
                    {"pending": self._owned_by(victims), "kill": t_kill},
                )
            )

    def _owned_by(self, members: Sequence[str]) -> list[str]:
        assert self.store is not None
        try:
            return [e.operation.op_id for e in self.store.pending() if e.owner in members]
        except errors.DiskLedgerError:
            return ["(the ledger did not answer)"]

    def freeze(self, state: HostState, seconds: float, long: bool) -> None:
        worker = self._live_worker(state)
        state.hold = True
        self.cluster.freeze(state.host)
        self.pause(seconds)
        self.cluster.thaw(state.host)
        t_thaw = monotonic()
        state.hold = False
        if long and worker is not None:
            exited = self._wait_until(
                f"the thawed zombie on {state.host.name} to exit",
                lambda: worker.code is not None,
                self.timers.deadline + 10,
            )
            self.zombie_exits.append(
                {
                    "after": "long freeze",
                    "host": state.host.name,
                    "member": worker.member,
                    "code": worker.code,
                    "exit_after_thaw": (worker.exited - t_thaw)
                    if exited and worker.exited
                    else None,
                }
            )

    def partition(self, state: HostState, targets: Sequence[str]) -> None:
        worker = self._live_worker(state)
        state.hold = True
        event = self.cluster.partition(state.host, targets)
        self.pause(self.partition_seconds)
        self.cluster.heal(state.host)
        state.hold = False
        if PG in targets and worker is not None:
            exited = self._wait_until(
                f"the worker cut from PostgreSQL on {state.host.name} to exit",
                lambda: worker.code is not None,
                30,
            )
            self.zombie_exits.append(
                {
                    "after": f"partition {'+'.join(targets)}",
                    "host": state.host.name,
                    "member": worker.member,
                    "code": worker.code,
                    "partition_seconds": self.partition_seconds,
                    "exit_after_cut": (worker.exited - event.t_start)
                    if exited and worker.exited
                    else None,
                }
            )

    def link_down(self, state: HostState) -> None:
        state.hold = True
        self.cluster.link_down(state.host)
        self.pause(self.partition_seconds)
        self.cluster.link_up(state.host)
        state.hold = False

    def kill_subscriber(self, state: HostState) -> None:
        sub = state.subscriber
        if sub is None or sub.poll() is not None:
            return
        child = Host._child_of(sub.popen.pid)
        t = monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child if child is not None else sub.popen.pid, signal.SIGKILL)
        sub.wait(10)
        self.cluster.nemeses.record(
            NemesisEvent("subscriber-kill", state.host.name, state.host.boot_id, t, monotonic())
        )

    def clock_offset(self, state: HostState) -> None:
        offset = self.rng.choice((-600.0, 600.0))
        self.cluster.set_clock(state.host, offset=offset)
        self.pause(5)
        self.cluster.set_clock(state.host, offset=0.0)

    def clock_rate(self, state: HostState, rate: float) -> None:
        # libfaketime anchors a rate at each process's start, and a running process whose rate
        # changes sees its clock jump (rig.ClockSkew): stop the host's processes first, and let
        # them be started again under the new rate.
        self._under_rate(state, rate)
        self.pause(6)
        self._under_rate(state, 1.0)

    def _under_rate(self, state: HostState, rate: float) -> None:
        worker = self._live_worker(state)
        state.hold = True
        if worker is not None:
            self._stop_worker(worker)
        sub = state.subscriber
        if sub is not None and sub.poll() is None:
            self._signal(sub, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                sub.wait(10)
        self.cluster.set_clock(state.host, offset=0.0, rate=rate)
        state.hold = False
        self._live_worker(state, 60)

    @staticmethod
    def _signal(process: HostProcess, signum: int) -> None:
        """Signal the process an ``nsenter`` runs (its child), or the nsenter if it has none."""
        child = Host._child_of(process.popen.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child if child is not None else process.popen.pid, signum)

    def _stop_worker(self, worker: WorkerProc, timeout: float = 60) -> None:
        worker.stopping = True
        child = Host._child_of(worker.process.popen.pid)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        if not self._wait_until(
            f"worker {worker.token} to stop", lambda: worker.code is not None, timeout
        ):
            with contextlib.suppress(ProcessLookupError):
                if child is not None:
                    os.kill(child, signal.SIGUSR1)  # every thread's stack into its log
                    time.sleep(1)
                os.kill(child if child is not None else worker.process.popen.pid, signal.SIGKILL)
            self.cluster.nemeses.record(
                NemesisEvent("exit", worker.host, worker.boot_id, monotonic(), monotonic())
            )
            log = self.dir / "logs" / f"{worker.host}.log"
            tail = log.read_text(errors="replace").splitlines()[-60:]
            self.problems.append(
                (
                    f"worker {worker.token} on {worker.host} did not stop on SIGTERM",
                    {"member": worker.member, "log": str(log), "stacks": tail},
                )
            )

    def apply(self, kind: str, arg: Any) -> str:
        """Apply one nemesis; returns the host it was aimed at (every kind picks one, even
        those that hit the shared services, to keep the schedule's random stream stable)."""
        state = self.rng.choice(list(self.hosts.values()))
        self.nemeses.append((monotonic(), kind, state.host.name))
        if kind == "kill":
            self.kill(state, arg)
        elif kind == "freeze-short":
            self.freeze(state, 0.5 * self.timers.freeze_may_fence, long=False)
        elif kind == "freeze-long":
            self.freeze(state, 3 * self.timers.ttl, long=True)
        elif kind == "partition":
            self.partition(state, arg)
        elif kind == "listener-kill":
            event = self.cluster.terminate_listeners()
            self.listeners_terminated += int(event.params.get("terminated", 0))
        elif kind == "pg-restart":
            self.cluster.restart_postgres()
        elif kind == "subscriber-kill":
            self.kill_subscriber(state)
        elif kind == "link-down":
            self.link_down(state)
        elif kind == "clock-offset":
            self.clock_offset(state)
        elif kind == "clock-rate":
            self.clock_rate(state, float(arg))
        else:
            raise ValueError(kind)
        return state.host.name

    def _nemeses_on(self, host: str, since: float) -> list[str]:
        """The nemeses aimed at ``host`` since ``since``, as "<kind> <seconds ago>": what a
        liveness failure's owner went through (a partition from Ceph holds a live owner's
        settle, and no one may take over from a member whose lease runs)."""
        now = monotonic()
        return [
            f"{kind} {now - at:.1f} s ago"
            for at, kind, target in self.nemeses
            if target == host and at >= since
        ]

    # -- the end -------------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Heal, quiesce, settle 3 x ttl, stop the workers, let the feeds catch up, verify."""
        assert self.store is not None
        for state in self.hosts.values():
            self.cluster.heal(state.host)
            if state.host.frozen:
                self.cluster.thaw(state.host)
            state.hold = False
        for state in self.hosts.values():
            self._live_worker(state, 60)
        self.quiesced = True
        for worker in self.workers.values():
            if worker.code is None:
                (self.dir / "control" / f"{worker.token}.quiesce").touch()
        t_quiesced = monotonic()
        self.pause(3 * self.timers.ttl)
        self._wait_until("the pending index to empty", self._nothing_pending, 15)
        settled_after = monotonic() - t_quiesced
        for detail in self._pending_details():
            if not any(d["op_id"] == detail["op_id"] for d in self.stuck):
                self.stuck.append(detail)
        self.stopping = True
        # Owners of stuck operations first: they exit without leaving (worker.py), and the
        # others, still running, fence them and take their operations over.
        owners = {d["owner"] for d in self.stuck}
        running = [w for w in self.workers.values() if w.code is None]
        for worker in sorted(running, key=lambda w: w.member not in owners):
            if worker.member in owners:
                self._stop_worker(worker)
                self._wait_until("a takeover of what it owned", self._nothing_pending, 30)
            elif worker.code is None:
                self._stop_worker(worker)
        head = self.store.head()
        self._wait_until(
            "every subscriber at the head",
            lambda: all(_resume_position(p) >= head for p in self.feeds.values()),
            60,
        )
        for state in self.hosts.values():
            sub = state.subscriber
            if sub is not None and sub.poll() is None:
                child = Host._child_of(sub.popen.pid)
                with contextlib.suppress(ProcessLookupError, TypeError):
                    os.kill(child, signal.SIGINT)  # type: ignore[arg-type]
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sub.wait(10)
        return {"settled_after_quiesce_s": round(settled_after, 1), "verify": self.verify()}

    def _pending_details(self) -> list[dict[str, Any]]:
        assert self.store is not None
        alive = {w.member for w in self.workers.values() if w.member and w.code is None}
        details = []
        for entry in self.store.pending():
            last = self.store.read_stream(entry.stream)[-1]
            details.append(
                {
                    "stream": entry.stream,
                    "op": entry.operation.op,
                    "op_id": entry.operation.op_id,
                    "owner": entry.owner,
                    "owner_alive": entry.owner in alive,
                    "last_event": last.type,
                }
            )
        return details

    def _nothing_pending(self) -> bool:
        assert self.store is not None
        try:
            return not self.store.pending()
        except errors.DiskLedgerError:
            return False

    def verify(self) -> dict[str, Any]:
        host = self.cluster.hosts[0]
        argv = [sys.executable, "-m", "diskledger.cli", "verify", "--json"]
        env = {
            "DISKLEDGER_LEDGER": self.cluster.ledger_url_for(self.db),
            "DISKLEDGER_ROOT": str(self.shared),
            "DISKLEDGER_BACKEND": "rbd",
            "DISKLEDGER_MEMBERS": "0",
        }
        process = host.spawn(argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = process.popen.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            return {"ok": False, "error": "verify did not finish in 300 s"}
        try:
            loaded: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError:
            return {"ok": False, "error": f"exit {process.returncode}: {err.decode()[-2000:]}"}
        return loaded

    def close(self) -> None:
        self.stopping = True
        for state in self.hosts.values():
            with contextlib.suppress(Exception):
                state.host.heal()
            with contextlib.suppress(Exception):
                state.host.kill()
        for log in self.logs.values():
            log.close()
        if self.operator is not None:
            self.operator.close()
        if self.store is not None:
            self.store.close()

    # -- the checks ----------------------------------------------------------------------------

    def check(self, finished: dict[str, Any], wall: float) -> RunResult:
        assert self.store is not None
        url = self.cluster.postgres.url_for(self.db)
        events = read_ledger(url)
        witness = read_witness(self.cluster.witness_paths())
        nemeses = self.cluster.nemeses.events
        feeds = {name: _lines(path) for name, path in self.feeds.items()}
        report = check_all(
            events,
            witness,
            nemeses,
            lease_ttl=self.timers.ttl,
            latency_bound=self.timers.latency_bound,
            freeze_may_fence=self.timers.freeze_may_fence,
            feeds=feeds,
            wall_minus_monotonic=time.time() - monotonic(),
        )
        results = _results(self.dir / "results")
        report.results += [
            check_claim_chain(events, witness),
            check_acknowledged(events, results),
            self._check_settled(results),
            _check_verify(finished["verify"]),
            self._check_kill_latency(events, witness),
            self._check_self_fence(),
            self._check_liveness(),
        ]
        return RunResult(report, self._figures(report, events, witness, results, finished, wall))

    def _check_settled(self, results: Sequence[dict[str, Any]]) -> CheckResult:
        """Nothing pending once everything healed and the agents had 3 x ttl (and 15 s more);
        nothing pending once the workers stopped either."""
        assert self.store is not None
        result = CheckResult("settled")
        client = {r["op_id"]: r for r in results}
        result.counts["stuck"] = len(self.stuck)
        for d in self.stuck:
            when = (
                f"for {d['pending_for_s']} s while its owner ran"
                if "pending_for_s" in d
                else "after heal + quiesce + 3 x ttl"
            )
            result.fail(
                f"{d['stream']} {d['op']} ({d['op_id']}) still pending {when}",
                client=client.get(d["op_id"]),
                **d,
            )
        left = self.store.pending()
        result.counts["pending at the end"] = len(left)
        for entry in left:
            last = self.store.read_stream(entry.stream)[-1]
            result.fail(
                f"{entry.stream} {entry.operation.op} ({entry.operation.op_id}) still pending "
                "after the workers stopped",
                owner=entry.owner,
                last_event=last.type,
                last_data=last.data,
            )
        result.counts["members confirmed down by the operator"] = len(self.confirmed)
        result.counts["of them held by the circuit breaker"] = len(self.breaker_confirmed)
        return result

    def _check_kill_latency(
        self, events: Sequence[LedgerEvent], witness: Sequence[WitnessCall]
    ) -> CheckResult:
        """Kill -> the taker's last witnessed step (its outcome) for each operation of a member
        that was alive when its host was killed. (The checker's own latency check attributes a
        kill to every member of the incarnation, also to one fenced before it.)"""
        result = CheckResult("takeover latency (kill victims)")
        bound = self.timers.latency_bound
        ends: dict[tuple[str, str], float] = {}
        for c in witness:
            if c.step == "takeover" and c.t_end is not None:
                key = (c.op_id, c.member)
                ends[key] = max(ends.get(key, c.t_end), c.t_end)
        latencies: list[float] = []
        for e in events:
            if e.phase != "taken-over":
                continue
            victim, taker = str(e.data.get("from")), str(e.data.get("by"))
            t_kill = self.killed_at.get(victim)
            if t_kill is None:
                continue
            end = ends.get((e.op_id or "", taker))
            if end is None:
                result.count("unmeasured")
                continue
            same_host = victim.partition("/")[0] == taker.partition("/")[0]
            result.count("by the host's next incarnation" if same_host else "by another host")
            latency = end - t_kill
            latencies.append(latency)
            if latency > bound:
                result.fail(
                    f"{e.op_id}: settled {latency:.3f} s after {victim} was killed (bound "
                    f"{bound:g} s)",
                    takeover=e.brief(),
                    kill_time=t_kill,
                    end_time=end,
                )
        spread = _spread(latencies)
        if spread is not None:
            result.counts |= {f"{k} s" if k != "n" else "measured": v for k, v in spread.items()}
        return result

    def _check_self_fence(self) -> CheckResult:
        result = CheckResult("self-fence")
        bound = self.timers.deadline + 1.0
        for z in self.zombie_exits:
            result.count("zombies")
            took = z.get("exit_after_thaw", z.get("exit_after_cut"))
            if took is None:
                result.fail(
                    f"{z['member']} on {z['host']} did not exit after its {z['after']}", **z
                )
            elif took > bound:
                result.fail(
                    f"{z['member']} on {z['host']} exited {took:.2f} s after its {z['after']} "
                    f"(bound renew_deadline + 1 s = {bound:g} s)",
                    **z,
                )
            else:
                result.count("within the bound")
        return result

    def _check_liveness(self) -> CheckResult:
        result = CheckResult("liveness")
        result.counts["kills"] = sum(self.kills.values())
        for message, evidence in self.problems:
            result.fail(message, **evidence)
        return result

    def _figures(
        self,
        report: Report,
        events: Sequence[LedgerEvent],
        witness: Sequence[WitnessCall],
        results: Sequence[dict[str, Any]],
        finished: dict[str, Any],
        wall: float,
    ) -> dict[str, Any]:
        nemeses = Counter[str]()
        for n in self.cluster.nemeses.events:
            if n.kind == "partition":
                nemeses[f"partition {'+'.join(n.params.get('targets', ()))}"] += 1
            elif n.kind == "freeze" and n.t_end is not None:
                length = n.t_end - n.t_start
                nemeses["freeze long" if length >= self.timers.ttl else "freeze short"] += 1
            elif n.kind == "clock":
                nemeses["clock"] += 1
            else:
                nemeses[n.kind] += 1
        types = Counter(e.type for e in events)
        latency = report.result("takeover latency (kill victims)").counts
        exits = [z.get("exit_after_thaw", z.get("exit_after_cut")) for z in self.zombie_exits]
        return {
            "wall_s": round(wall, 1),
            "nemeses": dict(sorted(nemeses.items())),
            "kills_by_point": dict(sorted(self.kills.items())),
            "listener_sessions_terminated": self.listeners_terminated,
            "operations": dict(Counter(r["op"] for r in results)),
            "client_results": dict(Counter(r["result"] for r in results).most_common()),
            "intents": sum(n for t, n in types.items() if split_type(t)[2] == "started"),
            "completed": sum(n for t, n in types.items() if split_type(t)[2] == "completed"),
            "failed": sum(n for t, n in types.items() if split_type(t)[2] == "failed"),
            "needs_operator_events": sum(
                n for t, n in types.items() if split_type(t)[2] == "needs-operator"
            ),
            "takeovers": sum(n for t, n in types.items() if split_type(t)[2] == "taken-over"),
            "own_operations_reclaimed": sum(
                1
                for e in events
                if e.phase == "taken-over" and e.data.get("from") == e.data.get("by")
            ),
            "mutating_calls_without_operation_context": sum(
                1 for c in witness if c.op_id == "no-context"
            ),
            "members": types.get("member.joined", 0),
            "fencings": types.get("member.fencing", 0),
            "fenced": types.get("member.fenced", 0),
            "left": types.get("member.left", 0),
            "confirmed_down": types.get("member.confirmed-down", 0),
            "takeovers_suspended": types.get("member.takeover-suspended", 0),
            "takeover_latency_s": {
                k: round(float(v), 3) for k, v in latency.items() if k != "unmeasured"
            },
            "latency_bound_s": self.timers.latency_bound,
            "killed_member_fenced_after_s": _spread(self.fenced_after),
            "zombie_exit_s": _spread([x for x in exits if x is not None]),
            "worker_exits": dict(self.worker_exits),
            "subscriber_restarts": sum(self.restarts.values()) - len(self.hosts),
            "subscriber_exits": dict(self.subscriber_exits),
            "feed_positions": {
                name: report.result(f"feed {name}").counts.get("last position")
                for name in self.feeds
            },
            "ledger_head": events[-1].position if events else 0,
            "settled_after_quiesce_s": finished["settled_after_quiesce_s"],
            "verify_ok": bool(finished["verify"].get("ok")),
        }


# -- helpers -----------------------------------------------------------------------------------


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 3),
        "p99": round(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))], 3),
        "max": round(ordered[-1], 3),
    }


def _resume_position(path: Path) -> int:
    """The position a subscriber's file reached; a torn last line (a killed subscriber) is cut
    off first, so that the restarted one appends whole lines after it."""
    if not path.exists():
        return 0
    with path.open("rb+") as feed:
        size = feed.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        back = min(size, 1 << 16)
        feed.seek(size - back)
        tail = feed.read(back)
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            if cut < 0 and back == size:
                feed.truncate(0)
                return 0
            feed.truncate(size - back + cut + 1)
            tail = tail[: cut + 1]
        for line in reversed(tail.splitlines()):
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "position" in raw:
                return int(raw["position"])
            if "heartbeat" in raw:
                continue
    return 0 if size < (1 << 16) else _scan_position(path)


def _scan_position(path: Path) -> int:
    last = 0
    for line in _lines(path):
        with contextlib.suppress(json.JSONDecodeError):
            raw = json.loads(line)
            if "position" in raw:
                last = int(raw["position"])
    return last


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        yield from (line.rstrip("\n") for line in lines)


def _results(directory: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
    return found


def _definite(result: str) -> bool:
    name = result.partition(":")[2]
    cls = getattr(errors, name, None)
    if cls is errors.Conflict:
        return True
    return isinstance(cls, type) and issubclass(cls, DEFINITE)


def check_claim_chain(events: Sequence[LedgerEvent], witness: Sequence[WitnessCall]) -> CheckResult:
    """Every claim (``taken-over``) takes the operation from the member that owned it then —
    the intent's owner, or the previous claim's taker — and that member makes no successful
    mutating call on it after the claim committed.

    The checker's dual-execution check trusts the claim's ``from``; a taker working from a stale
    pending index may name the original owner although another taker had claimed (and is
    settling) the operation meanwhile: that taker then loses it without being named, or fenced.
    """
    result = CheckResult("claim chain")
    owner: dict[str, str] = {}
    lost: dict[tuple[str, str], tuple[LedgerEvent, float | None]] = {}
    claims = {
        (c.op_id, c.member): c.t_end for c in witness if c.call == "claim" and c.ok and c.t_end
    }
    for e in events:
        if not e.op_id or e.phase is None:
            continue
        if e.phase == "started":
            member = (e.data.get("owner") or {}).get("member")
            if member:
                owner[e.op_id] = str(member)
            continue
        if e.phase != "taken-over":
            continue
        named, taker = str(e.data.get("from")), str(e.data.get("by"))
        actual = owner.get(e.op_id)
        owner[e.op_id] = taker
        result.count("claims")
        if actual is None or actual == named:
            continue
        result.count("claims from a member that no longer owned it")
        t_claim = claims.get((e.op_id, taker))
        lost[(e.op_id, actual)] = (e, t_claim)
        result.fail(
            f"{e.op_id}: {taker} claimed it from {named}, but {actual} owned it then (claimed "
            "it earlier, and was not fenced)",
            claim=e.brief(),
            actual_owner=actual,
        )
    for c in witness:
        entry = lost.get((c.op_id, c.member))
        if entry is None or not c.mutating or not c.ok:
            continue
        event, t_claim = entry
        if t_claim is not None and c.t_start > t_claim:
            result.count("dual executions")
            result.fail(
                f"{c.member} executed {c.call} on {c.op_id} {c.t_start - t_claim:.3f} s after "
                f"{event.data.get('by')} claimed it (as taken from {event.data.get('from')})",
                call=c,
                claim=event.brief(),
                claim_committed=t_claim,
            )
    return result


def check_acknowledged(
    events: Sequence[LedgerEvent], results: Sequence[dict[str, Any]]
) -> CheckResult:
    """Every success a client saw is ``completed`` in the ledger (or, for a resize to the size
    the disk has, nothing at all); a refusal that promises nothing happened has no intent."""
    result = CheckResult("acknowledged")
    phases: dict[str, list[str]] = {}
    for e in events:
        if e.op_id and e.phase is not None:
            phases.setdefault(e.op_id, []).append(e.phase)
    for r in results:
        seen = phases.get(r["op_id"], [])
        if r["result"] == "ok":
            result.count("successes")
            if not seen and r["op"] in NO_OP:
                result.count("no-op successes")  # nothing to do, nothing recorded
            elif "completed" not in seen:
                result.fail(
                    f"{r['op']} {r['disk']} ({r['op_id']}) succeeded for its client but the "
                    f"ledger has {seen or 'nothing'}",
                    client=r,
                )
        elif _definite(r["result"]):
            result.count("definite refusals")
            if seen:
                result.fail(
                    f"{r['op']} {r['disk']} ({r['op_id']}) was refused ({r['result']}) but the "
                    f"ledger has {seen}",
                    client=r,
                )
        else:
            result.count("indefinite errors")
            if "completed" in seen:
                result.count("errors the ledger completed")
    return result


def _check_verify(verify: dict[str, Any]) -> CheckResult:
    """``diskledger verify`` passes. An orphan beside a set-aside tombstone of its own name
    (``<tmp>.fenced-<epoch>``) is told apart: a temporary a fenced member wrote after the
    taker had set its name aside."""
    result = CheckResult("verify")
    result.counts["events"] = verify.get("events", 0)
    if not verify.get("ok"):
        orphans = [str(o) for o in verify.get("orphans", [])]
        late = [o for o in orphans if glob.glob(glob.escape(o) + ".fenced-*")]
        only_late = bool(
            late
            and len(late) == len(orphans)
            and verify.get("chain", {}).get("ok")
            and verify.get("read_models", {}).get("ok")
            and not verify.get("drift")
        )
        result.fail(
            "diskledger verify failed"
            + (": only temporaries fenced members wrote after they were set aside" * only_late),
            report=verify,
            late_temporaries=late,
            only_late_temporaries=only_late,
        )
    return result


def run(
    cluster: Cluster,
    *,
    kills: int = 30,
    fault_share: float = 0.5,
    freezes_short: int = 5,
    freezes_long: int = 5,
    partitions: int = 10,
    listener_kills: int = 5,
    pg_restarts: int = 0,
    subscriber_kills: int = 0,
    link_downs: int = 0,
    clock_offsets: int = 0,
    clock_rates: int = 0,
    threads: int = 2,
    disks: int = 4,
    think: float = 0.1,
    gap: tuple[float, float] = (0.2, 0.6),
    partition_seconds: float | None = None,
    timers: Timers | None = None,
    seed: str | None = None,
    log: IO[str] = sys.stderr,
) -> RunResult:
    """Run the workload under the nemeses on a started ``cluster``; see the module docstring."""
    timers = timers or Timers()
    seed = seed or secrets.token_hex(4)
    mix = Mix(
        kills,
        fault_share,
        freezes_short,
        freezes_long,
        partitions,
        listener_kills,
        pg_restarts,
        subscriber_kills,
        link_downs,
        clock_offsets,
        clock_rates,
    )
    chaos = Chaos(
        cluster,
        timers=timers,
        threads=threads,
        disks=disks,
        think=think,
        seed=seed,
        partition_seconds=partition_seconds or 2 * timers.ttl,
        log=log,
    )
    t0 = monotonic()
    try:
        chaos.say(f"seed {seed}, run dir {chaos.dir}, {mix}")
        chaos.start()
        chaos.pause(2.0)
        schedule = mix.schedule(chaos.rng)
        for i, (kind, arg) in enumerate(schedule, start=1):
            target = chaos.apply(kind, arg)
            chaos.say(f"{i}/{len(schedule)} {kind} {arg or ''} ({target})")
            chaos.pause(chaos.rng.uniform(*gap))
        chaos.say("healing, quiescing, settling")
        finished = chaos.finish()
        chaos.say("checking")
        return chaos.check(finished, monotonic() - t0)
    finally:
        chaos.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.multihost.run", description=__doc__)
    add = parser.add_argument
    add("--kills", type=int, default=30)
    add("--fault-share", type=float, default=0.5)
    add("--freezes-short", type=int, default=5)
    add("--freezes-long", type=int, default=5)
    add("--partitions", type=int, default=10)
    add("--listener-kills", type=int, default=5)
    add("--pg-restarts", type=int, default=0)
    add("--subscriber-kills", type=int, default=0)
    add("--link-downs", type=int, default=0)
    add("--clock-offsets", type=int, default=0)
    add("--clock-rates", type=int, default=0)
    add("--threads", type=int, default=2)
    add("--disks", type=int, default=4)
    add("--hosts", type=int, default=3)
    add("--seed")
    add("--keep", action="store_true", help="keep the rig's work directory (logs, witness)")
    add("--figures", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so that the rig is taken down

    signal.signal(signal.SIGTERM, interrupted)
    with Cluster(args.hosts, faketime=True, keep_work_dir=args.keep) as cluster:
        result = run(
            cluster,
            kills=args.kills,
            fault_share=args.fault_share,
            freezes_short=args.freezes_short,
            freezes_long=args.freezes_long,
            partitions=args.partitions,
            listener_kills=args.listener_kills,
            pg_restarts=args.pg_restarts,
            subscriber_kills=args.subscriber_kills,
            link_downs=args.link_downs,
            clock_offsets=args.clock_offsets,
            clock_rates=args.clock_rates,
            threads=args.threads,
            disks=args.disks,
            seed=args.seed,
        )
        print(result.render())
        if args.figures is not None:
            args.figures.parent.mkdir(parents=True, exist_ok=True)
            args.figures.write_text(json.dumps(result.figures, indent=2) + "\n")
        if args.keep:
            print(f"work directory kept: {cluster.work_dir}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
