"""Live resize: ``Engine.resize`` of a disk attached to a running KVM domain vs a bare
``virDomainBlockResize`` on a second disk of the same domain.

Uses the machine's libvirtd at qemu:///system, or starts one (``tests.support.libvirt``:
``LibvirtDaemon``), and stops only what it started, also on error. In a temporary directory under
/var/tmp (0711: qemu runs as libvirt-qemu and must traverse it) an engine with the qcow2 backend
and an SQLite ledger creates two blank 64 MiB disks, ``bench/a`` and ``bench/b``; one transient
no-OS domain boots with both (``Engine.libvirt_disk``: ``vda`` and ``vdb``), and ``bench/a`` is
recorded as attached (``Engine.attach``; the domain already has it, so nothing is hot-plugged).
Then, interleaved trial by trial (the order flips every trial), each side grows its disk by 1 MiB:

- A: ``Engine.resize("bench/a", size)``: the view read, ``Hypervisor.find`` (one lookup and one
  ``XMLDesc``: does the domain run, does it still have the disk at ``vda``?), the intent appended,
  ``virDomainBlockResize`` through the domain ``find`` returned (no second lookup; qemu grows to
  exactly the size asked, so nothing is read back for a whole number of sectors), the outcome
  appended;
- B: ``dom.blockResize("vdb", size, VIR_DOMAIN_BLOCK_RESIZE_BYTES)`` on the benchmark's own
  connection, the domain looked up once.

A second, separate pass of ``BREAKDOWN`` trials times the engine's libvirt parts on their own by
calling the engine's ``Hypervisor`` directly (nothing is patched): ``find`` of the domain,
``block_resize`` of ``vdb`` (which the ledger does not track) through the domain ``find``
returned, and ``capacity`` (a read-back the engine no longer makes, for scale), beside both
sides; what is left of
``Engine.resize`` is the ledger (two appends, the view read, validation) and the engine's own
Python, by difference.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.timing import Report, Row, Samples, Side, interleave

__all__ = ["BREAKDOWN", "DEFAULT_TRIALS", "TARGET", "WARMUP", "run"]

TARGET = 1.5
"""Issue 16: ``Engine.resize`` of an attached disk at most 1.5 times a bare ``blockResize``."""

DEFAULT_TRIALS = 200
WARMUP = 5
BREAKDOWN = 50
MiB = 1 << 20
DISK_SIZE = 64 * MiB
STEP = MiB
DISK_A, DISK_B = "bench/a", "bench/b"


@dataclass(slots=True)
class Result:
    samples: Samples
    parts: dict[str, list[float]] = field(default_factory=dict)
    """Per trial of the breakdown pass: seconds of each part, and of both sides beside them."""
    final_size: int = 0
    guest_size: int = 0


def run(trials: int = DEFAULT_TRIALS) -> Report:
    from tests.support.libvirt import Domains, LibvirtDaemon

    daemon = LibvirtDaemon()
    try:
        started = time.perf_counter()
        daemon.start()
        up = time.perf_counter() - started
        started_here = daemon.started  # stop() forgets it
        conn = daemon.connect()
        try:
            domains = Domains(conn)
            root = Path(tempfile.mkdtemp(prefix="diskledger-bench-libvirt-", dir="/var/tmp"))
            try:
                root.chmod(0o711)
                result = _measure(domains, root, trials)
            finally:
                domains.cleanup()  # qemu lets go of the images before they are removed
                shutil.rmtree(root, ignore_errors=True)
        finally:
            conn.close()
    finally:
        daemon.stop()
    return _report(result, trials, up, started_here)


def _measure(domains: Any, root: Path, trials: int) -> Result:
    from diskledger.engine import Config, Engine

    config = Config.load(root=root, backend="qcow2", environ={}, recover=False)
    with Engine.open(config) as engine:
        engine.create(DISK_A, size=DISK_SIZE)
        engine.create(DISK_B, size=DISK_SIZE)
        dom = domains.boot(
            engine.libvirt_disk(DISK_A, target_dev="vda"),
            engine.libvirt_disk(DISK_B, target_dev="vdb"),
        )
        engine.attach(DISK_A, dom.name(), target_dev="vda")
        live = _Live(engine, dom)

        def timed(step: Callable[[], None]) -> Side:
            def side(trial: int) -> Mapping[str, float]:
                started = time.perf_counter()
                step()
                return {"resize": time.perf_counter() - started}

            return side

        samples = interleave(
            timed(live.engine_resize), timed(live.bare_resize), trials, warmup=WARMUP
        )
        live.check()
        result = Result(samples, _breakdown(live))
        live.check()
        result.final_size = engine.show(DISK_A).size or 0
        result.guest_size = int(dom.blockInfo("vda")[0])
    return result


class _Live:
    """The running domain's two disks, each grown by ``STEP`` at every resize."""

    def __init__(self, engine: Any, dom: Any) -> None:
        import libvirt

        self.engine, self.dom, self.name = engine, dom, dom.name()
        self.flags = libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES
        self.size = {"vda": DISK_SIZE, "vdb": DISK_SIZE}
        self.found: Any = None

    def _grow(self, dev: str) -> int:
        self.size[dev] += STEP
        return self.size[dev]

    def engine_resize(self) -> None:
        """Side A: the attached disk through the engine."""
        self.engine.resize(DISK_A, self._grow("vda"))

    def bare_resize(self) -> None:
        """Side B: the other disk, straight through libvirt."""
        self.dom.blockResize("vdb", self._grow("vdb"), self.flags)

    def find(self) -> None:
        """What ``Engine.resize`` asks libvirt before its intent."""
        info = self.engine.hypervisor.find(self.name)
        assert info is not None and info.active and "vda" in info.disks

    def hypervisor_resize(self) -> None:
        """The effect as the engine runs it (on vdb, which the ledger does not track), through
        the domain ``find`` returned, as the engine does."""
        if self.found is None:
            self.found = self.engine.hypervisor.find(self.name)
        self.engine.hypervisor.block_resize(self.found, "vdb", self._grow("vdb"))

    def capacity(self) -> None:
        """The size read back after the effect."""
        self.engine.hypervisor.capacity(self.name, "vdb")

    def check(self) -> None:
        """The last resize of vda went through the running guest; ledger and qemu agree on both
        disks' sizes."""
        engine = self.engine
        started = [e for e in engine.history(DISK_A) if e.type == "disk.resize.started"][-1]
        path = started.data["params"].get("live")
        if path != {"domain": self.name, "target_dev": "vda"}:
            raise AssertionError(f"Engine.resize did not take the live path: params.live={path!r}")
        ledger = engine.show(DISK_A).size
        seen = {dev: int(self.dom.blockInfo(dev)[0]) for dev in self.size}
        if ledger != self.size["vda"] or seen != self.size:
            raise AssertionError(
                f"asked {self.size}: the ledger says vda {ledger}, qemu {seen} (bytes)"
            )


