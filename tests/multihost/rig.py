"""The multi-host rig: several "hosts" on this machine sharing one PostgreSQL and one Ceph, with
real faults.

``Cluster(hosts=3)`` (a context manager) builds the topology of tests/support/netns.py, starts
PostgreSQL (tests/support/postgres.py) and the one-node Ceph cluster (scripts/ceph-dev.sh) *inside
the core namespace*, listening on the core address, and prepares one :class:`Host` per host
namespace, each with a freezer cgroup ``/sys/fs/cgroup/freezer/dlt<run>-h<i>``.

A host runs processes in its own network namespace and in one PID namespace per *incarnation*
("boot"): the first ``spawn`` boots it (a small init, PID 1 of a new PID namespace, made by
``ip netns exec <ns> unshare --pid --fork --kill-child``), later spawns join that PID namespace
(``nsenter --pid --net``). Each incarnation has a fresh ``boot_id`` (``DISKLEDGER_BOOT_ID``), as a
rebooted machine would. Every process of the host is in the host's freezer cgroup.

Nemeses (each is recorded with its CLOCK_MONOTONIC times in ``cluster.nemeses``, which the
checker reads):

* ``kill_host(h)``: SIGKILL to the PID-namespace init; the kernel kills every process in it.
* ``freeze(h, seconds=None)`` / ``thaw(h)``: the cgroup-v1 freezer (with ``seconds``: blocks,
  then thaws).
* ``partition(h, targets={"pg", "ceph"})`` / ``heal(h)``: iptables DROP rules inside the host
  namespace, on the packets to and from the PostgreSQL port or the Ceph daemons (every other TCP
  port of the core address: only PostgreSQL and Ceph listen there).
* ``link_down(h)`` / ``link_up(h)``: the host's cable (its veth end on the bridge).
* ``restart_postgres()``: ``pg_ctl -m fast restart`` in the core namespace.
* ``terminate_listeners()``: ``pg_terminate_backend`` of every session whose query is ``LISTEN%``.
* ``set_clock(h, offset=, rate=)``: libfaketime (``Cluster(faketime=True)``): every process of
  every host is started with libfaketime preloaded, reading its spec from a per-host file that
  this rewrites (it takes effect within three seconds). Wall-clock time only: ``DONT_FAKE_MONOTONIC=1``
  keeps CLOCK_MONOTONIC real (one clock for all hosts, which the witness log relies on). See
  ``ClockSkew`` for what libfaketime 0.9.10 does with rates.

Processes of the root namespace (the tests, the checker) reach PostgreSQL through its unix socket
(``cluster.local_ledger_url``); hosts get ``cluster.ledger_url`` (TCP to the core address).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tests.support.ceph import CephCluster, CephUnavailable
from tests.support.netns import (
    Namespace,
    NetnsUnavailable,
    Topology,
    create_topology,
    new_run_id,
)
from tests.support.postgres import (
    DEFAULT_DATABASE,
    SUPERUSER,
    PostgresServer,
    PostgresUnavailable,
    find_bindir,
)

__all__ = [
    "CEPH",
    "FAKETIME_LIBRARY",
    "PG",
    "ClockSkew",
    "Cluster",
    "Host",
    "HostProcess",
    "NemesisEvent",
    "NemesisLog",
    "RigUnavailable",
    "monotonic",
]

REPO = Path(__file__).resolve().parents[2]
FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
"""Debian's ``libfaketime`` (package ``faketime``); the thread-safe variant (engines have threads)."""
FAKETIME_SITE = Path(__file__).resolve().parent / "faketime_site"
FREEZER = Path("/sys/fs/cgroup/freezer")
PG = "pg"
CEPH = "ceph"
_CHAIN = "DLT-PARTITION"
_TOOLS = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "iptables": "iptables",
    "rados": "ceph-common",
    "ceph": "ceph-common",
}


