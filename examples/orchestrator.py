"""An orchestrator's loop around diskledger: create disks, survive a crash, read the trail.

Run it with a scratch directory (it makes ``<dir>/root`` and ``<dir>/cirros.qcow2``)::

    python examples/orchestrator.py /tmp/scratch

What an orchestrator copies from here:

- every request carries an explicit ``op_id`` (its idempotency key): asking again with the same
  id returns the first answer and records nothing, so a retry after a timeout or a crash is safe;
- a crash between intent and outcome is settled by ``Engine.recover`` (``Engine.open`` runs it
  too), which finishes or undoes the operation from what storage shows;
- ``Engine.history`` is the audit trail: an intent and an outcome for every operation.

The crash is real: one create runs in a child process that the fault point ``DISKLEDGER_FAULT``
SIGKILLs, as the OOM killer or a power cut would (docs/recovery.md, ``diskledger.faults``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from diskledger import Config, Conflict, DiskLedgerError, DiskNotFound, Engine

BACKEND = "qcow2"


def open_engine(scratch: Path, *, recover: bool = True) -> Engine:
    # An explicit Config: nothing read from DISKLEDGER_* variables, the ledger a SQLite file
    # under the root. ``recover=False`` leaves pending operations for us to recover explicitly.
    config = Config.load(root=scratch / "root", backend=BACKEND, recover=recover, environ={})
    return Engine.open(config)


def child(scratch: Path, disk: str, op_id: str) -> None:
    """The worker the parent crashes: one create, killed by the armed fault point."""
    with open_engine(scratch, recover=False) as engine:
        engine.create(disk, template="cirros", op_id=op_id)


def crash_one_create(scratch: Path, disk: str, op_id: str, point: str) -> None:
    # DISKLEDGER_FAULT is read when diskledger is imported: arm it in the child's environment.
    env = {**os.environ, "DISKLEDGER_FAULT": f"create@{point}:kill"}
    argv = [sys.executable, __file__, str(scratch), "--child", disk, op_id]
    status = subprocess.run(argv, env=env, check=False).returncode
    assert status == -signal.SIGKILL, f"the child should have been killed, exited {status}"
    print(f"crashed: create {disk} (op {op_id}) killed at {point}")


def main(scratch: Path) -> int:
    scratch.mkdir(parents=True, exist_ok=True)
    image = scratch / "cirros.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)

    with open_engine(scratch) as engine:
        # Many orchestrator workers may ask at once; the template is fetched exactly once.
        template = engine.ensure_template("cirros", image, "qcow2")
        print(f"template: {template.template} {template.virtual_size} bytes")

        first = engine.create("vm-1/root", template="cirros", op_id="op-create-vm-1")
        again = engine.create("vm-1/root", template="cirros", op_id="op-create-vm-1")
        # The repeat is answered from the ledger: same disk, same version, nothing recorded.
        assert again.version == first.version
        print(f"created: {first.disk} {first.size} bytes (repeat: same answer)")
        try:  # the same key for another request is refused, never silently reused
            engine.create("vm-9/root", size="1G", op_id="op-create-vm-1")
        except Conflict as exc:
            print(f"refused: {exc}")

    # Two crashes in a child process: once the disk is published but its outcome not recorded
    # (after-effect), once half-way through the copy (mid-effect).
    crash_one_create(scratch, "vm-2/root", "op-create-vm-2", "after-effect")
    crash_one_create(scratch, "vm-3/root", "op-create-vm-3", "mid-effect")

    with open_engine(scratch, recover=False) as engine:
        report = engine.recover()  # the child is dead: its operations are ours to settle
        for outcome in report.rolled_forward + report.rolled_back:
            print(f"recovered: {outcome.op} {outcome.op_id} -> {outcome.decision}")

        # Retry with the same op id. Rolled forward: the answer is the recovered disk.
        disk = engine.create("vm-2/root", template="cirros", op_id="op-create-vm-2")
        print(f"retried: op-create-vm-2 -> {disk.disk} {disk.state.value}")
        # Rolled back: the id names an operation that failed, and is refused (a Conflict: an id
        # is never reused for a second attempt); retry under a new id.
        try:
            engine.create("vm-3/root", template="cirros", op_id="op-create-vm-3")
        except Conflict as exc:
            print(f"retried: op-create-vm-3 -> refused, {type(exc).__name__}: {exc}")
            disk = engine.create("vm-3/root", template="cirros", op_id="op-create-vm-3b")
            print(f"retried: op-create-vm-3b -> {disk.disk} {disk.state.value}")

        # The audit trail: every operation's intent and outcome, with who and why.
        for name in ("vm-1/root", "vm-2/root", "vm-3/root"):
            print(f"history {name}:")
            for event in engine.history(name):
                decision = event.data.get("recovery", {}).get("decision")
                why = f" (recovery: {decision})" if decision else ""
                print(f"  {event.version} {event.type} op={event.metadata.op_id}{why}")
        try:
            engine.history("vm-404/root")
        except DiskNotFound as exc:
            print(f"not found: {exc}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[2] == "--child":
        child(Path(sys.argv[1]), sys.argv[3], sys.argv[4])
        sys.exit(0)
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} SCRATCH_DIR")
    try:
        sys.exit(main(Path(sys.argv[1])))
    except DiskLedgerError as exc:  # every error an embedder may catch, in one tree
        sys.exit(f"orchestrator: {type(exc).__name__}: {exc}")
