"""`nrs figures` / `make figures`: the paper's figures for one dataset, from scratch, resumable.

1. base classifier: ``runs/<dataset>/base`` (trained with the spec unless it exists);
2. the sweep of Fig. 2: ``runs/<dataset>/optimize/figures`` (the spec's optimize
   section with its ``figures`` overrides), resumed if interrupted;
3. the sigmas of Fig. 1: the optimised sigmas picked by :func:`choose_sigmas`,
   each with an isotropic sigma equal to its mean (as in the paper), certified
   with the spec's certify settings into ``runs/<dataset>/certify/figures-*.tsv``;
4. drawing: Fig. 1 against certified area, l2 radius and equal-volume
   radius, Fig. 2 (Fig. 4 for KITTI), Fig. 3 and its report, and the tables,
   into ``<out>/<dataset>/``.

Every step reuses what an earlier run finished.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from nrs_cli.errors import NrsError
from nrs_cli.io.layout import FIGURES_RUN, RunLayout
from nrs_cli.io.loaders import load_split
from nrs_cli.io.models import build_model, load_checkpoint
from nrs_cli.io.serialization import atomic_write_text
from nrs_cli.io.spec import RunSpec
from nrs_cli.method.fronts import pareto_front
from nrs_cli.method.sigma import Sigma, constant_sigma, load_sigma
from nrs_cli.reports.metrics import METRICS
from nrs_cli.reports.plots import load_sweep, plot_certified_accuracy, plot_clean_accuracy
from nrs_cli.reports.result_files import ResultFile, load_result
from nrs_cli.reports.sigma_images import plot_sigmas, robustness_report
from nrs_cli.reports.tables import write_tables
from nrs_cli.runs.certification import SmoothedJob, certify_table
from nrs_cli.runs.optimization import OptimizeJob, read_metrics
from nrs_cli.runs.sweep import run_sweep
from nrs_cli.runs.train import STATE_FILE, TrainJob, train_base_run, training_sigma

Say = Callable[[str], None]  # where progress lines go


def figures_spec(spec: RunSpec) -> RunSpec:
    """The spec with its ``figures`` overrides applied to the optimize and certify sections."""
    f = spec.figures
    overrides = {
        name: getattr(f, name)
        for name in ("init", "init_step", "inits", "sub_epochs", "steps_per_sub_epoch", "eval_max", "baseline_step")
        if getattr(f, name) is not None
    }
    optimize = dataclasses.replace(spec.optimize, **overrides)
    certify = spec.certify if f.certify_max is None else dataclasses.replace(spec.certify, max=f.certify_max)
    return dataclasses.replace(spec, optimize=optimize, certify=certify)


def choose_sigmas(rows: list[dict], count: int) -> list[dict]:
    """Optimised sigmas worth a Fig. 1 line: Pareto-optimal, near the best accuracy.

    Among anisotropic points that no other point beats on both clean accuracy
    and mean certified area, and with at least 90% of the best accuracy, take
    ``count`` spread evenly from the most accurate to the largest area.
    """
    anisotropic = [r for r in rows if r["method"] == "anisotropic" and math.isfinite(r["mean_log_area"])]
    front = [anisotropic[i] for i in pareto_front([(r["accuracy"], r["mean_log_area"]) for r in anisotropic])]
    if not front:
        raise NrsError("the sweep has no optimised sigma with a certified input to plot")
    best = max(r["accuracy"] for r in front)
    good = sorted((r for r in front if r["accuracy"] >= 0.9 * best), key=lambda r: r["mean_log_area"])
    if len(good) <= count:
        return good
    picks = sorted({round(k * (len(good) - 1) / (count - 1)) for k in range(count)}) if count > 1 else [0]
    return [good[k] for k in picks]


def isotropic_partner(sigma: Sigma, input_shape: tuple[int, ...]) -> Sigma:
    """The isotropic sigma an optimised one is compared with in Fig. 1: its mean, as in the paper, to three
    significant digits (within 0.5% of the mean at any scale, and a readable file name)."""
    return constant_sigma(float(f"{sigma.stats.mean:.3g}"), input_shape)


def figures_run(
    spec: RunSpec,
    data_root: str | Path | None,
    runs_dir: str | Path,
    out_dir: str | Path,
    device: torch.device,
    say: Say = lambda message: None,
    checkpoint: Path | None = None,
) -> list[Path]:
    """Make every figure of one dataset (of the base classifier ``checkpoint`` if given); returns the files written."""
    spec = figures_spec(spec)
    layout = RunLayout(Path(runs_dir), spec.name)
    train_set = load_split(spec.data, "train", data_root)
    test_set = load_split(spec.data, "test", data_root)
    if checkpoint is not None:
        say(f"[1/4] base classifier: {checkpoint} (given)")
    else:
        checkpoint = ensure_base_classifier(spec, layout, train_set, test_set, device, say)
    model, _ = load_checkpoint(checkpoint, spec)

    sweep_dir = layout.sweep_dir(FIGURES_RUN)
    say(f"[2/4] sigma sweep -> {sweep_dir}")
    run_sweep(OptimizeJob(spec, model, train_set, test_set, sweep_dir, device, str(checkpoint)))
    optimised = [
        load_sigma(sweep_dir / row["sigma_file"], spec)
        for row in choose_sigmas(read_metrics(sweep_dir), spec.figures.sigmas)
    ]
    results = []
    for sigma in [s for o in optimised for s in (o, isotropic_partner(o, spec.data.input_shape))]:
        tsv = layout.figures_tsv(sigma.tag)
        say(f"[3/4] certify sigma {sigma.label} -> {tsv}")
        certify_table(SmoothedJob(spec, model, sigma, test_set, tsv, device, str(checkpoint)))
        results.append(load_result(tsv))

    out = Path(out_dir) / spec.name
    say(f"[4/4] figures -> {out}")
    return draw_figures(spec, results, sweep_dir, optimised, out)


def ensure_base_classifier(
    spec: RunSpec, layout: RunLayout, train_set: Dataset, test_set: Dataset, device: torch.device, say: Say
) -> Path:
    """The dataset's base classifier, trained with the spec (its noise included), or its training resumed;
    a checkpoint put there without a training state is used as it is."""
    checkpoint = layout.checkpoint()
    if checkpoint.is_file() and not (layout.train_dir() / STATE_FILE).is_file():
        say(f"[1/4] base classifier: {checkpoint} (given)")
        return checkpoint
    say(f"[1/4] base classifier -> {checkpoint}")
    job = TrainJob(spec, build_model(spec), train_set, test_set, device, training_sigma(spec))
    result = train_base_run(job, layout.train_dir())
    say(f"      test accuracy {result.test_accuracy:.1%} after {len(result.history)} epochs")
    return checkpoint


def draw_figures(
    spec: RunSpec, results: list[ResultFile], sweep_dir: Path, optimised: list[Sigma], out: Path
) -> list[Path]:
    """Fig. 1 on every axis, Fig. 2 (Fig. 4 for KITTI), Fig. 3 with its report, and the tables."""
    written: list[Path] = []
    title = spec.name
    for column, metric in METRICS.items():
        written += plot_certified_accuracy(results, column, out / f"fig1-certified-accuracy-{metric.option}", title)
    figure = "fig4-clean-accuracy" if spec.data.loader == "kitti" else "fig2-clean-accuracy"
    written += plot_clean_accuracy([load_sweep(sweep_dir)], out / figure, title=title)
    written += plot_clean_accuracy([load_sweep(sweep_dir)], out / f"{figure}-unfiltered", unfiltered=True, title=title)
    written += plot_sigmas(optimised, out / "fig3-sigma")
    report = out / "fig3-sigma-report.md"
    atomic_write_text("\n".join(robustness_report(s) for s in optimised), report)
    written.append(report)
    given = {"log_area": spec.figures.area_thresholds, "radius": spec.figures.radius_thresholds}
    for column, chosen in given.items():
        written += write_tables(results, column, chosen, out / f"table-certified-accuracy-{column.replace('_', '-')}")
    return written
