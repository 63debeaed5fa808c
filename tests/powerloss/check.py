"""Check crash states of a captured workload: for each, replay the log onto a fresh image, mount
it (the kernel replays ext4's journal), run diskledger's recovery and verify on it as an
operator would after the power came back, and compare what a caller then sees with what the
workload's returned calls promise.

Run by ``rig.py``, one process per worker, each in a private mount namespace (``unshare -m``),
so that every worker mounts its states at ``world.MOUNT``, where the ledger says the files are:

    unshare -m --propagation private python -m tests.powerloss.check JOB.json

``JOB.json``: the log (path, offset), the data device's size, the states to check, and the
workload's records. One JSON line per state on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.powerloss.logwrites import CrashState, Log, read_log
from tests.powerloss.world import (
    BACKENDS,
    HOST,
    MOUNT,
    open_engines,
    recover_and_judge,
    root_of,
)

__all__ = ["acknowledged", "check_state", "main"]


def acknowledged(log: Log, state: CrashState) -> tuple[int, int]:
    """Which calls the state must show, and which it may: ``(lo, hi)``.

    A call returns once its writes are durable -- after the flush or FUA write it waited for --
    and its ``ack-N`` mark is logged after that. So each mark before the first barrier after
    ``state.barrier`` belongs to a call whose durable writes all lie at or before it: calls up
    to ``lo`` must be there. A call whose mark comes later may have any of its writes in the
    state up to its last entry: up to ``hi`` (the call running at that entry) may be."""
    lo = hi = 0
    last = max((state.barrier, *state.extra))
    barrier_seen = False
    for entry in log.entries:
        if entry.index > state.barrier and entry.is_barrier:
            barrier_seen = True
        if entry.mark and entry.mark.startswith("ack-"):
            n = int(entry.mark[4:])
            if not barrier_seen:
                lo = max(lo, n)
            if entry.index < last:
                hi = max(hi, n)
        if entry.index > last and barrier_seen:
            break
    return lo, max(lo, hi) + 1


class Replayer:
    """Builds crash-state images in barrier order, applying each log entry once."""

    def __init__(self, log: Log, size: int, scratch: str) -> None:
        self.log = log
        self.current = os.path.join(scratch, "current.img")
        self.state = os.path.join(scratch, "state.img")
        with open(self.current, "wb") as image:
            image.truncate(size)
        self.applied = -1

    def image(self, state: CrashState) -> str:
        if state.barrier < self.applied:
            raise ValueError("states must come in barrier order")
        fd = os.open(self.current, os.O_RDWR)
        try:
            self.log.apply(fd, self.log.entries[self.applied + 1 : state.barrier + 1])
        finally:
            os.close(fd)
        self.applied = state.barrier
        subprocess.run(["cp", "--sparse=always", self.current, self.state], check=True)
        if state.extra:
            fd = os.open(self.state, os.O_RDWR)
            try:
                self.log.apply(fd, [self.log.entries[i] for i in state.extra])
            finally:
                os.close(fd)
        return self.state


def check_state(
    log: Log,
    replayer: Replayer,
    state: CrashState,
    records: Sequence[dict[str, Any]],
    *,
    commands: bool = False,
) -> dict[str, Any]:
    """``commands``: recover and verify with the operator's commands (``diskledger recover``,
    ``verify``, each a process) before the judge looks, instead of in this process."""
    started = time.monotonic()
    acked, running = acknowledged(log, state)
    result: dict[str, Any] = {"state": state.name, "barrier": state.barrier, "acked": acked}
    image = replayer.image(state)
    mounted = subprocess.run(
        ["mount", "-o", "loop", image, MOUNT], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        return {**result, "ok": False, "problems": [f"mount: {mounted.stderr.strip()}"]}
    try:
        if not os.path.isdir(root_of(BACKENDS[0])):
            # Cut before the workload made its roots: nothing was promised yet.
            problems = [f"{acked} calls had returned, but no root exists"] if acked else []
            result.update(matched=0, problems=problems)
        else:
            cli_problems, by_cli = _operator_commands() if commands else ([], {})
            engines = open_engines()
            try:
                result.update(recover_and_judge(engines, records, acked, running))
                result["problems"] = cli_problems + result["problems"]
                for key, count in by_cli.items():
                    result["recovered"][key] += count
                result["commands"] = commands
            finally:
                for engine in engines.values():
                    engine.close()
    except Exception:
        result["problems"] = [traceback.format_exc(limit=6)]
    finally:
        result.setdefault("problems", []).extend(_unmount())
    result.update(ok=not result["problems"], seconds=round(time.monotonic() - started, 2))
    return result


def _unmount() -> list[str]:
    """Unmount the state; a file diskledger left open there is a problem (a leaked descriptor
    in a long-running engine), said with the files, and the mount is let go lazily so that the
    next state still mounts."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(MOUNT + "/"):
                held.append(target)
    done = subprocess.run(["umount", MOUNT], capture_output=True, text=True, check=False)
    if done.returncode == 0 and not held:
        return []
    subprocess.run(["umount", "-l", MOUNT], capture_output=True, check=False)
    return [f"files left open on the file system after the engines closed: {held or done.stderr}"]


def _operator_commands() -> tuple[list[str], dict[str, int]]:
    """``diskledger recover --json`` then ``diskledger verify --json`` on each root, as the
    operator runs them after the power came back: problems, and what recover reported."""
    problems: list[str] = []
    recovered = {"forward": 0, "back": 0, "ledger_tails": 0}
    for backend in BACKENDS:
        environ = {
            **os.environ,
            "DISKLEDGER_ROOT": root_of(backend),
            "DISKLEDGER_BACKEND": backend,
            "DISKLEDGER_HOST": HOST,
        }
        for command in ("recover", "verify"):
            done = subprocess.run(
                [sys.executable, "-m", "diskledger.cli", command, "--json"],
                env=environ, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                problems.append(f"{backend}: diskledger {command} exited {done.returncode}: "
                                f"{(done.stderr or done.stdout).strip()[:400]}")  # fmt: skip
                continue
            report = json.loads(done.stdout)
            if command == "recover":
                recovered["ledger_tails"] += report.get("ledger_tail") is not None
                recovered["forward"] += len(report["rolled_forward"])
                recovered["back"] += len(report["rolled_back"])
                if report["needs_operator"] or report["in_flight"]:
                    problems.append(f"{backend}: diskledger recover left {report}")
    return problems, recovered


def main(argv: Sequence[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    log = read_log(job["log"], job["offset"])
    states = [CrashState(s["barrier"], tuple(s["extra"]), s["label"]) for s in job["states"]]
    os.makedirs(MOUNT, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="pl-check-", dir=job.get("scratch"))
    try:
        replayer = Replayer(log, job["size"], scratch)
        every = job.get("commands_every", 0)
        for n, state in enumerate(states):
            commands = bool(every) and n % every == 0
            result = check_state(log, replayer, state, job["records"], commands=commands)
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
