"""The paper's figures from result files: certified accuracy (Fig. 1) and clean accuracy (Figs. 2, 4).

Fig. 1 plots, for one certify TSV per line, the certified accuracy at x: the
fraction of all test inputs that are classified correctly *and* certified with
a certificate of at least x (certified area ``log_area``, or the l2 ``radius``,
or ``gm_radius``). Fig. 2 plots every evaluation of an optimize-sigma sweep as
clean accuracy against mean certified area, anisotropic points after the
paper's "blanket" filter, with the isotropic baseline for comparison.

Accuracies are drawn as fractions and read in percent. All figures are written
as PNG and PDF with matplotlib's non-interactive backend, sized for a paper column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from nrs_cli.io.serialization import read_json  # noqa: E402
from nrs_cli.reports.metrics import METRICS, metric  # noqa: E402
from nrs_cli.reports.result_files import ResultFile, certified_accuracy_curve, section  # noqa: E402
from nrs_cli.reports.style import FIGURE_SIZE, STYLE, add_note, save_figure  # noqa: E402
from nrs_cli.runs.optimization import read_metrics  # noqa: E402


def percent_axis(axis) -> None:
    """An accuracy axis (fractions) labelled in percent."""
    axis.set_major_formatter(PercentFormatter(xmax=1.0))


def blanket_filter(points: list[tuple[float, float]]) -> list[bool]:
    """The paper's "blanket" filter over (mean certified area, clean accuracy) points.

    Points are taken by decreasing accuracy (ties: larger area first); a point
    is kept only if its certified area lies outside the range of areas
    spanned by the points kept so far. So a point is dropped exactly when some
    more accurate kept point certifies less area and another certifies more:
    it is covered on both sides. Returns a keep-mask in the input order.
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][1], -points[i][0]))
    keep = [False] * len(points)
    low, high = math.inf, -math.inf
    for i in order:
        area = points[i][0]
        if not math.isfinite(area):
            continue
        if area < low or area > high:
            keep[i] = True
            low, high = min(low, area), max(high, area)
    return keep


def run_note(results: list[ResultFile]) -> str:
    """Sample sizes of the results, for the figure's footnote."""
    notes = set()
    for result in results:
        fp = section(result.manifest, "fingerprint")
        if fp:
            notes.add(f"n0={fp.get('n0')}, n={fp.get('n')}, α={fp.get('alpha')}, {fp.get('bound')}")
    sizes = {len(r.rows) for r in results}
    sets = {section(r.manifest, "fingerprint").get("inputs") for r in results} - {None}
    which = f"{sets.pop()} set " if len(sets) == 1 else ""
    size = f"{'/'.join(str(s) for s in sorted(sizes))} test inputs" + (f" ({which.strip()})" if which else "")
    return "; ".join(sorted(notes) + [size])


def plot_certified_accuracy(
    results: list[ResultFile], column: str, out_stem: str | Path, title: str = "", note: str | None = None
) -> list[Path]:
    """Fig. 1: certified accuracy against a certificate size, one line per result file."""
    axis_label = metric(column).axis
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=FIGURE_SIZE)
        for index, result in enumerate(results):
            x, y = certified_accuracy_curve(result.rows, column)
            style = "--" if result.isotropic else "-"
            axes.step(x, y, where="post", linestyle=style, color=f"C{index}", label=result.label, linewidth=1.4)
        axes.set_xlabel(axis_label)
        axes.set_ylabel("certified accuracy")
        percent_axis(axes.yaxis)
        axes.set_ylim(0, 1.02)
        if column != "log_area":
            axes.set_xlim(left=0)
        if title:
            axes.set_title(title)
        axes.legend(loc="best", frameon=False)
        add_note(figure, run_note(results) if note is None else note)
        return save_figure(figure, Path(out_stem))


@dataclass
class SweepPoints:
    """The evaluations of one optimize-sigma run."""

    label: str
    anisotropic: list[dict[str, Any]]
    isotropic: list[dict[str, Any]]
    note: str = ""


