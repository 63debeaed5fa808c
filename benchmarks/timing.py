"""What every benchmark shares: interleaved trials, medians, and the report table.

Each benchmark compares two sides, A (diskledger) and B (the baseline it is judged against). A
side is a function that runs one trial and returns the seconds each of its measured steps took.
``interleave`` runs the two sides alternately, trial by trial, so noise on the machine (another
process, a writeback burst, the CPU clock) lands on both sides alike; the order flips every trial
(A B, B A, A B, ...) so neither side always runs on a cache the other one just warmed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Report",
    "Row",
    "Samples",
    "Side",
    "env_int",
    "interleave",
    "render_markdown",
    "render_text",
    "stopwatch",
]

Side = Callable[[int], Mapping[str, float]]
"""One trial of one side: trial number -> seconds taken by each measured step."""


@dataclass(frozen=True, slots=True)
class Samples:
    """Every step's timings, per side, in trial order."""

    a: dict[str, list[float]]
    b: dict[str, list[float]]

    def median_a(self, step: str) -> float:
        return statistics.median(self.a[step])

    def median_b(self, step: str) -> float:
        return statistics.median(self.b[step])


def interleave(a: Side, b: Side, trials: int, *, warmup: int = 0) -> Samples:
    """Run ``warmup`` untimed trials of each side, then ``trials`` of each, alternating."""
    if trials < 1:
        raise ValueError("a benchmark needs at least one trial per side")
    for i in range(warmup):
        a(-1 - i)
        b(-1 - i)
    samples = Samples({}, {})
    for i in range(trials):
        order = ((a, samples.a), (b, samples.b))
        for side, into in order if i % 2 == 0 else reversed(order):
            for step, seconds in side(i).items():
                into.setdefault(step, []).append(seconds)
    return samples


def stopwatch() -> Callable[[], float]:
    """A lap timer: each call returns the seconds since the previous call (or the start)."""
    last = time.perf_counter()

    def lap() -> float:
        nonlocal last
        now = time.perf_counter()
        elapsed, last = now - last, now
        return elapsed

    return lap


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment (``_`` separators allowed), or ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise SystemExit(f"{name} must be at least 1, not {value}")
    return value


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    a: str
    b: str
    comparison: str


@dataclass(frozen=True, slots=True)
class Report:
    """One benchmark's result: a table of medians, its target, and whether it was met."""

    title: str
    method: str
    columns: tuple[str, str, str]  # headers of the A, B and comparison columns
    rows: Sequence[Row]
    target: str
    met: bool
    notes: Sequence[str] = field(default_factory=tuple)

    @property
    def verdict(self) -> str:
        return "MET" if self.met else "NOT MET"


def render_text(report: Report) -> str:
    header = ("", *report.columns)
    cells = [header, *((r.label, r.a, r.b, r.comparison) for r in report.rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(4)]

    def line(row: Sequence[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    rule = "-" * len(line(header))
    out = [f"== {report.title} ==", report.method, rule, line(header), rule]
    out += [line(row) for row in cells[1:]]
    out += [rule, f"target: {report.target}  ->  {report.verdict}"]
    out += [f"note: {note}" for note in report.notes]
    return "\n".join(out)


def render_markdown(report: Report) -> str:
    out = [f"### {report.title}", "", report.method, ""]
    out.append("| | " + " | ".join(report.columns) + " |")
    out.append("|---|" + "---:|" * len(report.columns))
    out += [f"| {r.label} | {r.a} | {r.b} | {r.comparison} |" for r in report.rows]
    out += ["", f"**Target:** {report.target} — **{report.verdict}**"]
    if report.notes:
        out.append("")
        out += [f"- {note}" for note in report.notes]
    return "\n".join(out)
