"""The cruder power-loss check: SIGKILL the whole guest (its QEMU) while the workload runs, boot
it again, let its kernel replay the journal, recover, and judge -- many times over one file
system that carries on from each crash.

Each round is one boot: mount the disk (``world.MOUNT``), then ``workload.py --judge``
recovers and judges what the last round left against the calls it saw return (their JSON lines
reached this machine before the kill), and goes on with new calls until this machine kills the
guest at a random moment.

What it proves and what it cannot (measured, see docs/recovery.md): the guest's page cache and
the requests QEMU had not yet handed to this machine's kernel are lost; what QEMU had written
(``cache=none``: straight to the file) is not. So it tests the chain application -> file system
-> virtio flush, never a device that loses acknowledged writes from its own cache: the replayed
crash states of ``rig.py`` are for that.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.powerloss.world import MOUNT
from tests.support.guest import Guest, GuestDisk, GuestError, GuestImage

__all__ = ["KillSummary", "kill_rounds", "records_of"]

HERE = Path(__file__).parent
IN_GUEST = "/tmp/powerloss"
DISK_BYTES = 512 << 20


@dataclass
class KillSummary:
    kills: int = 0
    judged: int = 0
    calls_returned: int = 0
    rolled_forward: int = 0
    rolled_back: int = 0
    ledger_tails: int = 0
    in_flight_kept: int = 0
    """Kills where the call running at the cut turned out done (its effect and outcome there)."""
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "kills": self.kills,
            "judged": self.judged,
            "failed": len(self.failed),
            "calls_returned": self.calls_returned,
            "rolled_forward": self.rolled_forward,
            "rolled_back": self.rolled_back,
            "ledger_tails": self.ledger_tails,
            "in_flight_kept": self.in_flight_kept,
            "seconds": round(self.seconds, 1),
        }


def records_of(output: str) -> list[dict[str, Any]]:
    """The calls a killed workload's output shows: each returned one with its world, and the
    one it was in (``world`` None), if any."""
    records: list[dict[str, Any]] = []
    calling = None
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line the kill cut
        if "calling" in item:
            calling = item
        elif "n" in item and "world" in item:
            records.append(item)
            calling = None
    if calling is not None and records:
        records.append({**calling, "n": calling["calling"], "world": None, "returned": None})
    return records


def kill_rounds(
    image: GuestImage,
    work: Path,
    payload: Path,
    *,
    kills: int,
    seed: int,
    control: bool = False,
    window: tuple[float, float] = (1.0, 12.0),
) -> KillSummary:
    """``kills`` rounds of workload-then-SIGKILL on one disk, each judged at the next boot."""
    started = time.monotonic()
    rng = random.Random(seed)
    summary = KillSummary()
    disk = work / "kills.raw"
    with disk.open("wb") as sparse:
        sparse.truncate(DISK_BYTES)
    files = "".join(
        f"echo {base64.b64encode((HERE / n).read_bytes()).decode()} | base64 -d > {IN_GUEST}/{n}\n"
        for n in ("workload.py", "world.py")
    )
    device = "/dev/disk/by-serial/pl"
    records: list[dict[str, Any]] = []
    for round_ in range(kills + 1):
        with Guest(image, disks=[GuestDisk(disk, "pl")], payload=payload) as guest:
            prepare = f"set -e\nmkdir -p {IN_GUEST} {MOUNT}\n{files}"
            if round_ == 0:
                prepare += f"mkfs.ext4 -q -E nodiscard {device}\n"
            prepare += f"mount -o noauto_da_alloc {device} {MOUNT}\n"
            if records:
                # The judge needs every call's outcome but only the last worlds.
                slim = [{k: v for k, v in r.items() if k != "world"} for r in records[:-2]]
                encoded = base64.b64encode(json.dumps(slim + records[-2:]).encode()).decode()
                prepare += f"echo {encoded} | base64 -d > {IN_GUEST}/records.json\n"
            guest.run(prepare).check()
            last = round_ == kills
            judge = f" --judge={IN_GUEST}/records.json" if records else ""
            ops = 0 if last else 100000
            command = (
                f"cd {IN_GUEST} && PYTHONPATH=/payload/src:/payload/site:{IN_GUEST} python3 "
                f"workload.py {seed * 1000 + round_} {ops} - r{round_}"
                f"{' --unsafe-no-fsync' if control else ''}{judge} 2>{IN_GUEST}/workload.err"
                f"; tail -5 {IN_GUEST}/workload.err"
            )
            output = _run_and_kill(guest, command, None if last else rng.uniform(*window))
        if records:
            verdict = next(
                (json.loads(line) for line in output.splitlines() if '"judged"' in line), None
            )
            summary.judged += 1
            if verdict is None:
                summary.failed.append(
                    {"round": round_, "problems": [f"no verdict: {output[-800:]}"]}
                )
            else:
                summary.rolled_forward += verdict.get("recovered", {}).get("forward", 0)
                summary.rolled_back += verdict.get("recovered", {}).get("back", 0)
                summary.ledger_tails += verdict.get("recovered", {}).get("ledger_tails", 0)
                if records[-1]["world"] is None and verdict.get("matched") == len(records) - 1:
                    summary.in_flight_kept += 1
                if verdict["problems"]:
                    summary.failed.append({"round": round_, **verdict})
        if not last:
            summary.kills += 1
            records = records_of(output)
            summary.calls_returned += sum(1 for r in records[1:] if r["world"] is not None)
        print(
            f"[kills] round {round_}: {len(summary.failed)} failed so far, "
            f"{len(records) - 1} calls before this kill",
            file=sys.stderr,
            flush=True,
        )
    summary.seconds = time.monotonic() - started
    return summary


def _run_and_kill(guest: Guest, command: str, after: float | None) -> str:
    """Run ``command`` in ``guest``; with ``after``, kill the guest that many seconds after the
    workload's first call began (or after its verdict, when it judges first)."""
    if after is None:
        return guest.run(command, timeout=900).output
    outcome: dict[str, str] = {}

    def run() -> None:
        try:
            outcome["output"] = guest.run(command, timeout=900).output
        except GuestError as exc:
            outcome["output"] = exc.output

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while '"calling"' not in guest.output_so_far():
        if time.monotonic() > deadline or not thread.is_alive():
            break
        time.sleep(0.1)
    time.sleep(after)
    guest.kill()
    thread.join(30)
    return outcome.get("output", "")
