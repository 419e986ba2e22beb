"""`nrs figures` / `make figures`: the paper's figures for one dataset, from scratch, resumable.

1. base classifier: ``runs/<dataset>/base`` (trained with the spec unless it exists);
2. the sweep of Fig. 2: ``runs/<dataset>/optimize/figures`` (the spec's optimize
   section with its ``figures`` overrides), resumed if interrupted;
3. the headline gain (:mod:`nrs_cli.experiments.gains`): the optimised point with the largest
   gain at equal accuracy, chosen on the selection set against a dense isotropic reference, and
   its gain measured on the report set with a 95% interval and a second noise seed;
4. the sigmas of Fig. 1: the optimised sigmas picked by :func:`choose_sigmas` (the ends of the
   front and the headline point), each with an isotropic sigma equal to its mean (as in the
   paper), certified with the spec's certify settings on the report set into
   ``runs/<dataset>/certify/figures-*.tsv``;
5. drawing: Fig. 1 against certified area, l2 radius and equal-volume radius, Fig. 2 (Fig. 4 for
   KITTI), Fig. 3 and its report, the tables with each optimised sigma's difference from its
   partner, and ``headline.md``/``headline.json``, into ``<out>/<dataset>/``.

The sweep evaluates and chooses on the selection set; everything published is measured on the
report set, disjoint from it (``inputs`` section of the spec).

Every step reuses what an earlier run finished.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from nrs_cli.errors import NrsError
from nrs_cli.experiments.gains import Study, headline_markdown, partner_gains, sweep_headline
from nrs_cli.io.layout import FIGURES_RUN, RunLayout
from nrs_cli.io.loaders import load_split
from nrs_cli.io.models import build_model, load_checkpoint
from nrs_cli.io.serialization import atomic_write_text, write_json
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


def choose_sigmas(rows: list[dict], count: int, also: str | None = None) -> list[dict]:
    """Optimised sigmas worth a Fig. 1 line: Pareto-optimal, near the best accuracy, and the one named ``also``.

    Among anisotropic points that no other point beats on both clean accuracy
    and mean certified area, and with at least 90% of the best accuracy, take
    ``count`` spread evenly from the most accurate to the largest area; then the
    point whose sigma file is ``also`` (the largest gain chosen on the selection set).
    """
    anisotropic = [r for r in rows if r["method"] == "anisotropic" and math.isfinite(r["mean_log_area"])]
    front = [anisotropic[i] for i in pareto_front([(r["accuracy"], r["mean_log_area"]) for r in anisotropic])]
    if not front:
        raise NrsError("the sweep has no optimised sigma with a certified input to plot")
    best = max(r["accuracy"] for r in front)
    good = sorted((r for r in front if r["accuracy"] >= 0.9 * best), key=lambda r: r["mean_log_area"])
    if len(good) > count:
        picks = sorted({round(k * (len(good) - 1) / (count - 1)) for k in range(count)}) if count > 1 else [0]
        good = [good[k] for k in picks]
    extra = [r for r in anisotropic if r["sigma_file"] == also and r not in good]
    return sorted(good + extra[:1], key=lambda r: r["mean_log_area"])


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
    on_sweep: Callable[[Any], None] | None = None,
) -> list[Path]:
    """Make every figure of one dataset (of the base classifier ``checkpoint`` if given); returns the files written.

    ``on_sweep`` receives the sweep's events as :func:`nrs_cli.runs.sweep.run_sweep` sends them (progress)."""
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
    say(f"[2/5] sigma sweep on {spec.optimize.eval_max} selection inputs -> {sweep_dir}")
    run_sweep(OptimizeJob(spec, model, train_set, test_set, sweep_dir, device, str(checkpoint)), on_sweep)
    rows = read_metrics(sweep_dir)
    say("[3/5] the largest gain: chosen on the selection set, reported on the report set")
    study = Study.of(spec, test_set, layout.root / "evaluations", device, say, spec.certify.max)
    headline = sweep_headline(study, spec, rows, sweep_dir, str(checkpoint))
    picks = choose_sigmas(rows, spec.figures.sigmas, headline["selection"].get("chosen_file"))
    optimised = [load_sigma(sweep_dir / row["sigma_file"], spec) for row in picks]
    report_spec = dataclasses.replace(spec, certify=dataclasses.replace(spec.certify, inputs="report"))
    results = []
    for sigma in [s for o in optimised for s in (o, isotropic_partner(o, spec.data.input_shape))]:
        tsv = layout.figures_tsv(sigma.tag)
        say(f"[4/5] certify sigma {sigma.label} on {spec.certify.max} report inputs -> {tsv}")
        certify_table(SmoothedJob(report_spec, model, sigma, test_set, tsv, device, str(checkpoint)))
        results.append(load_result(tsv))

    out = Path(out_dir) / spec.name
    say(f"[5/5] figures -> {out}")
    pairs = [(f"Δ {results[k].label} − partner", results[k], results[k + 1]) for k in range(0, len(results), 2)]
    headline["partners"] = partner_gains(pairs, spec.inputs.bootstrap)
    return draw_figures(spec, Drawn(results, pairs, headline), sweep_dir, optimised, out)


def ensure_base_classifier(
    spec: RunSpec, layout: RunLayout, train_set: Dataset, test_set: Dataset, device: torch.device, say: Say
) -> Path:
    """The dataset's base classifier, trained with the spec (its noise included), or its training resumed;
    a checkpoint put there without a training state is used as it is."""
    checkpoint = layout.checkpoint()
    if checkpoint.is_file() and not (layout.train_dir() / STATE_FILE).is_file():
        say(f"[1/5] base classifier: {checkpoint} (given)")
        return checkpoint
    say(f"[1/5] base classifier -> {checkpoint}")
    job = TrainJob(spec, build_model(spec), train_set, test_set, device, training_sigma(spec))
    result = train_base_run(job, layout.train_dir())
    say(f"      test accuracy {result.test_accuracy:.1%} after {len(result.history)} epochs")
    return checkpoint


@dataclass(frozen=True)
class Drawn:
    """What Fig. 1 and the tables show: the report-set results, the pairs compared, the headline."""

    results: list[ResultFile]
    pairs: list[tuple[str, ResultFile, ResultFile]]  # (label, optimised, its isotropic partner)
    headline: dict


def draw_figures(spec: RunSpec, drawn: Drawn, sweep_dir: Path, optimised: list[Sigma], out: Path) -> list[Path]:
    """Fig. 1 on every axis, Fig. 2 (Fig. 4 for KITTI), Fig. 3 with its report, the tables and the headline."""
    written: list[Path] = []
    title, results = spec.name, drawn.results
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
        stem = out / f"table-certified-accuracy-{column.replace('_', '-')}"
        written += write_tables(results, column, chosen, stem, drawn.pairs, spec.inputs.bootstrap)
    write_json(drawn.headline, out / "headline.json")
    atomic_write_text(headline_markdown(spec.name, drawn.headline), out / "headline.md")
    return written + [out / "headline.json", out / "headline.md"]
