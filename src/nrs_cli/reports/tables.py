"""Certified accuracy at chosen thresholds, as Markdown and LaTeX tables for a paper."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nrs_cli.errors import NrsError
from nrs_cli.io.serialization import atomic_write_text
from nrs_cli.method.statistics import Interval, Outcomes, certified_accuracy_difference
from nrs_cli.reports.metrics import metric
from nrs_cli.reports.result_files import ResultFile, certified_accuracy_at, certified_values


def parse_thresholds(text: str) -> list[float]:
    """``--at 0,0.25,0.5``: comma-separated numbers."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise NrsError(f"--at expects comma-separated numbers, got '{text}'") from None
    if not all(math.isfinite(value) for value in values):
        raise NrsError(f"--at expects finite numbers, got '{text}'")
    return values


def default_thresholds(results: list[ResultFile], column: str, count: int = 5) -> list[float]:
    """Round thresholds across the bulk of the certificates, up to their 90th percentile.

    Radii start at 0. Log-areas start at the 10th percentile: below it every curve is flat at its
    clean accuracy, and the minimum of a log-area (thousands of nats below the rest) says nothing.
    """
    values = np.concatenate([certified_values(r.rows, column)[0] for r in results] or [np.array([])])
    if len(values) == 0:
        return [0.0]
    low = 0.0 if column != "log_area" else float(np.quantile(values, 0.1))
    high = float(np.quantile(values, 0.9))
    if high <= low:
        return [round(low, 2)]
    step = _nice_step((high - low) / (count - 1))
    start = math.floor(low / step) * step
    return [round(start + k * step, 10) for k in range(count) if start + k * step <= high]


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    for mantissa in (1, 2, 2.5, 5, 10):
        if mantissa * 10**exponent >= raw:
            return mantissa * 10**exponent
    return 10 ** (exponent + 1)


def accuracy_table(
    results: list[ResultFile], column: str, thresholds: list[float]
) -> tuple[list[str], list[list[float]]]:
    """Header and rows: one row per result file, certified accuracy at each threshold."""
    header = [f"{t:g}" for t in thresholds]
    rows = [certified_accuracy_at(r.rows, column, thresholds) for r in results]
    return header, rows


def _percent_cells(rows: list[list[float]], bold: Callable[[str], str]) -> list[list[str]]:
    """Each row as percentages, the column's leader in bold; a column where nobody certifies anything has none."""
    leaders = [max(column) for column in zip(*rows)]

    def cell(value: float, lead: float) -> str:
        return bold(f"{100 * value:.1f}") if 0 < value == lead else f"{100 * value:.1f}"

    return [[cell(v, lead) for v, lead in zip(row, leaders)] for row in rows]


@dataclass(frozen=True)
class Difference:
    """Two results on the same inputs, compared at every threshold: A's certified accuracy minus B's."""

    label: str
    intervals: list[Interval]


def differences(
    pairs: list[tuple[str, ResultFile, ResultFile]], column: str, thresholds: list[float], resamples: int = 2000
) -> list[Difference]:
    """``(label, A, B)`` pairs as differences with 95% paired-bootstrap intervals (pairs on other inputs left out)."""
    found = []
    for label, a, b in pairs:
        first, second = Outcomes.from_rows(a.rows), Outcomes.from_rows(b.rows)
        if first.indices == second.indices and first.indices:
            found.append(Difference(label, certified_accuracy_difference(first, second, column, thresholds, resamples)))
    return found


def _points(interval: Interval) -> str:
    """A difference of certified accuracies in percentage points, with its interval."""
    return f"{100 * interval.estimate:+.1f} [{100 * interval.low:+.1f}, {100 * interval.high:+.1f}]"


def markdown_table(
    results: list[ResultFile], column: str, thresholds: list[float], compared: list[Difference] = ()
) -> str:
    header, rows = accuracy_table(results, column, thresholds)
    lines = [
        f"Certified accuracy (%) at {metric(column).name} >= threshold; best per column in bold.",
        "",
        "| result | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(header),
    ]
    for result, cells in zip(results, _percent_cells(rows, lambda text: f"**{text}**")):
        lines.append(f"| {result.label} | " + " | ".join(cells) + " |")
    if compared:
        lines += [
            "",
            "Differences (percentage points) on the same inputs, with 95% paired-bootstrap intervals:",
            "",
            "| difference | " + " | ".join(header) + " |",
            "|---|" + "---:|" * len(header),
        ]
        lines += [f"| {d.label} | " + " | ".join(_points(i) for i in d.intervals) + " |" for d in compared]
    return "\n".join(lines) + "\n"


def latex_table(
    results: list[ResultFile], column: str, thresholds: list[float], compared: list[Difference] = ()
) -> str:
    header, rows = accuracy_table(results, column, thresholds)
    lines = [
        r"\begin{tabular}{l" + "r" * len(header) + "}",
        r"\hline",
        f"{_tex(metric(column).name)} $\\geq$ & " + " & ".join(f"${h}$" for h in header) + r" \\",
        r"\hline",
    ]
    for result, cells in zip(results, _percent_cells(rows, lambda text: f"\\textbf{{{text}}}")):
        lines.append(f"{_tex(result.label)} & " + " & ".join(cells) + r" \\")
    if compared:
        lines.append(r"\hline")
        for d in compared:
            cells = [
                f"${100 * i.estimate:+.1f}$ {{\\scriptsize [{100 * i.low:+.1f}, {100 * i.high:+.1f}]}}"
                for i in d.intervals
            ]
            lines.append(f"{_tex(d.label)} & " + " & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    replacements = {"σ": r"$\sigma$", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#"}
    return "".join(replacements.get(ch, ch) for ch in text)


def write_tables(
    results: list[ResultFile],
    column: str,
    thresholds: list[float] | None,
    stem: Path,
    pairs: list[tuple[str, ResultFile, ResultFile]] = (),
    resamples: int = 2000,
) -> list[Path]:
    """The certified-accuracy table as ``<stem>.md`` and ``<stem>.tex`` (thresholds None: chosen from the data),
    with the differences of the ``(label, A, B)`` pairs and their intervals below it."""
    chosen = list(thresholds) if thresholds else default_thresholds(results, column)
    compared = differences(list(pairs), column, chosen, resamples)
    written = []
    for kind, render in (("md", markdown_table), ("tex", latex_table)):
        path = stem.with_name(f"{stem.name}.{kind}")
        atomic_write_text(render(results, column, chosen, compared), path)
        written.append(path)
    return written
