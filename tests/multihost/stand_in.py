"""A stand-in worker for the rig's self-tests: ``python -m tests.multihost.stand_in MODE``.

It runs on a host of the rig (``Host.spawn``), reads the host's environment (``DISKLEDGER_HOST``,
``DISKLEDGER_BOOT_ID``, ``DISKLEDGER_LEDGER``, ``DISKLEDGER_WITNESS``, the Ceph settings) and
witnesses each thing it does (tests/multihost/witness.py), with its ``time.time()`` as ``wall``:

* ``pg``: INSERT a row into ``stand_in`` (made by the test) every ``--interval`` s; on an error,
  reconnect;
* ``rados``: print the client's addresses as a JSON line, then ``write_full`` an object as the
  restricted Ceph client every ``--interval`` s;
* ``tree``: start a child and a grandchild (``sleep``), then write a ``tick`` line every
  ``--interval`` s;
* ``listen``: LISTEN on a channel and wait; when the session is terminated, witness it and exit 3;
* ``addrs``: print the Ceph client's addresses (``Rados.get_addrs()``) as JSON and exit.

Every loop stops by itself after ``--seconds`` (default 60).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from tests.multihost.witness import WitnessWriter, monotonic

CHANNEL = "dlt_rig"


def _conninfo() -> dict[str, Any]:
    url = os.environ["DISKLEDGER_LEDGER"].replace("postgresql+psycopg://", "postgresql://")
    return {
        "conninfo": url,
        "connect_timeout": 3,
        "autocommit": True,
        # A partition must turn into an error within seconds, not TCP's 15 minutes.
        "tcp_user_timeout": 2000,
        "keepalives": 1,
        "keepalives_idle": 1,
        "keepalives_interval": 1,
        "keepalives_count": 2,
    }


def _rados() -> Any:
    import rados

    cluster = rados.Rados(
        conffile=os.environ["DISKLEDGER_CEPH_CONF"],
        rados_id=os.environ["DISKLEDGER_RBD_USER"],
        conf={
            "keyring": os.environ["DISKLEDGER_CEPH_KEYRING"],
            "rados_osd_op_timeout": "3",
            "rados_mon_op_timeout": "3",
            "client_mount_timeout": "5",
        },
    )
    cluster.connect(timeout=5)
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stand_in")
    parser.add_argument("mode", choices=["pg", "rados", "tree", "listen", "addrs"])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args(argv)

    host = os.environ["DISKLEDGER_HOST"]
    member = f"{host}/{uuid.uuid4()}"
    if args.mode == "addrs":
        cluster = _rados()
        try:
            print(json.dumps({"host": host, "addrs": cluster.get_addrs()}), flush=True)
        finally:
            cluster.shutdown()
        return 0

    witness = WitnessWriter(
        os.environ["DISKLEDGER_WITNESS"],
        host=host,
        member=member,
        epoch=0,
        extra=lambda: {"wall": time.time(), "boot_id": os.environ.get("DISKLEDGER_BOOT_ID")},
    )
    deadline = monotonic() + args.seconds
    prefix = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    if args.mode == "pg":
        return _pg(witness, prefix, deadline, args.interval, host)
    if args.mode == "rados":
        return _rados_loop(witness, prefix, deadline, args.interval)
    if args.mode == "tree":
        children = [
            subprocess.Popen(["sleep", str(int(args.seconds) + 5)]),
            subprocess.Popen(["sh", "-c", f"sleep {int(args.seconds) + 5} & wait"]),
        ]
        print(json.dumps({"children": [c.pid for c in children]}), flush=True)
        n = 0
        while monotonic() < deadline:
            now = monotonic()
            witness.record(f"{prefix}-{n}", "stand-in", "effect", "tick", now, now, "ok")
            n += 1
            time.sleep(args.interval)
        return 0
    return _listen(witness, prefix, deadline)


def _pg(witness: WitnessWriter, prefix: str, deadline: float, interval: float, host: str) -> int:
    import psycopg

    conn: psycopg.Connection[Any] | None = None
    n = 0
    while monotonic() < deadline:
        try:
            with witness.call(f"{prefix}-{n}", "stand-in", "effect", "pg_insert"):
                if conn is None or conn.closed:
                    conn = psycopg.connect(**_conninfo())
                conn.execute(
                    "INSERT INTO stand_in (host, pid, n) VALUES (%s, %s, %s)",
                    (host, os.getpid(), n),
                )
        except psycopg.Error:
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.1)
        n += 1
        time.sleep(interval)
    return 0


def _rados_loop(witness: WitnessWriter, prefix: str, deadline: float, interval: float) -> int:
    import rados

    cluster = _rados()
    print(json.dumps({"addrs": cluster.get_addrs()}), flush=True)
    ioctx = cluster.open_ioctx(os.environ["DISKLEDGER_RBD_POOL"])
    n = 0
    try:
        while monotonic() < deadline:
            name = f"{prefix}-{n}"
            try:
                with witness.call(name, "stand-in", "effect", "rados_put"):
                    ioctx.write_full(f"stand-in-{name}", name.encode())
            except rados.Error:
                time.sleep(0.1)
            n += 1
            time.sleep(interval)
    finally:
        ioctx.close()
        cluster.shutdown()
    return 0


def _listen(witness: WitnessWriter, prefix: str, deadline: float) -> int:
    import psycopg

    t_start = monotonic()
    conn = psycopg.connect(**_conninfo())
    conn.execute(f"LISTEN {CHANNEL}")
    witness.record(f"{prefix}-listen", "stand-in", "effect", "listen", t_start, monotonic(), "ok")
    t_start = monotonic()
    try:
        while monotonic() < deadline:
            for _ in conn.notifies(timeout=min(1.0, max(0.0, deadline - monotonic()))):
                pass
    except psycopg.OperationalError as exc:
        result = f"error:{type(exc).__name__}"
        witness.record(
            f"{prefix}-listen", "stand-in", "effect", "wait", t_start, monotonic(), result
        )
        return 3
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
