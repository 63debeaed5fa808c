"""Power loss: the rig's parts on their own, and a small sample of ``make powerloss``.

The sample captures a short workload in the session's guest (on ``pv1``, left as found), checks
a sample of its crash states and runs the control, whose skipped fsyncs must lose acknowledged
calls; and kills a guest of its own once. ``make powerloss`` runs the same at full size.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.powerloss.check import acknowledged
from tests.powerloss.kills import kill_rounds, records_of
from tests.powerloss.logwrites import (
    DISCARD,
    ENTRY,
    FLUSH,
    FUA,
    MAGIC,
    MARK,
    SUPER,
    CrashState,
    crash_states,
    read_log,
)
from tests.powerloss.rig import Capture, Summary, capture, check, release, states_of
from tests.powerloss.world import differences, touched
from tests.support.guest import Guest, build

SECTOR = 512


def write_log(path: Path, entries: list[tuple[int, int, int, bytes]]) -> None:
    """A dm-log-writes log as the kernel lays it out: ``(sector, nr_sectors, flags, data)``."""
    blocks = [SUPER.pack(MAGIC, 1, len(entries), SECTOR).ljust(SECTOR, b"\0")]
    for sector, nr_sectors, flags, data in entries:
        header = ENTRY.pack(sector, nr_sectors, flags, len(data))
        if flags & MARK:
            blocks.append((header + data).ljust(SECTOR, b"\0"))
        else:
            blocks.append(header.ljust(SECTOR, b"\0"))
            if not flags & DISCARD:
                blocks.append(data)
    path.write_bytes(b"junk before the log".ljust(SECTOR, b"\0") + b"".join(blocks))


def data(byte: int, sectors: int = 1) -> bytes:
    return bytes([byte]) * SECTOR * sectors


@pytest.fixture
def sample_log(tmp_path: Path) -> Path:
    path = tmp_path / "log"
    write_log(
        path,
        [
            (0, 2, 0, data(1, 2)),  # 0 a plain write
            (0, 0, FLUSH, b""),  # 1 flush
            (0, 0, MARK, b"start"),  # 2
            (4, 1, 0, data(2)),  # 3
            (5, 1, 0, data(3)),  # 4
            (6, 1, FUA, data(4)),  # 5 logged at completion: durable
            (0, 0, MARK, b"ack-1"),  # 6
            (7, 1, 0, data(5)),  # 7 plain writes are logged at the next flush
            (8, 1, 0, data(6)),  # 8
            (0, 0, FLUSH, b""),  # 9
            (2, 2, DISCARD, b""),  # 10
            (0, 0, MARK, b"ack-2"),  # 11
            (0, 0, FLUSH | FUA, b""),  # 12
        ],
    )
    return path


def test_the_log_reads_as_the_kernel_wrote_it(sample_log: Path, tmp_path: Path) -> None:
    log = read_log(str(sample_log), SECTOR)
    assert len(log.entries) == 13
    assert log.marks() == {"start": 2, "ack-1": 6, "ack-2": 11}
    assert [e.index for e in log.entries if e.is_barrier] == [1, 5, 9, 12]
    image = tmp_path / "image"
    image.write_bytes(bytes(16 * SECTOR))
    with image.open("r+b") as out:
        log.apply(out.fileno(), log.entries)
    sectors = [image.read_bytes()[i * SECTOR] for i in range(10)]
    assert sectors == [1, 1, 0, 0, 2, 3, 4, 5, 6, 0]  # the discard zeroed sectors 2-3


def test_a_log_that_is_not_whole_is_refused(sample_log: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a dm-log-writes log"):
        read_log(str(sample_log), 0)
    cut = tmp_path / "cut"
    cut.write_bytes(sample_log.read_bytes()[: SECTOR * 6])
    with pytest.raises(ValueError, match="cut short"):
        read_log(str(cut), SECTOR)


def test_crash_states_are_barriers_and_subsets_that_keep_fua_writes(sample_log: Path) -> None:
    log = read_log(str(sample_log), SECTOR)
    states = list(crash_states(log, start=0, subsets_per_group=50, rng=random.Random(1)))
    assert [s.barrier for s in states if not s.extra] == [1, 5, 9, 12]
    subsets = [s for s in states if s.extra]
    # After barrier 1 come plain writes 3, 4, 7 and 8 and the FUA write 5 before the next
    # flush; after 5, plain 7 and 8; after 9 only a discard.
    assert {s.barrier for s in subsets} == {1, 5}
    for state in subsets:
        if state.barrier == 1:
            assert 5 in state.extra, state  # the group's FUA write stays
        plain = set(state.extra) - {5}
        assert plain and plain < ({3, 4, 7, 8} if state.barrier == 1 else {7, 8}), state


def test_what_a_state_must_and_may_show(sample_log: Path) -> None:
    log = read_log(str(sample_log), SECTOR)
    # Cut at the FUA (5): call 1's mark comes after it, before the next barrier (9): it is in.
    assert acknowledged(log, CrashState(5)) == (1, 2)
    # Cut at the flush before it (1): the FUA write, which call 1 waited for, may be missing.
    assert acknowledged(log, CrashState(1)) == (0, 1)
    assert acknowledged(log, CrashState(9)) == (2, 3)


def test_worlds_differ_by_path_and_a_running_call_is_not_held_to_its_result() -> None:
    before = {"raw": {"disks": {"a": {"size": 1}}, "templates": []}, "exports": {}}
    after = {"raw": {"disks": {"a": {"size": 2}, "b": {"size": 1}}, "templates": []}, "exports": {}}
    assert differences(before, after) == [
        "raw/disks/a/size: 2, expected 1",
        "raw/disks/b: unexpected {'size': 1}",
    ]
    running = {"backend": "raw", "op": "create", "args": ["b"]}
    assert differences(before, after, ignore=touched(running)) == [
        "raw/disks/a/size: 2, expected 1"
    ]


def test_a_killed_workloads_output_gives_its_returned_calls_and_the_running_one() -> None:
    output = "\n".join(
        [
            '{"n": 0, "op": null, "returned": true, "world": {}}',
            '{"calling": 1, "backend": "raw", "op": "create", "args": ["a"], "op_id": "x-1"}',
            '{"n": 1, "backend": "raw", "op": "create", "args": ["a"], "returned": true, "world": {"w": 1}}',
            '{"calling": 2, "backend": "raw", "op": "delete", "args": ["a"], "op_id": "x-2"}',
            '{"n": 2, "backend": "ra',  # the kill cut this line
        ]
    )
    records = records_of(output)
    assert [r["n"] for r in records] == [0, 1, 2]
    assert records[2]["world"] is None and records[2]["op"] == "delete"


# -- in the guest ---------------------------------------------------------------------------------


@pytest.fixture
def scratch_disk(guest: Guest) -> Iterator[Path]:
    """``pv1``'s file here; every byte the rig wrote is a hole again afterwards."""
    path = next(d.path for d in guest.disks if d.serial == "pv1")
    try:
        yield path
    finally:
        release(path)


