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

from diskledger.backends.lvm import LUKS_TAG, mapping
from diskledger.backends.lvm.crypt import header_of, header_size, header_tag
from tests.support.guest import Guest

VG = "dlvg"
POOL = "pool"
PV = "/dev/disk/by-serial/pv0"
IN_GUEST = Path(__file__).with_name("lvm_inguest.py")
FAULTS = Path(__file__).with_name("lvm_faults.py")
CRYPT = Path(__file__).with_name("lvm_crypt_inguest.py")
BLOCKIO = Path(__file__).with_name("blockio.py")
WORK = "/tmp/lvm-tests"


@pytest.fixture(scope="module")
def volume_group(guest: Guest) -> Iterator[str]:
    """``VG`` on pv0 (1 MiB extents: the contract suite's disks are 1-3 MiB), and the in-guest
    test module; pv0 is left as it was found, without even a PV label."""
    module = base64.b64encode(IN_GUEST.read_bytes()).decode()
    faults = base64.b64encode(FAULTS.read_bytes()).decode()
    crypt = base64.b64encode(CRYPT.read_bytes()).decode()
    blockio = base64.b64encode(BLOCKIO.read_bytes()).decode()
    guest.run(
        f"set -e; mkdir -p {WORK}; echo {module} | base64 -d > {WORK}/test_lvm_inguest.py\n"
        f"echo {faults} | base64 -d > {WORK}/lvm_faults.py\n"
        f"echo {crypt} | base64 -d > {WORK}/test_lvm_crypt_inguest.py\n"
        f"echo {blockio} | base64 -d > {WORK}/blockio.py\n"
        f"pvcreate -q {PV}; vgcreate -q -s 1m {VG} {PV}"
    ).check()
    try:
        yield VG
    finally:
        guest.run(
            f"vgremove -q -f {VG}; pvremove -q -ff -y {PV}; "
            f"dd if=/dev/zero of={PV} bs=1M count=1 conv=fsync status=none; rm -rf {WORK}"
        ).check()


def pytest_in_guest(guest: Guest, volume_group: str, variant: str, module: str) -> int:
    """Run the in-guest pytest ``module`` on ``variant``'s group (thick, or sparse in a thin
    pool made for it and removed after); fail with each failing case's message. The number of
    tests it ran."""
    environ = f"DISKLEDGER_LVM_VG={volume_group}"
    if variant == "sparse":
        guest.run(f"lvcreate -q --yes -L 1G --thinpool {POOL} {volume_group}").check()
        environ += f" DISKLEDGER_LVM_SPARSE={POOL}"
    name = f"{Path(module).stem}-{variant}"
    report = f"{WORK}/{name}.xml"
    started = time.monotonic()
    try:
        done = guest.run(
            f"cd {WORK} && env {environ} PYTHONPATH=/payload/src:/payload/site "
            f"python3 -m pytest -p no:cacheprovider -q -s --tb=short --durations=15 "
            f"--junitxml={report} {module} >{WORK}/{name}.log 2>&1; "
            f"if [ -f {report} ]; then tail -25 {WORK}/{name}.log; echo @@JUNIT@@; "
            f"cat {report}; else tail -60 {WORK}/{name}.log; fi",
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
    print(f"{module} {variant}: {suite.get('tests')} tests in {elapsed:.1f} s\n{summary}")
    assert not failures, (
        "\n".join(f.splitlines()[0] for f in failures) + "\n\n" + "\n\n".join(failures)
    )
    return int(suite.get("tests") or 0)


@pytest.mark.parametrize("variant", ["thick", "sparse"])
def test_lvm_backend_in_the_guest(guest: Guest, volume_group: str, variant: str) -> None:
    assert pytest_in_guest(guest, volume_group, variant, "test_lvm_inguest.py") > 50


CRYPT_VARIANTS = (
    ["thick", "sparse"] if os.environ.get("DISKLEDGER_LVM_CRYPT") == "all" else ["thick"]
)
"""Encrypted disks run on thick volumes in ``make test`` (the resize zeroing and clearing
paths), and on both under ``DISKLEDGER_LVM_CRYPT=all`` (``make guest-all``): the suite's
30-minute budget has no room for 2.5 minutes more."""


@pytest.mark.parametrize("variant", CRYPT_VARIANTS)
def test_lvm_encryption_in_the_guest(guest: Guest, volume_group: str, variant: str) -> None:
    """Encrypted disks, dm-crypt LUKS2 on the volume (``lvm_crypt_inguest.py``): the plaintext
    is in no volume's bytes and only through a mapping opened with the key, another key opens
    nothing, sizes are the disk's, resize/snapshot/rollback keep the data, delete leaves no
    key, mapping or volume, a loose key directory is refused unchanged, and encrypted
    operations killed around their key are recovered to exactly the live disks' keys."""
    assert pytest_in_guest(guest, volume_group, variant, "test_lvm_crypt_inguest.py") >= 5


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