def load_sweep(run_dir: str | Path, label: str | None = None) -> SweepPoints:
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    manifest_path = run_dir / "manifest.json"
    manifest = read_json(manifest_path, "manifest") if manifest_path.is_file() else {}
    spec = section(manifest, "spec")
    o = section(spec, "optimize")
    note = ""
    if o:
        eval_max = o.get("eval_max")
        inputs = eval_max if isinstance(eval_max, int) and eval_max >= 0 else "all"
        settings = f"n0={o.get('eval_n0')}, n={o.get('eval_n')}, α={o.get('eval_alpha')}"
        chosen = " (selection set)" if section(manifest, "fingerprint").get("inputs") else ""
        note = f"evaluation: CERTIFY {settings}, {inputs} test inputs{chosen}"
    name = label or str(spec.get("name") or run_dir.name)
    return SweepPoints(
        name,
        [r for r in rows if r["method"] == "anisotropic"],
        [r for r in rows if r["method"] == "isotropic"],
        note,
    )


def label_accuracy_against_area(axes, title: str) -> None:
    """Axes, title and legend of a clean-accuracy against mean-log_area figure (Figs. 2 and 4)."""
    axes.set_xlabel("mean " + METRICS["log_area"].axis)
    axes.set_ylabel("clean accuracy (smoothed, CERTIFY)")
    percent_axis(axes.yaxis)
    if title:
        axes.set_title(title)
    axes.legend(loc="best", frameon=False)


def plot_clean_accuracy(
    sweeps: list[SweepPoints], out_stem: str | Path, unfiltered: bool = False, title: str = ""
) -> list[Path]:
    """Figs. 2 and 4: clean accuracy against mean certified area, every evaluation a point."""
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=FIGURE_SIZE)
        for index, sweep in enumerate(sweeps):
            prefix = f"{sweep.label}: " if len(sweeps) > 1 else ""
            points = [(r["mean_log_area"], r["accuracy"]) for r in sweep.anisotropic]
            keep = blanket_filter(points)
            kept = sorted(p for p, k in zip(points, keep) if k)
            color = f"C{2 * index}"
            if unfiltered:
                axes.scatter(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    s=10,
                    color=color,
                    alpha=0.25,
                    label=f"{prefix}anisotropic, all rounds",
                )
            axes.plot(
                [p[0] for p in kept],
                [p[1] for p in kept],
                "o-",
                color=color,
                markersize=3.5,
                linewidth=1.2,
                label=f"{prefix}anisotropic (blanket-filtered)",
            )
            # In order of sigma: the path a growing noise level traces (its area is not monotone in sigma).
            iso = [
                (r["mean_log_area"], r["accuracy"])
                for r in sorted(sweep.isotropic, key=lambda r: r["init"])
                if math.isfinite(r["mean_log_area"])
            ]
            if iso:
                axes.plot(
                    [p[0] for p in iso],
                    [p[1] for p in iso],
                    "s--",
                    color=f"C{2 * index + 1}",
                    markersize=3,
                    linewidth=1.0,
                    label=f"{prefix}isotropic",
                )
        label_accuracy_against_area(axes, title)
        add_note(figure, "; ".join(sorted({s.note for s in sweeps if s.note})))
        return save_figure(figure, Path(out_stem))


def plot_methods(
    methods: dict[str, list[tuple[float, float]]], fronts: dict[str, list[tuple[float, float]]], out_stem, title=""
) -> list[Path]:
    """Clean accuracy against mean certified area for several methods: every point, each method's front as a line.

    ``methods`` and ``fronts`` map a legend label to ``(accuracy, mean log_area)`` points.
    """
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(figsize=FIGURE_SIZE)
        for index, (label, points) in enumerate(methods.items()):
            finite = [p for p in points if math.isfinite(p[1])]
            axes.scatter([p[1] for p in finite], [p[0] for p in finite], s=9, color=f"C{index}", alpha=0.35)
            front = sorted(fronts.get(label, []), key=lambda p: p[1])
            axes.plot([p[1] for p in front], [p[0] for p in front], "o-", color=f"C{index}", markersize=3.5,
                      linewidth=1.2, label=label)  # fmt: skip
        label_accuracy_against_area(axes, title)
        return save_figure(figure, Path(out_stem))