def test_replayed_power_cuts_lose_no_acknowledged_call(guest: Guest, scratch_disk: Path) -> None:
    cap = capture(guest, "/dev/disk/by-serial/pv1", scratch_disk, seed=7, ops=10)
    summary = _check_sample(cap, limit=150)
    print(f"power loss sample: {summary.to_json()}")
    assert summary.states >= 100
    assert not summary.failed, "\n".join(
        f"{f['state']} (acked {f['acked']}): {f['problems']}" for f in summary.failed[:5]
    )
    assert summary.rolled_forward and summary.rolled_back, (
        "the cuts fell between intents and outcomes"
    )


def test_the_control_without_fsync_loses_acknowledged_calls(
    guest: Guest, scratch_disk: Path
) -> None:
    """Else the rig proves nothing: the same workload with every fsync skipped."""
    cap = capture(guest, "/dev/disk/by-serial/pv1", scratch_disk, seed=7, ops=5, control=True)
    summary = _check_sample(cap, limit=40)
    print(f"power loss control: {summary.to_json()}")
    assert summary.lost_acknowledged > 0


def _check_sample(cap: Capture, limit: int) -> Summary:
    # One state in 50 by the diskledger commands (four processes each): a few in the sample.
    states = states_of(cap, limit=limit, subsets=2, seed=7)
    return check(cap, states, workers=2, commands_every=50)


def test_guest_kills_lose_no_acknowledged_call(tmp_path: Path, guest: Guest) -> None:
    """One SIGKILL of a guest of its own (``guest`` only for its payload and the skip rules),
    judged at its next boot."""
    payload = guest.payload
    assert payload is not None
    summary = kill_rounds(build(), tmp_path, payload, kills=1, seed=7)
    print(f"guest kills sample: {summary.to_json()}")
    assert summary.judged == 1 and summary.calls_returned > 0
    assert not summary.failed, summary.failed