def _breakdown(live: _Live) -> dict[str, list[float]]:
    """Each part on its own, ``BREAKDOWN`` times, in rotating order."""
    parts: list[tuple[str, Callable[[], None]]] = [
        ("Engine.resize", live.engine_resize),
        ("Hypervisor.find", live.find),
        ("Hypervisor.block_resize", live.hypervisor_resize),
        ("Hypervisor.capacity", live.capacity),
        ("dom.blockResize", live.bare_resize),
    ]
    times: dict[str, list[float]] = {}
    for i in range(BREAKDOWN):
        shift = i % len(parts)  # each part runs first, second, ... in turn
        for label, part in parts[shift:] + parts[:shift]:
            started = time.perf_counter()
            part()
            times.setdefault(label, []).append(time.perf_counter() - started)
    return times


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _report(result: Result, trials: int, up: float, started_here: bool) -> Report:
    a, b = result.samples.a["resize"], result.samples.b["resize"]
    median_a, median_b = statistics.median(a), statistics.median(b)
    ratio = median_a / median_b
    p90_a, p90_b = _quantile(a, 0.9), _quantile(b, 0.9)
    rows = [
        Row(
            "one resize (median)",
            _ms(median_a),
            _ms(median_b),
            f"{ratio:.3f} ({(median_a - median_b) * 1e3:+.3f} ms)",
        ),
        Row("one resize (90th percentile)", _ms(p90_a), _ms(p90_b), f"{p90_a / p90_b:.3f}"),
        Row(
            "one resize (minimum)",
            _ms(min(a)),
            _ms(min(b)),
            f"{min(a) / min(b):.3f}",
        ),
    ]
    daemon = "started for the run" if started_here else "the machine's, already running"
    notes = [
        f"libvirtd {daemon} (ready in {up:.2f} s); one transient KVM domain (32 MiB, 1 vcpu, "
        f"no OS) with two blank qcow2 disks of {DISK_SIZE // MiB} MiB, grown 1 MiB a trial; "
        f"after the run vda is {result.final_size // MiB} MiB in the ledger and "
        f"{result.guest_size // MiB} MiB in the guest",
    ]
    if result.parts:
        medians = {key: statistics.median(values) for key, values in result.parts.items()}
        total = medians["Engine.resize"]
        find, effect = medians["Hypervisor.find"], medians["Hypervisor.block_resize"]
        bare = medians["dom.blockResize"]
        rest = total - find - effect
        count = len(result.parts["Engine.resize"])
        notes += [
            f"breakdown, medians over {count} more trials of each part, separate pass, "
            "called directly (nothing patched): "
            f"Engine.resize {_ms(total)} ms, bare dom.blockResize {_ms(bare)} ms",
            f"  libvirt, Hypervisor.find (is the domain running with the disk?): {_ms(find)} ms"
            f" ({find / total:.0%})",
            "  libvirt, Hypervisor.block_resize (blockResize through the found domain): "
            f"{_ms(effect)} ms ({effect / total:.0%}); beyond the bare call "
            f"{_ms(effect - bare)} ms; a read-back (Hypervisor.capacity: lookup, blockInfo), "
            f"which the engine no longer makes, would add {_ms(medians['Hypervisor.capacity'])} ms",
            "  ledger and the rest (two appends, the view read, validation), by difference: "
            f"{_ms(rest)} ms ({rest / total:.0%})",
        ]
    return Report(
        title="Live resize: Engine.resize of an attached disk vs a bare virDomainBlockResize",
        method=(
            f"{trials} trials per side, interleaved (the order flips every trial), after "
            f"{WARMUP} warm-up trials each; times in ms. One running KVM domain with two disks. "
            "A: Engine.resize(disk, size) of the attached vda (SQLite ledger, qcow2 backend): "
            "Hypervisor.find (lookup, XMLDesc), intent, virDomainBlockResize through the found "
            "domain, outcome. "
            "B: dom.blockResize('vdb', size, VIR_DOMAIN_BLOCK_RESIZE_BYTES). Each grows 1 MiB."
        ),
        columns=("Engine.resize ms (A)", "blockResize ms (B)", "ratio A/B (A - B)"),
        rows=rows,
        target=f"ratio of the medians <= {TARGET} (measured {ratio:.3f})",
        met=ratio <= TARGET,
        notes=tuple(notes),
    )
