"""``diskledger members``, ``takeover`` and ``agent``: the real CLI, as processes, on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = (sys.executable, "-m", "diskledger.cli")
LEASE = {
    "DISKLEDGER_LEASE_TTL": "1.5",
    "DISKLEDGER_LEASE_RENEW": "0.2",
    "DISKLEDGER_LEASE_DEADLINE": "1.0",
    "DISKLEDGER_TAKEOVER_SCAN": "0.2",
}


def env(tmp_path: Path, ledger: str, host: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DISKLEDGER_LEDGER": ledger,
        "DISKLEDGER_ROOT": str(tmp_path / "shared"),
        "DISKLEDGER_BACKEND": "raw",
        "DISKLEDGER_HOST": host,
        "DISKLEDGER_FAULT": "",
        **LEASE,
        **extra,
    }


def cli(environ: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv], env=environ, capture_output=True, text=True, timeout=120, check=False
    )


def test_bad_member_commands_are_refused_with_one_line(
    tmp_path: Path, postgres_url: str, qemu_img: None
) -> None:
    pg = env(tmp_path, postgres_url, "host-a")
    usage = cli(pg, "takeover", "--confirm-down")
    assert usage.returncode == 2 and "needs --member" in usage.stderr
    unknown = cli(pg, "takeover", "--member", "host-z/nobody", "--json")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        "diskledger: error: no member 'host-z/nobody' (see `diskledger members`)"
    ]
    sqlite = env(tmp_path, f"sqlite:///{tmp_path / 'ledger.db'}", "host-a")
    for argv in (("takeover",), ("agent",)):
        done = cli(sqlite, *argv)
        assert done.returncode == 1, argv
        assert len(done.stderr.strip().splitlines()) == 1 and "members" in done.stderr
    # Nothing was recorded by the refusals.
    listed = json.loads(cli(pg, "members", "--json").stdout)
    assert listed == {"members": []}


def test_an_agent_takes_over_a_killed_hosts_operation_and_leaves_on_sigterm(
    tmp_path: Path, postgres_url: str, qemu_img: None
) -> None:
    victim = env(tmp_path, postgres_url, "host-b", DISKLEDGER_FAULT="create@mid-effect")
    killed = cli(victim, "disk", "create", "vm-1/root", "--blank", "--size", "1M")
    assert killed.returncode == -signal.SIGKILL
    agent = subprocess.Popen(
        [*CLI, "agent", "--json"],
        env=env(tmp_path, postgres_url, "host-a"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        line = agent.stdout.readline()  # the first pass that settled something
        settled = json.loads(line)
        assert [o["op"] for o in settled["rolled_back"]] == ["create"]
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    members = json.loads(cli(env(tmp_path, postgres_url, "host-c"), "members", "--json").stdout)
    states = {m["host"]: m["state"] for m in members["members"]}
    assert states == {"host-b": "fenced", "host-a": "left"}
    history = json.loads(cli(env(tmp_path, postgres_url, "host-c"), "history", "--json").stdout)
    types = [e["type"] for e in history]
    assert types.index("member.fenced") < types.index("disk.create.taken-over")
    human = cli(env(tmp_path, postgres_url, "host-c"), "members")
    assert human.returncode == 0 and "fenced" in human.stdout


@pytest.mark.parametrize("confirm", [False, True])
def test_takeover_of_an_in_place_operation_needs_an_operators_word(
    tmp_path: Path, postgres_url: str, qemu_img: None, confirm: bool
) -> None:
    host_a = env(tmp_path, postgres_url, "host-a")
    assert cli(host_a, "disk", "create", "vm-2/root", "--blank", "--size", "1M").returncode == 0
    victim = env(tmp_path, postgres_url, "host-b", DISKLEDGER_FAULT="resize@mid-effect")
    assert cli(victim, "disk", "resize", "vm-2/root", "2M").returncode == -signal.SIGKILL
    member = next(
        m["member"]
        for m in json.loads(cli(host_a, "members", "--json").stdout)["members"]
        if m["host"] == "host-b"
    )
    argv = ["takeover", "--member", member, "--json"] + (["--confirm-down"] if confirm else [])
    deadline = time.monotonic() + 30
    while True:
        # Each run is a new taker: it watches the lapsed lease stand still for a whole lease
        # before it acts, unless the operator's word lets it act at once.
        done = cli(host_a, *argv)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        if report["outcomes"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    (outcome,) = report["outcomes"]
    assert outcome["decision"] == ("roll-back" if confirm else "needs-operator")
