"""A throw-away one-node Ceph cluster for tests and benchmarks, started by scripts/ceph-dev.sh.

``CephCluster`` starts the cluster in a temporary directory (one ceph-mon on a free loopback port,
one memstore ceph-osd, cephx on, the pools ``diskledger`` and ``diskledger-snapshots`` and the
restricted client ``client.diskledger``) and stops exactly those daemons by their pid files.

The engine under test only ever gets the restricted client (``environ()``, ``ceph_config()``);
the admin key is for the tests' own looking and cleaning (``pool_contents``, ``purge``).

Memstore keeps data in the OSD's memory only, so a restarted OSD comes back empty: a test that
needs the OSD "down and back" freezes it (SIGSTOP) and lets it go on (SIGCONT) instead, which is
what a client sees of a stopped or unreachable OSD; ``settle`` then waits until its placement
groups serve again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from diskledger.backends import CephConfig

__all__ = ["POOL", "SNAPSHOT_POOL", "CephCluster", "CephUnavailable"]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ceph-dev.sh"
POOL = "diskledger"
SNAPSHOT_POOL = "diskledger-snapshots"
USER = "diskledger"
_DAEMONS = ("ceph-mon", "ceph-osd", "ceph-authtool", "monmaptool", "rbd")


class CephUnavailable(RuntimeError):
    """The Ceph packages are not installed (skip outside CI)."""


class CephCluster:
    def __init__(
        self, directory: str | None = None, *, netns: str | None = None, address: str | None = None
    ) -> None:
        """``netns`` and ``address`` serve the multi-host rig (tests/multihost): the daemons start
        inside that network namespace (``ip netns exec``) bound to ``address`` (default loopback),
        and ``rbd()`` runs there too. ``purge()`` uses the Python bindings of this process, so it
        only reaches a cluster on loopback of this process's namespace."""
        self.netns = netns
        self.address = address
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="diskledger-ceph-"))
        self.conf = self.directory / "ceph.conf"
        self._thawed = False

    def start(self) -> None:
        missing = [tool for tool in _DAEMONS if shutil.which(tool) is None]
        if missing:
            raise CephUnavailable(
                f"{', '.join(missing)} not installed (scripts/bootstrap.sh installs ceph-mon, "
                "ceph-osd, ceph-common)"
            )
        done = subprocess.run(
            [*self.command_prefix, str(SCRIPT), "start", str(self.directory)],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "CEPH_DEV_ADDR": self.address} if self.address else None,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the Ceph cluster did not start: {done.stderr.strip()}")

    def stop(self) -> None:
        self.thaw_osd()
        subprocess.run([str(SCRIPT), "stop", str(self.directory)], check=False, timeout=60)
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def command_prefix(self) -> list[str]:
        """What runs a command where the daemons are (``ip netns exec NS``, or nothing)."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    @property
    def _as_admin(self) -> list[str]:
        """The options of a ceph tool (``rbd``, ``ceph``) that make it client.admin here."""
        return ["-c", str(self.conf), "-n", "client.admin", "-k", str(self.admin_keyring)]

    @property
    def keyring(self) -> Path:
        return self.directory / f"client.{USER}.keyring"

    @property
    def admin_keyring(self) -> Path:
        return self.directory / "client.admin.keyring"

    def environ(self) -> dict[str, str]:
        """The settings that point diskledger at this cluster as the restricted client."""
        return {
            "DISKLEDGER_BACKEND": "rbd",
            "DISKLEDGER_CEPH_CONF": str(self.conf),
            "DISKLEDGER_CEPH_KEYRING": str(self.keyring),
            "DISKLEDGER_RBD_USER": USER,
            "DISKLEDGER_RBD_POOL": POOL,
            "DISKLEDGER_RBD_SNAPSHOT_POOL": SNAPSHOT_POOL,
        }

    def ceph_config(self, **overrides: float) -> CephConfig:
        return CephConfig(
            conf=str(self.conf),
            pool=POOL,
            user=USER,
            keyring=str(self.keyring),
            snapshot_pool=SNAPSHOT_POOL,
            **overrides,  # type: ignore[arg-type]
        )

    # -- the tests' own view, as client.admin ------------------------------------------------

    def rbd(self, *args: str) -> str:
        done = subprocess.run(
            [*self.command_prefix, "rbd", *self._as_admin, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rbd {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def pool_contents(self, pool: str = POOL) -> set[str]:
        """Every image (``name``) and snapshot (``name@snap``) in ``pool``."""
        listing = json.loads(self.rbd("ls", "-l", "--format", "json", pool) or "[]")
        found: set[str] = set()
        for entry in listing:
            found.add(entry["image"] + (f"@{entry['snapshot']}" if "snapshot" in entry else ""))
        return found

    def purge(self, *pools: str) -> None:
        """Remove every image and snapshot from ``pools`` (default: both) as client.admin, clones
        first, whichever pool they are in (a direct snapshot's copy may be a clone of a disk)."""
        import rados
        import rbd

        # With a deadline, behind settle(): a placement group stuck for another reason fails
        # the test instead of hanging the whole run at its teardown.
        settings = {"keyring": str(self.admin_keyring), "rados_osd_op_timeout": "60"}
        cluster = rados.Rados(conffile=str(self.conf), rados_id="admin", conf=settings)
        cluster.connect(timeout=30)
        ioctxs: list[Any] = []
        try:
            ioctxs.extend(cluster.open_ioctx(pool) for pool in pools or (POOL, SNAPSHOT_POOL))
            for _ in range(10):
                names = [(ioctx, name) for ioctx in ioctxs for name in rbd.RBD().list(ioctx)]
                if not names:
                    return
                for ioctx, name in names:
                    try:
                        with rbd.Image(ioctx, name) as image:
                            for snap in image.list_snaps():
                                if snap.get("namespace") != rbd.RBD_SNAP_NAMESPACE_TYPE_USER:
                                    continue
                                if image.is_protected_snap(snap["name"]):
                                    image.unprotect_snap(snap["name"])
                                image.remove_snap(snap["name"])
                        rbd.RBD().remove(ioctx, name)
                    except rbd.Error:
                        pass  # a parent whose clones go first: the next round
            left = {name for ioctx in ioctxs for name in rbd.RBD().list(ioctx)}
            raise RuntimeError(f"could not empty the pools: {sorted(left)}")
        finally:
            for ioctx in ioctxs:
                ioctx.close()
            cluster.shutdown()

    # -- what a failed test reports ----------------------------------------------------------

    def diagnose(self) -> str:
        """The cluster as a failed test found it: each daemon's process state (``T`` is a
        stopped process), the sockets on the monitor's ports (a listener's Recv-Q is its
        backlog of connections not yet accepted), ``ceph -s`` and the monitor log's last lines."""
        lines = []
        for daemon in ("mon.a", "osd.0"):
            lines.append(f"{daemon}: {_process_state(self.directory / 'run' / f'{daemon}.pid')}")
        ports = sorted(set(re.findall(r"\d+\.\d+\.\d+\.\d+:(\d+)", _mon_host(self.conf))))
        if ports:
            where = " or ".join(f"sport = :{port} or dport = :{port}" for port in ports)
            sockets = ["ss", "-Htanp", "exclude", "time-wait", f"( {where} )"]
            lines.append(_output([*self.command_prefix, *sockets]))
        status = ["timeout", "15", "ceph", *self._as_admin, "--connect-timeout", "10", "-s"]
        lines.append(_output([*self.command_prefix, *status]))
        log = self.directory / "log" / "mon.a.log"
        if log.exists():
            lines.extend(log.read_text(errors="replace").splitlines()[-20:])
        return "\n".join(lines)

    # -- faults --------------------------------------------------------------------------------

    def _osd_pid(self) -> int:
        return int((self.directory / "run" / "osd.0.pid").read_text().strip())

    def freeze_osd(self) -> None:
        """Stop the OSD process (SIGSTOP): requests to it go unanswered until ``thaw_osd``.
        Returns once the kernel has stopped it (the signal lands asynchronously)."""
        pid_file = self.directory / "run" / "osd.0.pid"
        os.kill(self._osd_pid(), signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not _process_state(pid_file).endswith("state T"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the OSD did not stop: {_process_state(pid_file)}")
            time.sleep(0.01)

    def thaw_osd(self) -> None:
        pid_file = self.directory / "run" / "osd.0.pid"
        if _process_state(pid_file).endswith("state T"):
            self._thawed = True
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._osd_pid(), signal.SIGCONT)

    def settle(self, patience: float = 30.0) -> None:
        """After a thaw: return once the OSD has no request waiting for its placement group to
        become readable. A thawed PG waits out the read lease of its frozen interval (at most
        ``osd_heartbeat_grace`` x ``osd_pool_default_read_lease_ratio``, 16 s); once, it waited
        13 minutes, which marking the OSD down ends at once (it re-peers), as an operator
        would. Cheap when nothing was frozen since the last call."""
        if not self._thawed:
            return
        deadline = time.monotonic() + patience
        while self._ops_waiting_for_readable():
            if time.monotonic() > deadline:
                self._repeer()
                break
            time.sleep(0.25)
        self._thawed = False

    def _ops_waiting_for_readable(self) -> int:
        asok = self.directory / "run" / "osd.0.asok"
        dump = ["ceph", "--admin-daemon", str(asok), "dump_ops_in_flight", "--format", "json"]
        done = subprocess.run(
            [*self.command_prefix, *dump], capture_output=True, text=True, timeout=30, check=True
        )
        ops = json.loads(done.stdout).get("ops", [])
        return sum(
            op.get("type_data", {}).get("flag_point") == "waiting for readable" for op in ops
        )

    def _repeer(self) -> None:
        marked = time.monotonic()
        ceph = [*self.command_prefix, "ceph", *self._as_admin, "--connect-timeout", "10"]
        subprocess.run([*ceph, "osd", "down", "0"], capture_output=True, timeout=30, check=True)
        while time.monotonic() - marked < 60:
            dump = subprocess.run(
                [*ceph, "osd", "dump", "--format", "json"],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            if all(osd["up"] for osd in json.loads(dump.stdout)["osds"]) and (
                not self._ops_waiting_for_readable()
            ):
                return
            time.sleep(0.25)
        raise RuntimeError(f"the OSD did not come back after a re-peer:\n{self.diagnose()}")


def _process_state(pid_file: Path) -> str:
    try:
        pid = int(pid_file.read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return "not running"
    return f"pid {pid}, state {stat.rsplit(')', 1)[1].split()[0]}"


def _mon_host(conf: Path) -> str:
    with contextlib.suppress(OSError):
        for line in conf.read_text().splitlines():
            if line.strip().startswith("mon host"):
                return line
    return ""


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(argv[:3])}: {exc}"
    return f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}".rstrip()
