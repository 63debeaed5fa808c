"""The lvm backend against a real volume group, inside the test guest (tests/support/guest.py).

The whole engine runs in the guest, so the backend's code path is the real one: its lvcreate,
lvrename, lvextend, lvremove and qemu-img calls go through the runner to real device-mapper
volumes. ``lvm_inguest.py`` (the shipped contract suite, volume_clear read back from the
physical volume, bad input) is copied in and run by one pytest process per variant, thick and
sparse; its JUnit report comes back, and each failing case fails this test with its message.

``lvm_faults.py`` is the crash fault matrix (every operation killed at every fault point inside
the guest, then recovered and checked), one Python process per variant: a covering sample by
default, every case with ``DISKLEDGER_LVM_FAULTS=all`` (``make guest-faults``).

The two variants run side by side, each on a group of its own (thick: ``dlvg`` on pv0; sparse:
``dlthin`` on pv2, in a thin pool made for each run): the guest has two vCPUs, one host thread
each, and everything here is CPU-bound under emulation, so the pair takes about as long as the
slower of the two instead of their sum. Encrypted disks, thick alone in ``make test``, run as
two halves side by side, one on each group.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from diskledger.backends.lvm import LUKS_TAG, mapping
from diskledger.backends.lvm.crypt import header_of, header_size, header_tag
from tests.support.guest import Guest

POOL = "pool"
GROUPS = {"dlvg": "/dev/disk/by-serial/pv0", "dlthin": "/dev/disk/by-serial/pv2"}
"""Two volume groups, each on a disk of its own, so that two in-guest runs can go at once (an
in-guest module empties its whole group after each test)."""
THICK = "DISKLEDGER_LVM_VG=dlvg"
SPARSE = f"DISKLEDGER_LVM_VG=dlthin DISKLEDGER_LVM_SPARSE={POOL}"
VARIANTS = {"thick": THICK, "sparse": SPARSE}
"""A run's settings on each variant: thick on ``dlvg``; sparse in a 1 GiB thin pool in
``dlthin``, made for each run that uses it and removed after."""
IN_GUEST = Path(__file__).with_name("lvm_inguest.py")
FAULTS = Path(__file__).with_name("lvm_faults.py")
CRYPT = Path(__file__).with_name("lvm_crypt_inguest.py")
BLOCKIO = Path(__file__).with_name("blockio.py")
WORK = "/tmp/lvm-tests"


@pytest.fixture(scope="module")
def volume_groups(guest: Guest) -> Iterator[None]:
    """``GROUPS`` (1 MiB extents: the contract suite's disks are 1-3 MiB), and the in-guest
    test modules. pv0 and pv2 are left as they were found, without even a PV label."""
    module = base64.b64encode(IN_GUEST.read_bytes()).decode()
    faults = base64.b64encode(FAULTS.read_bytes()).decode()
    crypt = base64.b64encode(CRYPT.read_bytes()).decode()
    blockio = base64.b64encode(BLOCKIO.read_bytes()).decode()
    groups = "".join(
        f"pvcreate -q {pv}; vgcreate -q -s 1m {vg} {pv}\n" for vg, pv in GROUPS.items()
    )
    guest.run(
        f"set -e; mkdir -p {WORK}; echo {module} | base64 -d > {WORK}/test_lvm_inguest.py\n"
        f"echo {faults} | base64 -d > {WORK}/lvm_faults.py\n"
        f"echo {crypt} | base64 -d > {WORK}/test_lvm_crypt_inguest.py\n"
        f"echo {blockio} | base64 -d > {WORK}/blockio.py\n{groups}"
    ).check()
    try:
        yield
    finally:
        guest.run(
            "".join(
                f"vgremove -q -f {vg}; pvremove -q -ff -y {pv}; "
                f"dd if=/dev/zero of={pv} bs=1M count=1 conv=fsync status=none\n"
                for vg, pv in GROUPS.items()
            )
            + f"rm -rf {WORK}"
        ).check()


def side_by_side(
    guest: Guest,
    runs: Mapping[str, str],
    command: Callable[[str], str],
    report: Callable[[str], str],
    timeout: float,
) -> dict[str, str]:
    """Start ``command(run)`` in ``WORK`` for every one of ``runs`` (name: settings) at the same
    time, each with its settings in its environment (no two on one group); once all are done,
    ``report(run)`` for each in turn. What each report printed, by run."""
    pool = any("DISKLEDGER_LVM_SPARSE" in settings for settings in runs.values())
    if pool:
        guest.run(f"lvcreate -q --yes -L 1G --thinpool {POOL} dlthin").check()
    jobs = "".join(
        f"(env {settings} PYTHONPATH=/payload/src:/payload/site {command(run)}) &\n"
        for run, settings in runs.items()
    )
    reports = "".join(f"echo; echo @@RUN:{run}@@\n{report(run)}\n" for run in runs)
    try:
        done = guest.run(f"cd {WORK}\n{jobs}wait\n{reports}", timeout=timeout)
    finally:
        if pool:
            guest.run(f"lvremove -q --yes -f dlthin/{POOL}").check()
    parts = re.split(r"^@@RUN:([\w-]+)@@\n", done.output, flags=re.MULTILINE)
    found = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert list(found) == list(runs), done.output
    return found


def pytest_in_guest(
    guest: Guest, runs: Mapping[str, tuple[str, str]], module: str
) -> dict[str, int]:
    """Run the in-guest pytest ``module`` once for each of ``runs`` (name: settings and more
    pytest arguments), side by side; fail with each failing case's message. The number of
    tests each ran."""
    name = Path(module).stem

    def command(run: str) -> str:
        return (
            f"python3 -m pytest -p no:cacheprovider -q -s --tb=short --durations=15 "
            f"--junitxml={WORK}/{name}-{run}.xml {runs[run][1]} {module} "
            f">{WORK}/{name}-{run}.log 2>&1"
        )

    def report(run: str) -> str:
        xml, log = f"{WORK}/{name}-{run}.xml", f"{WORK}/{name}-{run}.log"
        return (
            f"if [ -f {xml} ]; then tail -25 {log}; echo @@JUNIT@@; cat {xml}; "
            f"else tail -60 {log}; fi"
        )

    started = time.monotonic()
    settings = {run: environ for run, (environ, _) in runs.items()}
    outputs = side_by_side(guest, settings, command, report, timeout=900)
    elapsed = time.monotonic() - started
    counts: dict[str, int] = {}
    failures: list[str] = []
    for run, output in outputs.items():
        summary, _, xml = output.partition("@@JUNIT@@\n")
        assert xml.strip(), f"no JUnit report from the guest ({run}):\n{output}"
        root = ET.fromstring(xml)
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        assert suite is not None, xml
        failures += [
            f"{run}: {case.get('classname')}::{case.get('name')}: "
            f"{problem.get('message')}\n{problem.text}"
            for case in suite.iter("testcase")
            for problem in (*case.findall("failure"), *case.findall("error"))
        ]
        counts[run] = int(suite.get("tests") or 0)
        print(f"{module} {run}: {counts[run]} tests in {suite.get('time')} s\n{summary}")
    print(f"{module}: {' and '.join(runs)} side by side in {elapsed:.1f} s")
    assert not failures, (
        "\n".join(f.splitlines()[0] for f in failures) + "\n\n" + "\n\n".join(failures)
    )
    return counts


def test_lvm_backend_in_the_guest(guest: Guest, volume_groups: None) -> None:
    runs = {variant: (settings, "") for variant, settings in VARIANTS.items()}
    counts = pytest_in_guest(guest, runs, "test_lvm_inguest.py")
    assert all(count > 50 for count in counts.values()), counts


CRYPT_ALL = os.environ.get("DISKLEDGER_LVM_CRYPT") == "all"
"""Encrypted disks run on thick volumes in ``make test`` (the resize zeroing and clearing
paths), and on thick and sparse under ``DISKLEDGER_LVM_CRYPT=all`` (``make guest-all``)."""
CRYPT_HALF = "killed or attach"
"""On thick alone, the module is cut in two halves of about equal time (the longest two tests
are the kills, 67 s, and create-to-delete, 59 s) run side by side on the two groups, the
second as a thick one (no pool in it then); a new test goes to the second half."""


def test_lvm_encryption_in_the_guest(guest: Guest, volume_groups: None) -> None:
    """Encrypted disks, dm-crypt LUKS2 on the volume (``lvm_crypt_inguest.py``): the plaintext
    is in no volume's bytes and only through a mapping opened with the key, another key opens
    nothing, sizes are the disk's, resize/snapshot/rollback keep the data, delete leaves no
    key, mapping or volume, a loose key directory is refused unchanged, and encrypted
    operations killed around their key are recovered to exactly the live disks' keys."""
    if CRYPT_ALL:
        runs = {variant: (settings, "") for variant, settings in VARIANTS.items()}
    else:
        runs = {
            "thick": (THICK, f"-k '{CRYPT_HALF}'"),
            "thick-2": ("DISKLEDGER_LVM_VG=dlthin", f"-k 'not ({CRYPT_HALF})'"),
        }
    counts = pytest_in_guest(guest, runs, "test_lvm_crypt_inguest.py")
    assert sum(counts.values()) >= 5 * (len(VARIANTS) if CRYPT_ALL else 1), counts


def test_encrypted_mapping_names_and_header_tags() -> None:
    """No guest: the mapping a volume is opened as follows from its name, one per volume
    (LVM's doubled '-' keeps ``a-b/c`` and ``a/b-c`` apart), within device-mapper's 127
    characters; the header's size reads back from its tag."""
    assert mapping("dlvg", "vm1+root") == "luks-dlvg-vm1+root"
    assert mapping("a-b", "c") != mapping("a", "b-c")
    long = "x" * 120
    assert len(mapping("dlvg", long)) <= 127 and mapping("dlvg", long) != mapping(
        "dlvg", long + "y"
    )
    assert header_size(1 << 20) == header_size(512 << 10) == 1 << 20
    assert header_size(4 << 20) == 4 << 20
    for size in (1 << 20, 4 << 20, 32 << 20):
        assert header_of(frozenset({LUKS_TAG, header_tag(size)})) == size
    assert header_of(frozenset({LUKS_TAG})) == 1 << 20


def test_lvm_fault_matrix_in_the_guest(guest: Guest, volume_groups: None) -> None:
    """Operations killed at the fault points inside the guest, recovered, and checked there
    (``lvm_faults.py``), thick and sparse side by side: by default its ``SAMPLE`` (every
    operation at least once across the two variants, every point on each); every operation at
    every point under ``DISKLEDGER_LVM_FAULTS=all``."""
    which = os.environ.get("DISKLEDGER_LVM_FAULTS", "sample")

    def command(variant: str) -> str:
        out = f"{WORK}/faults-{variant}"
        return f"python3 lvm_faults.py {which} >{out}.out 2>{out}.err; echo $? >{out}.rc"

    def report(variant: str) -> str:
        out = f"{WORK}/faults-{variant}"
        return f"cat {out}.out; echo @@RC=$(cat {out}.rc)@@; tail -40 {out}.err"

    started = time.monotonic()
    outputs = side_by_side(guest, VARIANTS, command, report, timeout=3600)
    elapsed = time.monotonic() - started
    failed: list[str] = []
    for variant, output in outputs.items():
        results = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        cases = [r for r in results if not r.get("summary")]
        summary = next((r for r in results if r.get("summary")), None)
        assert summary is not None, f"the matrix did not finish in the guest ({variant}):\n{output}"
        failed += [
            f"{variant} {r['op']}@{r['point']}: {r['error']}\n{r.get('trace', '')}"
            for r in cases
            if not r["ok"]
        ]
        print(
            f"lvm fault matrix {variant} ({which}): {len(cases)} cases "
            f"(in the guest {summary['seconds']} s), decisions {summary['decisions']}"
        )
        points = {r["point"] for r in cases}
        assert points == {"after-intent", "mid-effect", "after-effect", "after-outcome"}, (
            variant,
            points,
        )
        assert failed or "@@RC=0@@" in output, output
    print(f"lvm fault matrix: {' and '.join(VARIANTS)} in {elapsed:.1f} s")
    assert not failed, "\n".join(failed)
