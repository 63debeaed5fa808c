"""The lvm backend against a real volume group, inside the test guest (tests/support/guest.py).

The whole engine runs in the guest, so the backend's code path is the real one: its lvcreate,
lvrename, lvextend, lvremove and qemu-img calls go through the runner to real device-mapper
volumes. ``lvm_inguest.py`` (the shipped contract suite, volume_clear read back from the
physical volume, bad input) is copied in and run by one pytest process per variant, thick and
sparse; its JUnit report comes back, and each failing case fails this test with its message.

``lvm_faults.py`` is the crash fault matrix (every operation killed at every fault point inside
the guest, then recovered and checked), one Python process per variant: a covering sample by
default, every case with ``DISKLEDGER_LVM_FAULTS=all`` (``make guest-faults``).
"""

from __future__ import annotations

import base64
import json
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guest import Guest

VG = "dlvg"
POOL = "pool"
PV = "/dev/disk/by-serial/pv0"
IN_GUEST = Path(__file__).with_name("lvm_inguest.py")
FAULTS = Path(__file__).with_name("lvm_faults.py")
WORK = "/tmp/lvm-tests"


@pytest.fixture(scope="module")
def volume_group(guest: Guest) -> Iterator[str]:
    """``VG`` on pv0 (1 MiB extents: the contract suite's disks are 1-3 MiB), and the in-guest
    test module; pv0 is left as it was found, without even a PV label."""
    module = base64.b64encode(IN_GUEST.read_bytes()).decode()
    faults = base64.b64encode(FAULTS.read_bytes()).decode()
    guest.run(
        f"set -e; mkdir -p {WORK}; echo {module} | base64 -d > {WORK}/test_lvm_inguest.py\n"
        f"echo {faults} | base64 -d > {WORK}/lvm_faults.py\n"
        f"pvcreate -q {PV}; vgcreate -q -s 1m {VG} {PV}"
    ).check()
    try:
        yield VG
    finally:
        guest.run(
            f"vgremove -q -f {VG}; pvremove -q -ff -y {PV}; "
            f"dd if=/dev/zero of={PV} bs=1M count=1 conv=fsync status=none; rm -rf {WORK}"
        ).check()


@pytest.mark.parametrize("variant", ["thick", "sparse"])
def test_lvm_backend_in_the_guest(guest: Guest, volume_group: str, variant: str) -> None:
    environ = f"DISKLEDGER_LVM_VG={volume_group}"
    if variant == "sparse":
        guest.run(f"lvcreate -q --yes -L 1G --thinpool {POOL} {volume_group}").check()
        environ += f" DISKLEDGER_LVM_SPARSE={POOL}"
    report = f"{WORK}/{variant}.xml"
    started = time.monotonic()
    try:
        done = guest.run(
            f"cd {WORK} && env {environ} PYTHONPATH=/payload/src:/payload/site "
            f"python3 -m pytest -p no:cacheprovider -q --tb=short --durations=15 --junitxml={report} "
            f"test_lvm_inguest.py >{WORK}/{variant}.log 2>&1; "
            f"if [ -f {report} ]; then tail -25 {WORK}/{variant}.log; echo @@JUNIT@@; "
            f"cat {report}; else tail -60 {WORK}/{variant}.log; fi",
            timeout=900,
        )
    finally:
        if variant == "sparse":
            guest.run(f"lvremove -q --yes -f {volume_group}/{POOL}").check()
    elapsed = time.monotonic() - started
    summary, _, xml = done.output.partition("@@JUNIT@@\n")
    assert xml.strip(), f"no JUnit report from the guest:\n{done.output}"
    root = ET.fromstring(xml)
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None, xml
    failures = [
        f"{case.get('classname')}::{case.get('name')}: {problem.get('message')}\n{problem.text}"
        for case in suite.iter("testcase")
        for problem in (*case.findall("failure"), *case.findall("error"))
    ]
    print(f"lvm {variant}: {suite.get('tests')} tests in {elapsed:.1f} s\n{summary}")
    assert not failures, (
        "\n".join(f.splitlines()[0] for f in failures) + "\n\n" + "\n\n".join(failures)
    )
    assert int(suite.get("tests") or 0) > 50, summary


@pytest.mark.parametrize("variant", ["thick", "sparse"])
def test_lvm_fault_matrix_in_the_guest(guest: Guest, volume_group: str, variant: str) -> None:
    """Operations killed at the fault points inside the guest, recovered, and checked there
    (``lvm_faults.py``): by default its ``SAMPLE`` (every operation at least once across the
    two variants, every point on each); every operation at every point under
    ``DISKLEDGER_LVM_FAULTS=all``."""
    which = os.environ.get("DISKLEDGER_LVM_FAULTS", "sample")
    environ = f"DISKLEDGER_LVM_VG={volume_group}"
    if variant == "sparse":
        guest.run(f"lvcreate -q --yes -L 1G --thinpool {POOL} {volume_group}").check()
        environ += f" DISKLEDGER_LVM_SPARSE={POOL}"
    started = time.monotonic()
    try:
        done = guest.run(
            f"cd {WORK} && env {environ} PYTHONPATH=/payload/src:/payload/site "
            f"python3 lvm_faults.py {which} 2>{WORK}/faults-{variant}.err; "
            f"echo @@RC=$?@@; tail -40 {WORK}/faults-{variant}.err",
            timeout=3600,
        )
    finally:
        if variant == "sparse":
            guest.run(f"lvremove -q --yes -f {volume_group}/{POOL}").check()
    elapsed = time.monotonic() - started
    results = [json.loads(line) for line in done.output.splitlines() if line.startswith("{")]
    cases = [r for r in results if not r.get("summary")]
    summary = next((r for r in results if r.get("summary")), None)
    assert summary is not None, f"the matrix did not finish in the guest:\n{done.output}"
    failed = [r for r in cases if not r["ok"]]
    print(
        f"lvm fault matrix {variant} ({which}): {len(cases)} cases in {elapsed:.1f} s "
        f"(in the guest {summary['seconds']} s), decisions {summary['decisions']}"
    )
    assert not failed, "\n".join(
        f"{r['op']}@{r['point']}: {r['error']}\n{r.get('trace', '')}" for r in failed
    )
    points = {r["point"] for r in cases}
    assert points == {"after-intent", "mid-effect", "after-effect", "after-outcome"}, points
    assert "@@RC=0@@" in done.output, done.output