def monotonic() -> float:
    """The one clock every host shares (CLOCK_MONOTONIC, never faked here)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class RigUnavailable(RuntimeError):
    """Something the rig needs is not installed or not permitted here (skip outside CI)."""


@dataclass(frozen=True)
class ClockSkew:
    """A libfaketime spec for one host's wall clock.

    ``offset`` seconds are added to the real time; ``rate`` makes it run faster or slower. Facts
    of libfaketime 0.9.10 (checked on Debian 12), which the rig lives with:

    * a rate needs an offset before it: ``"+0 x1.4"``; a bare ``"x1.4"`` is ignored (no rate) and
      then ``time.sleep`` in Python hangs;
    * with ``DONT_FAKE_MONOTONIC=1`` (always set here) the rate applies to the wall clock only:
      CLOCK_MONOTONIC keeps the real rate, but relative timeouts of ``select``/``poll``/
      ``nanosleep`` in the preloaded processes (and their children, e.g. ``sleep``) *are* divided
      by the rate; Python's lock/event waits are not;
    * without ``DONT_FAKE_MONOTONIC`` CLOCK_MONOTONIC is faked too (shifted to the epoch and
      scaled), which hangs every timed ``threading`` wait of Python 3.11 for good: unusable;
    * a rate is anchored at each process's start: changing the rate of a running process jumps
      its clock by (new rate - old rate) x (time since it started). Give rates before spawning.
    """

    offset: float = 0.0
    rate: float = 1.0

    def spec(self) -> str:
        spec = f"{self.offset:+.3f}"
        return spec if self.rate == 1.0 else f"{spec} x{self.rate:g}"


@dataclass(frozen=True)
class NemesisEvent:
    """One fault applied: ``kind`` in kill, freeze, partition, link-down, restart-postgres,
    terminate-listeners, clock; ``t_start``/``t_end`` on CLOCK_MONOTONIC (``t_end`` None while it
    lasts, and for instantaneous ones equal to the time it returned)."""

    kind: str
    host: str | None
    boot_id: str | None
    t_start: float
    t_end: float | None
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> NemesisEvent:
        raw = json.loads(line)
        return cls(
            raw["kind"],
            raw.get("host"),
            raw.get("boot_id"),
            float(raw["t_start"]),
            None if raw.get("t_end") is None else float(raw["t_end"]),
            raw.get("params") or {},
        )


class NemesisLog:
    """The nemeses applied, in order; also appended (one JSON line each, when it ends) to
    ``path``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._events: list[NemesisEvent] = []
        self._lock = threading.Lock()

    @property
    def events(self) -> list[NemesisEvent]:
        with self._lock:
            return list(self._events)

    def record(self, event: NemesisEvent) -> NemesisEvent:
        with self._lock:
            self._events.append(event)
            if self.path is not None:
                with self.path.open("a") as out:
                    out.write(event.to_json() + "\n")
        return event

    def finish(self, event: NemesisEvent, t_end: float | None = None) -> NemesisEvent:
        """Replace an open-ended ``event`` (a freeze, a partition) by its ended copy."""
        ended = NemesisEvent(
            event.kind, event.host, event.boot_id, event.t_start, t_end or monotonic(), event.params
        )
        with self._lock:
            self._events[self._events.index(event)] = ended
            if self.path is not None:
                with self.path.open("a") as out:
                    out.write(ended.to_json() + "\n")
        return ended

    @staticmethod
    def load(path: Path) -> list[NemesisEvent]:
        """The events in ``path``: the last line per (kind, host, t_start) wins (an ended copy
        follows its open one)."""
        latest: dict[tuple[str, str | None, float], NemesisEvent] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                event = NemesisEvent.from_json(line)
                latest[(event.kind, event.host, event.t_start)] = event
        return sorted(latest.values(), key=lambda e: e.t_start)


_INIT = """
import os, time
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.2)
"""
"""PID 1 of a host incarnation: reaps orphans, nothing else (and no libfaketime)."""


@dataclass
class HostProcess:
    """A process spawned on a host. ``popen.pid`` is the ``nsenter`` in front of it (in the root
    PID namespace); its exit status is the process's."""

    host: str
    boot_id: str
    argv: Sequence[str]
    popen: subprocess.Popen[bytes]

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode


