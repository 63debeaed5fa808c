"""``python -m benchmarks [--markdown] [--profile-append] [BENCHMARK...]``

Benchmarks: ``engine``, ``append``, ``replay``, ``recovery``, ``rbd``, ``libvirt``, ``feed``,
``multihost``, ``lvm``, ``cli``, ``storm``, ``memory``, ``nova``, ``nova-rbd``, ``fetch``,
``glance-rbd``, ``frozen-osd`` (default: all).

Environment: ``DISKLEDGER_BENCH_EVENTS`` (replay ledger size, default 1,000,000) and
``DISKLEDGER_BENCH_TRIALS`` (trials per side for the engine, append, libvirt, feed and cli
benchmarks, defaults 200, 2000, 200, 300 and 30; it also caps the replay runs, default 3) scale a
run down for a quick look; ``DISKLEDGER_BENCH_RBD_DISKS`` (disks per side of the rbd benchmark,
default 100). The rbd benchmark starts its own one-node Ceph cluster; without the Ceph packages it
is left out of a run of all benchmarks (asked for by name, it fails). The libvirt benchmark uses or
starts libvirtd at qemu:///system and boots a KVM domain; without KVM or libvirt it is left out of
a run of all benchmarks the same way. The feed benchmark starts its own PostgreSQL server; without
PostgreSQL installed it is left out the same way too. The lvm benchmark boots the test guest
(``tests.support.guest``; ``DISKLEDGER_BENCH_TRIALS`` sets its trials per side, at most 50, default
15); when the guest cannot be built or started here it is left out the same way. The storm
benchmark runs its rbd half only with Ceph installed. ``nova`` and ``nova-rbd`` run OpenStack
Nova's own image backend from ``var/nova-venv`` (``scripts/nova-venv.sh`` makes it on first use,
from PyPI; ``DISKLEDGER_BENCH_TRIALS`` sets their trials, default 40); when it cannot be made they
are left out the same way, and ``nova-rbd`` without Ceph as ``rbd`` is. ``fetch`` (template add
from a loopback URL vs curl) and ``glance-rbd`` (a template from Glance's RBD location vs from a
URL, then a disk; it starts a Ceph cluster and a real Glance, ``scripts/glance-venv.sh`` making
Glance's venv on first use) move ``DISKLEDGER_BENCH_FETCH_MIB`` MiB per copy (default 1024);
``DISKLEDGER_BENCH_TRIALS`` sets their trials (defaults 5 and 3); ``glance-rbd`` is left out
without Ceph as ``rbd`` is, and when Glance's venv cannot be made. ``frozen-osd`` (the time to
the error when the OSD freezes under an image that holds its lock, closed in the background vs in
place) starts its own Ceph cluster and freezes its OSD; ``DISKLEDGER_BENCH_TRIALS`` sets its
trials (default 3); it is left out without Ceph as ``rbd`` is.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from benchmarks import (
    boot_storm,
    cli_startup,
    engine_overhead,
    feed,
    frozen_osd,
    ledger_append,
    libvirt_resize,
    lvm_create,
    memory,
    multihost,
    nova,
    rbd_clone,
    recovery_scan,
    replay,
    template_fetch,
)
from benchmarks.timing import Report, env_int, render_markdown, render_text
from tests.support.glance import GlanceUnavailable
from tests.support.guest import GuestUnavailable
from tests.support.libvirt import LibvirtUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "only",
        nargs="*",
        metavar="BENCHMARK",
        help="run only these, of engine, append, replay, recovery, rbd, libvirt, feed, "
        "multihost, lvm, cli, storm, memory, nova, nova-rbd, fetch, glance-rbd and frozen-osd "
        "(default: all)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="also print a section for docs/performance.md"
    )
    parser.add_argument(
        "--profile-append",
        action="store_true",
        help="instead of benchmarking, profile store.append with cProfile",
    )
    args = parser.parse_args(argv)
    if shutil.which("qemu-img") is None:
        raise SystemExit("qemu-img is not installed (Debian package qemu-utils)")

    if args.profile_append:
        print(ledger_append.profile())
        return 0
    trials = env_int("DISKLEDGER_BENCH_TRIALS", 0)  # 0: each benchmark's own default
    events = env_int("DISKLEDGER_BENCH_EVENTS", replay.DEFAULT_EVENTS)
    benchmarks: dict[str, Callable[[], Report]] = {
        "engine": lambda: engine_overhead.run(trials or engine_overhead.DEFAULT_TRIALS),
        "append": lambda: ledger_append.run(trials or ledger_append.DEFAULT_TRIALS),
        "replay": lambda: replay.run(
            events, min(trials or replay.DEFAULT_RUNS, replay.DEFAULT_RUNS)
        ),
        "recovery": lambda: recovery_scan.run(
            recovery_scan.DEFAULT_DISKS, min(trials or recovery_scan.DEFAULT_TRIALS, 10)
        ),
        "rbd": lambda: rbd_clone.run(env_int("DISKLEDGER_BENCH_RBD_DISKS", rbd_clone.DISKS)),
        "libvirt": lambda: libvirt_resize.run(trials or libvirt_resize.DEFAULT_TRIALS),
        "feed": lambda: feed.run(trials or feed.DEFAULT_TRIALS),
        "multihost": multihost.run,
        "lvm": lambda: lvm_create.run(min(trials or lvm_create.DEFAULT_TRIALS, 50)),
        "cli": lambda: cli_startup.run(trials or cli_startup.DEFAULT_TRIALS),
        "storm": boot_storm.run,
        "memory": memory.run,
        "nova": lambda: nova.run(trials or nova.DEFAULT_TRIALS),
        "nova-rbd": lambda: nova.run_rbd(trials or nova.DEFAULT_RBD_TRIALS),
        "fetch": lambda: template_fetch.run(
            trials or template_fetch.DEFAULT_TRIALS, template_fetch.size_from_environ()
        ),
        "glance-rbd": lambda: template_fetch.run_rbd(
            trials or template_fetch.DEFAULT_RBD_TRIALS, template_fetch.size_from_environ()
        ),
        "frozen-osd": lambda: frozen_osd.run(trials or frozen_osd.DEFAULT_TRIALS),
    }
    chosen: list[str] = args.only or list(benchmarks)
    if not args.only and shutil.which("ceph-mon") is None:
        print(
            "rbd, nova-rbd, glance-rbd, frozen-osd: left out, Ceph is not installed "
            "(scripts/bootstrap.sh --ceph)"
        )
        chosen.remove("rbd")
        chosen.remove("nova-rbd")
        chosen.remove("glance-rbd")
        chosen.remove("frozen-osd")
    if not args.only and not os.path.exists("/dev/kvm"):
        print("libvirt: left out, no /dev/kvm (KVM is not available on this machine)")
        chosen.remove("libvirt")
    if not args.only and not _postgres_installed():
        print("feed, multihost: left out, PostgreSQL is not installed (scripts/bootstrap.sh)")
        chosen.remove("feed")
        chosen.remove("multihost")
    if not args.only and shutil.which("qemu-system-x86_64") is None:
        print("lvm: left out, qemu-system-x86_64 is not installed (the test guest needs it)")
        chosen.remove("lvm")
    unknown = sorted(set(chosen) - benchmarks.keys())
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(benchmarks)}")

    machine = describe_machine()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    reports = []
    started = time.perf_counter()
    for name in chosen:
        lap = time.perf_counter()
        try:
            report = benchmarks[name]()
        except (
            LibvirtUnavailable,
            GuestUnavailable,
            nova.NovaUnavailable,
            GlanceUnavailable,
        ) as exc:
            if args.only:  # asked for by name: that it cannot run here is an error
                raise
            print(f"\n{name}: left out, {exc}", flush=True)
            continue
        reports.append(report)
        print(f"\n{render_text(report)}\n({name}: {time.perf_counter() - lap:.0f} s)", flush=True)
    print(f"\nall done in {time.perf_counter() - started:.0f} s")

    if args.markdown:
        print("\n<!-- markdown for docs/performance.md -->")
        print(markdown(machine, reports))
    return 0


def _postgres_installed() -> bool:
    from tests.support.postgres import PostgresUnavailable, find_bindir

    try:
        find_bindir()
    except PostgresUnavailable:
        return False
    return True


def describe_machine() -> dict[str, str]:
    tmp = tempfile.gettempdir()
    fs = subprocess.run(
        ["df", "--output=fstype", tmp], check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    return {
        "cpus": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "temp dir": f"{tmp} ({fs})",
        "qemu-img": subprocess.run(
            ["qemu-img", "--version"], check=True, capture_output=True, text=True
        ).stdout.split()[2],
    }


def markdown(machine: dict[str, str], reports: list[Report]) -> str:
    lines = ["## Results", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    for report in reports:
        lines += ["", render_markdown(report)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
