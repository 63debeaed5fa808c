"""The power-loss rig: capture a workload's every write in the test guest with dm-log-writes,
then check the crash states the log allows on this machine.

Capture (``capture``): in the guest, one disk is cut in two with dm-linear -- the data device
(``DATA_BYTES``) and the log device after it -- and ``log-writes`` joins them; ext4 is made on
it and mounted at ``world.MOUNT`` with ``noauto_da_alloc`` (ext4 then gives no grace to a file
renamed over another without its fsync: what the code does not sync, a cut loses), and
``workload.py`` runs there. The guest disk is a file here opened with ``cache=none``, so once
the guest removed the device the log is in that file, at ``DATA_BYTES``.

Check (``check``): every crash state goes to one of ``workers`` processes (``check.py``, each in
its own mount namespace), which replay, mount, recover, verify and compare.

    python -m tests.powerloss.rig [--ops N] [--states N] [--subsets N] [--seed S]
        [--kills N] [--no-replay] [--control] [--keep DIR] [--results FILE]

prints one line per failing state or kill and a summary of each part; ``make powerloss`` runs
both parts in full. ``--keep DIR`` leaves the capture there, and checks it again when run again.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.powerloss.kills import kill_rounds
from tests.powerloss.logwrites import CrashState, Log, crash_states, read_log
from tests.powerloss.world import MOUNT
from tests.support.guest import Guest, GuestDisk, build, python_payload

__all__ = ["Capture", "Summary", "capture", "check", "main"]

HERE = Path(__file__).parent
DATA_BYTES = 256 << 20
LOG_BYTES = 3 << 30
DM = "pl"
IN_GUEST = "/tmp/powerloss"


@dataclass
class Capture:
    log: Log
    records: list[dict[str, Any]]
    """``records[n]``: call ``n`` (0: the world before any call)."""
    seconds: float
    guest_output: str


@dataclass
class Summary:
    states: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    rolled_forward: int = 0
    rolled_back: int = 0
    ledger_tails: int = 0
    """States whose ledger ended in a cut-short append, which recovery reported dropping."""
    by_commands: int = 0
    """States recovered and verified by the ``diskledger recover`` and ``verify`` commands."""
    seconds: float = 0.0
    lost_acknowledged: int = 0
    """States where a call that had returned is missing from the ledger or the world."""

    def to_json(self) -> dict[str, Any]:
        return {
            "states": self.states,
            "failed": len(self.failed),
            "lost_acknowledged": self.lost_acknowledged,
            "rolled_forward": self.rolled_forward,
            "rolled_back": self.rolled_back,
            "ledger_tails": self.ledger_tails,
            "by_commands": self.by_commands,
            "seconds": round(self.seconds, 1),
        }


def capture(
    guest: Guest, device: str, disk_file: Path, *, seed: int, ops: int, control: bool = False
) -> Capture:
    """Run the workload in ``guest`` on its disk ``device`` (the guest's name for this machine's
    ``disk_file``), logging every write; the log and what each call returned."""
    files = {
        name: base64.b64encode((HERE / name).read_bytes()).decode()
        for name in ("workload.py", "world.py")
    }
    data_sectors = DATA_BYTES // 512
    log_sectors = LOG_BYTES // 512
    unsafe = " --unsafe-no-fsync" if control else ""
    script = f"""set -e
mkdir -p {IN_GUEST} {MOUNT}
{"".join(f"echo {body} | base64 -d > {IN_GUEST}/{name}{chr(10)}" for name, body in files.items())}
modprobe dm_log_writes
dd if=/dev/zero of={device} bs=1M count=1 seek={DATA_BYTES >> 20} conv=fsync status=none
dmsetup create {DM}-data --table "0 {data_sectors} linear {device} 0"
dmsetup create {DM}-log --table "0 {log_sectors} linear {device} {data_sectors}"
dmsetup mknodes  # no udev in the guest
dmsetup create {DM} --table "0 {data_sectors} log-writes /dev/mapper/{DM}-data /dev/mapper/{DM}-log"
dmsetup mknodes
mkfs.ext4 -q -E nodiscard /dev/mapper/{DM}
dmsetup message {DM} 0 mark mkfs
mount -o noauto_da_alloc /dev/mapper/{DM} {MOUNT}
set +e
cd {IN_GUEST} && PYTHONPATH=/payload/src:/payload/site:{IN_GUEST} \\
    python3 workload.py {seed} {ops} {DM}{unsafe} 2>{IN_GUEST}/workload.err