class Host:
    """One host namespace; see the module docstring. Made by :class:`Cluster`."""

    def __init__(self, cluster: Cluster, index: int, ns: Namespace) -> None:
        self.cluster = cluster
        self.index = index
        self.ns = ns
        self.name = f"h{index}"
        self.cgroup = FREEZER / ns.name
        self.clock_file = cluster.work_dir / f"{self.name}.faketime"
        self.witness_path = cluster.work_dir / "witness" / f"{self.name}.jsonl"
        self.boot_id: str | None = None
        self._init: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None
        self._processes: list[HostProcess] = []
        self._skew = ClockSkew()

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ns.address} boot={self.boot_id}>"

    @property
    def address(self) -> str:
        return self.ns.address

    # -- identity and environment --------------------------------------------------------------

    def environ(self) -> dict[str, str]:
        """What a process of this host gets on top of the rig's environment."""
        if self.boot_id is None:
            raise RuntimeError(f"{self.name} is not booted")
        env = {
            "DISKLEDGER_HOST": self.name,
            "DISKLEDGER_BOOT_ID": self.boot_id,
            "DISKLEDGER_LEDGER": self.cluster.ledger_url,
            "DISKLEDGER_WITNESS": str(self.witness_path),
            **self.cluster.ceph.environ(),
        }
        if self.cluster.faketime:
            python_path = [str(FAKETIME_SITE), str(REPO)]
            if os.environ.get("PYTHONPATH"):
                python_path.append(os.environ["PYTHONPATH"])
            env |= {
                "LD_PRELOAD": str(FAKETIME_LIBRARY),
                "FAKETIME_TIMESTAMP_FILE": str(self.clock_file),
                "FAKETIME_CACHE_DURATION": "1",
                "DONT_FAKE_MONOTONIC": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "PYTHONPATH": os.pathsep.join(python_path),
            }
        return env

    # -- processes -----------------------------------------------------------------------------

    def boot(self) -> str:
        """Start a new incarnation (PID namespace + init) unless one runs; return its boot id."""
        if self._init is not None and self._init.poll() is None:
            assert self.boot_id is not None
            return self.boot_id
        self.boot_id = str(uuid.uuid4())
        # util-linux 2.38's unshare --kill-child warns "sigprocmask unblock failed" and goes on:
        # its stderr goes to the host's log.
        with (self.cluster.work_dir / f"{self.name}.init.log").open("ab") as log:
            self._init = subprocess.Popen(
                self._in_cgroup(
                    self.ns.argv(
                        "unshare",
                        "--pid",
                        "--fork",
                        "--kill-child",
                        "--",
                        sys.executable,
                        "-c",
                        _INIT,
                    )
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = monotonic() + 10
        while (pid := self._child_of(self._init.pid)) is None:
            if self._init.poll() is not None or monotonic() > deadline:
                raise RuntimeError(f"the init of {self.name} did not start")
            time.sleep(0.01)
        self._init_pid = pid
        return self.boot_id

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = None,
        cwd: Path | str | None = REPO,
    ) -> HostProcess:
        """Start ``argv`` on this host (booting it if needed), with the host's environment."""
        boot_id = self.boot()
        assert self._init_pid is not None
        full_env = {**os.environ, **self.environ(), **(env or {})}
        popen = subprocess.Popen(
            self._in_cgroup(
                ["nsenter", "--target", str(self._init_pid), "--pid", "--net", "--", *argv]
            ),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        process = HostProcess(self.name, boot_id, list(argv), popen)
        self._processes.append(process)
        return process

    def run(
        self, argv: Sequence[str], *, timeout: float = 30, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A one-off command in this host's network namespace (not in its PID namespace or
        cgroup: a tool of the rig, like ``rados``, not a process of the host)."""
        return subprocess.run(
            self.ns.argv(*argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )

    def pids(self) -> list[int]:
        """Every process in the host's cgroup (root-namespace pids)."""
        with contextlib.suppress(FileNotFoundError):
            return [int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()]
        return []

    @property
    def init_pid(self) -> int | None:
        return self._init_pid

    @property
    def processes(self) -> list[HostProcess]:
        return list(self._processes)

    def kill(self) -> None:
        """SIGKILL the incarnation's init (everything in its PID namespace dies), thaw it if
        frozen (a frozen task dies only once thawed), wait until the cgroup is empty."""
        if self._init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init_pid, signal.SIGKILL)
        if self.frozen:
            self.thaw()
        # Processes that never made it into the PID namespace (an nsenter still starting).
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.popen.pid, signal.SIGKILL)
        deadline = monotonic() + 15
        while self.pids():
            if monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes {self.pids()} outlived the kill")
            time.sleep(0.01)
        for popen in [self._init, *(p.popen for p in self._processes)]:
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(5)
        self._init = None
        self._init_pid = None
        self.boot_id = None
        self._processes = []

    # -- freezer -------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        with contextlib.suppress(FileNotFoundError):
            return (self.cgroup / "freezer.state").read_text().strip() != "THAWED"
        return False

    def freeze(self) -> None:
        self._set_freezer("FROZEN")

    def thaw(self) -> None:
        self._set_freezer("THAWED")

    def _set_freezer(self, state: str) -> None:
        (self.cgroup / "freezer.state").write_text(state)
        deadline = monotonic() + 10
        while (self.cgroup / "freezer.state").read_text().strip() != state:
            if monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the freezer did not reach {state}")
            (self.cgroup / "freezer.state").write_text(state)
            time.sleep(0.005)

    # -- network -------------------------------------------------------------------------------

    def partition(self, targets: Iterable[str]) -> None:
        """DROP this host's packets to and from PostgreSQL (``"pg"``) and/or Ceph (``"ceph"``)."""
        wanted = set(targets)
        if not wanted or wanted - {PG, CEPH}:
            raise ValueError(f"targets must be a non-empty subset of {{'pg', 'ceph'}}: {targets}")
        core = self.cluster.core.address
        port = str(self.cluster.postgres.port)
        self._iptables("-N", _CHAIN, check=False)
        for hook in ("OUTPUT", "INPUT"):
            if self._iptables("-C", hook, "-j", _CHAIN, check=False).returncode != 0:
                self._iptables("-I", hook, "1", "-j", _CHAIN)
        for target in sorted(wanted):
            negate = [] if target == PG else ["!"]
            self._iptables(
                "-A", _CHAIN, "-d", core, "-p", "tcp", *negate, "--dport", port, "-j", "DROP"
            )
            self._iptables(
                "-A", _CHAIN, "-s", core, "-p", "tcp", *negate, "--sport", port, "-j", "DROP"
            )

    def heal(self) -> None:
        """Remove every partition rule of this host."""
        self._iptables("-F", _CHAIN, check=False)

    def _iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = self.run(["iptables", "-w", "5", *args])
        if check and done.returncode != 0:
            raise RuntimeError(
                f"iptables {' '.join(args)} in {self.ns.name}: {done.stderr.strip()}"
            )
        return done

    # -- clock ---------------------------------------------------------------------------------

    def set_clock(self, skew: ClockSkew) -> None:
        if not self.cluster.faketime:
            raise RuntimeError("clock skew needs Cluster(faketime=True)")
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(skew.spec() + "\n")
        tmp.replace(self.clock_file)
        self._skew = skew

    @property
    def clock(self) -> ClockSkew:
        return self._skew

    # -- internals -----------------------------------------------------------------------------

    def _in_cgroup(self, argv: Sequence[str]) -> list[str]:
        """``argv`` exec'd by a shell that first moves itself into the host's freezer cgroup."""
        procs = str(self.cgroup / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    @staticmethod
    def _child_of(pid: int) -> int | None:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None


class Cluster:
    """The whole rig; see the module docstring."""

    def __init__(
        self,
        hosts: int = 3,
        *,
        run_id: str | None = None,
        faketime: bool = False,
        work_dir: Path | None = None,
        keep_work_dir: bool = False,
    ) -> None:
        self.run_id = run_id or new_run_id()
        self.n_hosts = hosts
        self.faketime = faketime
        self._owns_work_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix=f"diskledger-rig-{self.run_id}-"))
        self.keep_work_dir = keep_work_dir
        self.nemeses = NemesisLog(self.work_dir / "nemeses.jsonl")
        self.topology: Topology | None = None
        self._postgres: PostgresServer | None = None
        self._ceph: CephCluster | None = None
        self.hosts: list[Host] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def check_available(faketime: bool = False) -> None:
        """Raise RigUnavailable naming what is missing."""
        if os.geteuid() != 0:
            raise RigUnavailable("the multi-host rig needs root (namespaces, iptables, cgroups)")
        missing = [f"{tool} ({pkg})" for tool, pkg in _TOOLS.items() if shutil.which(tool) is None]
        if missing:
            raise RigUnavailable(f"not installed: {', '.join(missing)}")
        if not (FREEZER / "cgroup.procs").exists():
            raise RigUnavailable(f"the cgroup-v1 freezer is not mounted at {FREEZER}")
        if faketime and not FAKETIME_LIBRARY.exists():
            raise RigUnavailable(
                f"{FAKETIME_LIBRARY} is missing (Debian package faketime; scripts/bootstrap.sh)"
            )

    def start(self) -> None:
        """Build everything; on failure, remove whatever was built and re-raise. Raises
        RigUnavailable (or PostgresUnavailable/CephUnavailable/NetnsUnavailable) when a component
        is not installed."""
        self.check_available(self.faketime)
        try:
            (self.work_dir / "witness").mkdir(parents=True, exist_ok=True)
            self.topology = create_topology(self.n_hosts, run_id=self.run_id)
            core = self.topology.core
            self._postgres = PostgresServer(
                listen_addresses=core.address,
                hba_networks=[str(self.topology.network)],
                command_prefix=core.argv(),
            )
            self._postgres.start()
            self._ceph = CephCluster(
                str(self.work_dir / "ceph"), netns=core.name, address=core.address
            )
            self._ceph.start()
            for i, ns in enumerate(self.topology.hosts, start=1):
                host = Host(self, i, ns)
                host.cgroup.mkdir()
                self.hosts.append(host)
                if self.faketime:
                    host.set_clock(ClockSkew())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every host, stop the servers, remove the cgroups, namespaces and work dir
        (idempotent). Only what this object made is touched."""
        errors: list[str] = []
        for host in self.hosts:
            try:
                host.heal()
                host.kill()
                if host.cgroup.exists():
                    host.cgroup.rmdir()
            except Exception as exc:
                errors.append(f"{host.name}: {exc}")
        self.hosts = []
        if self._ceph is not None:
            self._ceph.stop()
            self._ceph = None
        if self._postgres is not None:
            self._postgres.stop()
            self._postgres = None
        if self.topology is not None:
            try:
                self.topology.close()
            except Exception as exc:
                errors.append(str(exc))
            self.topology = None
        if self._owns_work_dir and not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        if errors:
            raise RuntimeError("the rig did not stop cleanly: " + "; ".join(errors))

    def reset(self) -> None:
        """Between tests: heal, thaw and kill every host (not recorded as nemeses), and forget
        the recorded nemeses and witness files."""
        for host in self.hosts:
            host.heal()
            host.kill()
            if self.faketime:
                host.set_clock(ClockSkew())
            host.witness_path.unlink(missing_ok=True)
        if self.topology is not None:
            for host in self.hosts:
                self.topology.set_link(host.ns, up=True)
        self.nemeses = NemesisLog(self.work_dir / "nemeses.jsonl")
        self.nemeses.path.unlink(missing_ok=True)  # type: ignore[union-attr]

    # -- components ----------------------------------------------------------------------------

    @property
    def core(self) -> Namespace:
        if self.topology is None:
            raise RuntimeError("the rig is not started")
        return self.topology.core

    @property
    def postgres(self) -> PostgresServer:
        if self._postgres is None:
            raise RuntimeError("the rig is not started")
        return self._postgres

    @property
    def ceph(self) -> CephCluster:
        if self._ceph is None:
            raise RuntimeError("the rig is not started")
        return self._ceph

    @property
    def ledger_url(self) -> str:
        """The ledger as the hosts reach it (TCP to the core address)."""
        return self.ledger_url_for(DEFAULT_DATABASE)

    def ledger_url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{self.core.address}:{self.postgres.port}/{dbname}"

    @property
    def local_ledger_url(self) -> str:
        """The ledger as this (root-namespace) process reaches it: the unix socket."""
        return self.postgres.url

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def witness_paths(self) -> list[Path]:
        return [host.witness_path for host in self.hosts if host.witness_path.exists()]

    def ceph_admin(self, *args: str, timeout: float = 30) -> str:
        """``ceph`` as client.admin, run in the core namespace."""
        done = subprocess.run(
            self.core.argv(
                "ceph",
                "-c",
                str(self.ceph.conf),
                "-n",
                "client.admin",
                "-k",
                str(self.ceph.admin_keyring),
                *args,
            ),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ceph {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def rados(
        self, host: Host, *args: str, timeout: float = 20, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The ``rados`` CLI as the restricted client, from ``host``'s network namespace."""
        env = self.ceph.environ()
        return host.run(
            [
                "rados",
                "-c",
                env["DISKLEDGER_CEPH_CONF"],
                "-n",
                f"client.{env['DISKLEDGER_RBD_USER']}",
                "-k",
                env["DISKLEDGER_CEPH_KEYRING"],
                "--rados-osd-op-timeout",
                "5",
                "--rados-mon-op-timeout",
                "5",
                *args,
            ],
            timeout=timeout,
            input=input,
        )

    # -- nemeses -------------------------------------------------------------------------------

    def _hosts(self, host: Host | str) -> Host:
        return host if isinstance(host, Host) else self.host(host)

    def kill_host(self, host: Host | str) -> NemesisEvent:
        h = self._hosts(host)
        boot_id, t = h.boot_id, monotonic()
        h.kill()
        return self.nemeses.record(NemesisEvent("kill", h.name, boot_id, t, monotonic()))

    def freeze(self, host: Host | str, seconds: float | None = None) -> NemesisEvent | None:
        """Freeze ``host``; with ``seconds``, block that long and thaw it again."""
        h = self._hosts(host)
        t = monotonic()
        h.freeze()
        event = self.nemeses.record(NemesisEvent("freeze", h.name, h.boot_id, t, None))
        if seconds is None:
            return event
        time.sleep(max(0.0, t + seconds - monotonic()))
        return self.thaw(h)

    def thaw(self, host: Host | str) -> NemesisEvent | None:
        h = self._hosts(host)
        h.thaw()
        return self._finish_open("freeze", h.name)

    def partition(self, host: Host | str, targets: Iterable[str] = (PG, CEPH)) -> NemesisEvent:
        h = self._hosts(host)
        wanted = sorted(set(targets))
        t = monotonic()
        h.partition(wanted)
        return self.nemeses.record(
            NemesisEvent("partition", h.name, h.boot_id, t, None, {"targets": wanted})
        )

    def heal(self, host: Host | str) -> NemesisEvent | None:
        h = self._hosts(host)
        h.heal()
        return self._finish_open("partition", h.name)

    def link_down(self, host: Host | str) -> NemesisEvent:
        h = self._hosts(host)
        assert self.topology is not None
        t = monotonic()
        self.topology.set_link(h.ns, up=False)
        return self.nemeses.record(NemesisEvent("link-down", h.name, h.boot_id, t, None))

    def link_up(self, host: Host | str) -> NemesisEvent | None:
        h = self._hosts(host)
        assert self.topology is not None
        self.topology.set_link(h.ns, up=True)
        return self._finish_open("link-down", h.name)

    def restart_postgres(self, timeout: float = 60) -> NemesisEvent:
        """``pg_ctl -m fast restart`` in the core namespace: every session is closed, the server
        is back on the same address and port when this returns."""
        server = self.postgres
        t = monotonic()
        args = [
            str(find_bindir() / "pg_ctl"),
            "-D",
            str(server.data_dir),
            "-l",
            str(server.log_path),
        ]
        done = subprocess.run(
            server._command([*args, "-m", "fast", "-w", "-t", str(int(timeout)), "restart"]),
            cwd=server.tmpdir,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("PG")}, "TZ": "UTC"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {done.stdout}{done.stderr}")
        return self.nemeses.record(NemesisEvent("restart-postgres", None, None, t, monotonic()))

    def terminate_listeners(self) -> NemesisEvent:
        """``pg_terminate_backend`` of every session whose current query is a ``LISTEN``;
        ``params["terminated"]`` counts them."""
        t = monotonic()
        with self.postgres.connect("postgres", autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
            ).fetchall()
        pids = [int(pid) for pid, ok in rows if ok]
        return self.nemeses.record(
            NemesisEvent(
                "terminate-listeners",
                None,
                None,
                t,
                monotonic(),
                {"terminated": len(pids), "backend_pids": pids},
            )
        )

    def set_clock(self, host: Host | str, offset: float = 0.0, rate: float = 1.0) -> NemesisEvent:
        h = self._hosts(host)
        skew = ClockSkew(offset, rate)
        t = monotonic()
        h.set_clock(skew)
        return self.nemeses.record(
            NemesisEvent("clock", h.name, h.boot_id, t, t, {"offset": offset, "rate": rate})
        )

    def _finish_open(self, kind: str, host: str) -> NemesisEvent | None:
        for event in reversed(self.nemeses.events):
            if event.kind == kind and event.host == host and event.t_end is None:
                return self.nemeses.finish(event)
        return None


UNAVAILABLE: tuple[type[Exception], ...] = (
    RigUnavailable,
    NetnsUnavailable,
    PostgresUnavailable,
    CephUnavailable,
)
"""Every "not installed here" error the rig raises, to catch at once (skip outside CI)."""