rc=$?
umount {MOUNT}
dmsetup remove {DM}; dmsetup remove {DM}-log; dmsetup remove {DM}-data
tail -30 {IN_GUEST}/workload.err >&2
exit $rc
"""
    console_before = guest.console_log.stat().st_size
    started = time.monotonic()
    done = guest.run(script, timeout=3600)
    seconds = time.monotonic() - started
    lines = [json.loads(line) for line in done.output.splitlines() if line.startswith("{")]
    if done.rc != 0 or not lines or "done" not in lines[-1]:
        raise RuntimeError(
            f"the workload failed in the guest (rc {done.rc}):\n{done.output[-4000:]}"
        )
    if not lines[-1]["consistent"]:
        # The worlds it recorded call by call would be wrong expectations.
        raise RuntimeError("the workload's world after its last call is not what it reads back")
    records = [r for r in lines if "world" in r and "n" in r]
    records.sort(key=lambda r: r["n"])
    log = read_log(str(disk_file), DATA_BYTES)
    last = f"ack-{records[-1]['n']}" if records[-1]["n"] else "start"
    if not {"start", last} <= log.marks().keys():
        # dm-log-writes stops logging at its first failed write to the log device, and the run
        # goes on: the log then holds no record of it (seen once, the guest's writes to this
        # machine's file failing with EIO while nothing on the host logged an error).
        with guest.console_log.open("rb") as console:
            console.seek(console_before)
            said = console.read().decode(errors="replace").splitlines()
        errors = [line for line in said if "I/O error" in line or "log-writes" in line]
        raise RuntimeError(
            f"the run's write log is incomplete (no mark 'start' or '{last}' in "
            f"{len(log.entries)} entries); the guest's kernel logged {len(errors)} I/O "
            "errors, first: "
            f"{errors[:3]}"
        )
    return Capture(log, records, seconds, done.output)


def release(disk_file: Path) -> None:
    """Leave the guest disk as it was found: all holes where the rig wrote."""
    subprocess.run(
        ["fallocate", "-p", "-o", "0", "-l", str(DATA_BYTES + LOG_BYTES), str(disk_file)],
        check=True,
    )


def states_of(cap: Capture, *, limit: int | None, subsets: int, seed: int) -> list[CrashState]:
    start = cap.log.marks()["start"]
    every = list(
        crash_states(cap.log, start=start, subsets_per_group=subsets, rng=random.Random(seed))
    )
    if limit is not None and len(every) > limit:
        every = random.Random(seed).sample(every, limit)
    return sorted(every, key=lambda s: (s.barrier, s.extra))


def check(
    cap: Capture,
    states: Sequence[CrashState],
    *,
    workers: int = 2,
    python: str = sys.executable,
    results: Path | None = None,
    commands_every: int = 20,
) -> Summary:
    """Check ``states`` on ``workers`` processes; one state in ``commands_every`` of each is
    recovered and verified by the ``diskledger`` commands, the rest in the checker's process
    (the same code, without two Python starts per state)."""
    started = time.monotonic()
    summary = Summary()
    with tempfile.TemporaryDirectory(prefix="pl-rig-", dir="/var/tmp") as scratch:
        processes = []
        for worker in range(workers):
            share = list(states[worker::workers])
            if not share:
                continue
            job = Path(scratch) / f"job-{worker}.json"
            job.write_text(
                json.dumps(
                    {
                        "log": cap.log.path,
                        "offset": cap.log.offset,
                        "size": DATA_BYTES,
                        "scratch": scratch,
                        "states": [
                            {"barrier": s.barrier, "extra": list(s.extra), "label": s.label}
                            for s in share
                        ],
                        "records": cap.records,
                        "commands_every": commands_every,
                    }
                )
            )
            out = Path(scratch) / f"results-{worker}.jsonl"
            with out.open("w") as sink:
                argv = ["unshare", "-m", "--propagation", "private", python, "-m",
                        "tests.powerloss.check", str(job)]  # fmt: skip
                processes.append((subprocess.Popen(argv, stdout=sink, cwd=HERE.parent.parent), out))
        for process, out in processes:
            if process.wait() != 0:
                raise RuntimeError(f"a checker exited with {process.returncode}")
            for line in out.read_text().splitlines():
                result = json.loads(line)
                if results is not None:
                    with results.open("a") as sink:
                        sink.write(line + "\n")
                summary.states += 1
                recovered = result.get("recovered", {})
                summary.rolled_forward += recovered.get("forward", 0)
                summary.rolled_back += recovered.get("back", 0)
                summary.ledger_tails += recovered.get("ledger_tails", 0)
                summary.by_commands += bool(result.get("commands"))
                if not result["ok"]:
                    summary.failed.append(result)
                    if any(
                        "returned, ledger" in p or "matches no call" in p
                        for p in result["problems"]
                    ):
                        summary.lost_acknowledged += 1
    summary.seconds = time.monotonic() - started
    return summary


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.powerloss.rig")
    parser.add_argument("--ops", type=int, default=60)
    parser.add_argument("--states", type=int, default=None, help="check at most this many")
    parser.add_argument("--subsets", type=int, default=2, help="reordered states per flush group")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kills", type=int, default=0, help="then kill the guest this many times")
    parser.add_argument("--no-replay", action="store_true", help="only the guest kills")
    parser.add_argument("--control", action="store_true", help="the workload skips every fsync")
    parser.add_argument("--results", type=Path, help="append each state's result here (JSONL)")
    parser.add_argument(
        "--keep", type=Path, help="work in this directory and leave the capture there; "
        "when it holds one already, check that again instead of running the workload",
    )  # fmt: skip
    args = parser.parse_args(argv)
    failed = 0
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep
        else:
            work = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="pl-", dir="/var/tmp"))
            )
        payload = work / "payload"
        if not args.no_replay:
            failed += replay_states(args, work, payload)
        if args.kills:
            if not payload.exists():
                python_payload(HERE.parent.parent, payload)
            kills = kill_rounds(build(), work, payload, kills=args.kills, seed=args.seed,
                                control=args.control)  # fmt: skip
            for bad in kills.failed:
                print(f"FAILED kill round {bad['round']}: {bad['problems'][0][:400]}")
            print(json.dumps({"seed": args.seed, "control": args.control, **kills.to_json()}))
            failed += len(kills.failed)
    return 1 if failed and not args.control else 0


def replay_states(args: argparse.Namespace, work: Path, payload: Path) -> int:
    disk, kept = work / "pl.raw", work / "records.json"
    if kept.exists():
        cap = Capture(read_log(str(disk), DATA_BYTES), json.loads(kept.read_text()), 0.0, "")
    else:
        with disk.open("wb") as sparse:
            sparse.truncate(DATA_BYTES + LOG_BYTES)
        python_payload(HERE.parent.parent, payload)
        with Guest(build(), disks=[GuestDisk(disk, "pl")], payload=payload) as guest:
            cap = capture(guest, "/dev/disk/by-serial/pl", disk, seed=args.seed,
                          ops=args.ops, control=args.control)  # fmt: skip
        if args.keep is not None:
            kept.write_text(json.dumps(cap.records))
    states = states_of(cap, limit=args.states, subsets=args.subsets, seed=args.seed)
    print(
        f"seed {args.seed}: {len(cap.records) - 1} calls in {cap.seconds:.0f} s in the guest, "
        f"{len(cap.log.entries)} log entries, {len(states)} crash states",
        flush=True,
    )
    summary = check(cap, states, workers=args.workers, results=args.results)
    for failed in summary.failed:
        print(f"FAILED {failed['state']} (acked {failed['acked']}): {failed['problems'][0][:400]}")
    print(json.dumps({"seed": args.seed, "control": args.control, **summary.to_json()}))
    return len(summary.failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
