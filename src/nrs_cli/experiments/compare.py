"""`nrs compare`: five ways to choose the network and the sigma, on the same axes (beyond the paper).

======  ============================================  ===========================
method  network                                       sigma
======  ============================================  ===========================
A       trained on clean images                       isotropic
B       trained on clean images                       Algorithm 1 (the paper)
C       trained under isotropic noise (Cohen et al.)  isotropic
C'      trained under isotropic noise                 Algorithm 1, no retraining
D       co-optimised with its sigma                   optimised (:mod:`nrs_cli.runs.cooptimize`)
======  ============================================  ===========================

The runs, each reused (or resumed) when it exists, all with the figures section's sweep sizes:

- ``base`` and ``optimize/figures``: the clean classifier and its sweep, as ``nrs figures`` makes
  them: A is its isotropic baseline, B its optimised points;
- ``noise-<s>`` and ``optimize/noise-<s>``: a classifier trained under each noise level s of
  ``compare.noise_sigmas``, and its sweep from s times ``compare.sweep_factors``: C is its isotropic
  baseline (s itself included, as Cohen et al. certify), C' its optimised points;
- ``optimize/co-clean`` and ``optimize/co-noise-<s>``: co-optimisation from the clean classifier and
  from the one trained at ``compare.cooptimize_from``, starting from ``compare.cooptimize_inits``: D.

Each method's best point (the most certified area among its points at or above the clean
accuracy that every method reaches) is certified with the certify section's n0, n and alpha on the
first ``compare.certify_max`` inputs of the report set. Gains at equal clean accuracy are chosen on
the selection set and reported on the report set against a reference refined from the compared
method's front (:mod:`nrs_cli.experiments.gains`, :func:`reference_families`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from nrs_cli.experiments.figures import Say, ensure_base_classifier, figures_spec
from nrs_cli.experiments.gains import (
    CANDIDATES,
    Point,
    Study,
    candidate_summary,
    gains_markdown,
    measure_gain,
)
from nrs_cli.io.layout import FIGURES_RUN, RunLayout
from nrs_cli.io.loaders import load_split
from nrs_cli.io.models import build_model, load_checkpoint
from nrs_cli.io.serialization import atomic_write_text, write_json
from nrs_cli.io.spec import RunSpec
from nrs_cli.method.fronts import compare_to_front, front_curve
from nrs_cli.method.sigma import Sigma, constant_sigma, load_sigma
from nrs_cli.reports.plots import plot_certified_accuracy, plot_methods
from nrs_cli.reports.result_files import ResultFile, load_result
from nrs_cli.reports.sigma_images import plot_sigmas
from nrs_cli.reports.tables import write_tables
from nrs_cli.runs.certification import SmoothedJob, certify_table
from nrs_cli.runs.cooptimize import METHOD as COOPTIMIZED
from nrs_cli.runs.cooptimize import cooptimize_run
from nrs_cli.runs.optimization import OptimizeJob, read_metrics
from nrs_cli.runs.reference import Family, ReferencePoint
from nrs_cli.runs.sweep import run_sweep
from nrs_cli.runs.train import TrainJob, train_base_run

LABELS = {
    "A": "A: clean network, isotropic σ",
    "B": "B: clean network, Algorithm 1",
    "C": "C: noise-trained network, isotropic σ",
    "C'": "C′: noise-trained network, Algorithm 1",
    "D": "D: co-optimised network and σ",
}
GAINS = [("D", "C"), ("D", "C'"), ("B", "C"), ("C'", "C"), ("B", "A"), ("D", "B")]  # (letter, reference)
HEADLINE_PAIRS = {("D", "C"), ("D", "C'"), ("B", "A")}  # measured with a second noise seed too


@dataclass(frozen=True)
class CompareJob:
    spec: RunSpec  # with the figures section applied
    layout: RunLayout
    train_set: Dataset
    test_set: Dataset
    device: torch.device
    say: Say
    on_sweep: Callable[[Any], None] | None = None  # every sweep's and co-optimisation's events (progress)


def compare_run(
    spec: RunSpec, data_root: str | Path | None, runs_dir: str | Path, out_dir: str | Path, device: torch.device,
    say: Say = lambda message: None, on_sweep: Callable[[Any], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every run of the comparison (reusing finished ones), the best point of each method certified,
    the figures and tables drawn into ``<out_dir>/<dataset>/``; returns the summary written there."""
    spec = figures_spec(spec)
    job = CompareJob(
        spec, RunLayout(Path(runs_dir), spec.name), load_split(spec.data, "train", data_root),
        load_split(spec.data, "test", data_root), device, say, on_sweep,
    )  # fmt: skip
    points = collect_points(job)
    floor = min(max(p["accuracy"] for p in found) for found in points.values()) - 0.005
    best = {letter: best_point(found, floor) for letter, found in points.items()}
    results = {letter: certify_point(job, letter, point) for letter, point in best.items()}
    study = Study.of(spec, job.test_set, job.layout.root / "evaluations", device, say, spec.compare.certify_max)
    reported = pair_gains(job, study, points)
    out = Path(out_dir) / spec.name
    say(f"[compare] figures -> {out}")
    draw_comparison(job, points, best, results, out)
    summary = summarize(points, best, results, floor)
    for pair, found in reported.items():
        summary["gains"][pair].update(found)
    write_json(summary, out / "compare-summary.json")
    counts = (study.selection.size, study.report.size, spec.inputs.seed)
    atomic_write_text(gains_markdown(f"{spec.name}: five methods", reported, counts), out / "compare-gains.md")
    return summary


def pair_gains(job: CompareJob, study: Study, points: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Every compared pair's gain chosen on the selection set and reported on the report set
    (:mod:`nrs_cli.experiments.gains`); the headline pairs with a second noise seed too."""
    found = {}
    for letter, against in GAINS:
        job.say(f"[compare] {letter} vs {against}: chosen on the selection set, reported on the report set")
        headline = (letter, against) in HEADLINE_PAIRS
        found[f"{letter} vs {against}"] = pair_gain(study, job.spec, points[letter], points[against], headline)
    return found


def pair_gain(study: Study, spec: RunSpec, compared: list[dict], reference: list[dict], second: bool) -> dict:
    """One method's gain over another's front, measured as :mod:`nrs_cli.experiments.gains` describes."""
    sparse = [p for p in compare_to_front(compared, reference)["points"] if p["gain_at_equal_accuracy"] is not None]
    ranked = sorted(sparse, key=lambda p: -p["gain_at_equal_accuracy"])[:CANDIDATES]
    if not ranked:
        return {"sparse": None, "selection": None, "report": None, "second_seed": None}
    candidates = [
        Point(p["checkpoint"], lambda p=p: point_sigma(p, spec), p["accuracy"], p["mean_log_area"], _described(p))
        for p in ranked
    ]
    found = measure_gain(study, lambda point: reference_families(spec, point.accuracy, reference), candidates, second)
    return {
        "sparse": {**_described(ranked[0]), "accuracy": ranked[0]["accuracy"],
                   "gain_at_equal_accuracy": ranked[0]["gain_at_equal_accuracy"]},
        "selection": {"candidates": [candidate_summary(m) for m in found["selection"]["candidates"]]},
        "report": found["report"],
        "second_seed": found["second_seed"],
    }  # fmt: skip


def reference_families(spec: RunSpec, accuracy: float, reference: list[dict]) -> list[tuple[Family, list]]:
    """The reference method's dense reference around ``accuracy``: its front points either side of it, each
    as a family to refine (the isotropic sigmas of that point's network, or that optimised sigma scaled);
    the reference is the front of all their points.

    Front points further away in accuracy, and their networks and sigmas, are not in it."""
    front = front_curve([(p["accuracy"], p["mean_log_area"]) for p in reference])
    on_front = [p for p in reference if (p["accuracy"], p["mean_log_area"]) in front]
    above = [p for p in on_front if p["accuracy"] >= accuracy]
    below = [p for p in on_front if p["accuracy"] < accuracy]
    neighbours = ([min(above, key=lambda p: p["accuracy"])] if above else []) + (
        [max(below, key=lambda p: p["accuracy"])] if below else []
    )
    shape, families = tuple(spec.data.input_shape), {}
    for point in neighbours:
        if point["method"] == "isotropic":
            same = [p for p in reference if p["method"] == "isotropic" and p["checkpoint"] == point["checkpoint"]]
            initial = [ReferencePoint(p["init"], p["accuracy"], p["mean_log_area"]) for p in same]
            family = Family(point["checkpoint"], None, shape)
        else:
            family = Family(point["checkpoint"], point_sigma(point, spec), shape)
            initial = [ReferencePoint(1.0, point["accuracy"], point["mean_log_area"])]
        families.setdefault(family.key, (family, initial))
    return list(families.values())


def _described(point: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "init", "sub_epoch", "sigma_file", "run_dir", "checkpoint")
    return {key: point[key] for key in keys}


def collect_points(job: CompareJob) -> dict[str, list[dict[str, Any]]]:
    """Every evaluated point of every method, each with the network and sigma it stands for."""
    spec, layout = job.spec, job.layout
    clean = ensure_base_classifier(spec, layout, job.train_set, job.test_set, job.device, job.say)
    figures = sweep_network(job, clean, layout.sweep_dir(FIGURES_RUN), spec.optimize)
    points: dict[str, list[dict[str, Any]]] = {
        "A": rows_of_kind(figures, "isotropic"),
        "B": rows_of_kind(figures, "anisotropic"),
        "C": [],
        "C'": [],
        "D": [],
    }
    c = spec.compare
    networks = {}
    for noise in c.noise_sigmas:
        networks[noise] = train_under_noise(job, noise)
        step = noise * (c.sweep_factors[1] - c.sweep_factors[0])
        o = dataclasses.replace(
            spec.optimize, init=noise * c.sweep_factors[0], init_step=step, inits=len(c.sweep_factors),
            baseline_step=step / 2,
        )  # fmt: skip
        sweep = sweep_network(job, networks[noise], layout.sweep_dir(f"noise-{noise:g}"), o)
        points["C"] += rows_of_kind(sweep, "isotropic")
        points["C'"] += rows_of_kind(sweep, "anisotropic")
    starts = dataclasses.replace(
        spec.optimize, init=c.cooptimize_inits[0], inits=len(c.cooptimize_inits),
        init_step=c.cooptimize_inits[1] - c.cooptimize_inits[0] if len(c.cooptimize_inits) > 1 else 1.0,
    )  # fmt: skip
    for name, network in (("co-clean", clean), (f"co-noise-{c.cooptimize_from:g}", networks[c.cooptimize_from])):
        points["D"] += rows_of_kind(cooptimize_network(job, network, layout.sweep_dir(name), starts), COOPTIMIZED)
    return points


def sweep_network(job: CompareJob, checkpoint: Path, run_dir: Path, optimize) -> list[dict[str, Any]]:
    """A sweep (resumed or reused) of a network; its rows, each knowing its run folder and network."""
    spec = dataclasses.replace(job.spec, optimize=optimize)
    job.say(f"[compare] sweep of {checkpoint} -> {run_dir}")
    model, _ = load_checkpoint(checkpoint, spec)
    run_sweep(OptimizeJob(spec, model, job.train_set, job.test_set, run_dir, job.device, str(checkpoint)), job.on_sweep)
    return [{**row, "run_dir": str(run_dir), "checkpoint": str(checkpoint)} for row in read_metrics(run_dir)]


def cooptimize_network(job: CompareJob, checkpoint: Path, run_dir: Path, optimize) -> list[dict[str, Any]]:
    """Co-optimisation (resumed or reused) from a network; its rows, each with the network of its round."""
    spec = dataclasses.replace(job.spec, optimize=optimize)
    job.say(f"[compare] co-optimisation from {checkpoint} -> {run_dir}")
    model, _ = load_checkpoint(checkpoint, spec)
    cooptimize_run(
        OptimizeJob(spec, model, job.train_set, job.test_set, run_dir, job.device, str(checkpoint)), job.on_sweep
    )
    rows = read_metrics(run_dir)
    return [
        {**row, "run_dir": str(run_dir), "checkpoint": str(run_dir / "checkpoints" / Path(row["sigma_file"]).name)}
        for row in rows
    ]


def train_under_noise(job: CompareJob, noise: float) -> Path:
    """The base classifier trained under isotropic noise (Cohen et al.), trained or resumed unless done."""
    run_dir = job.layout.train_dir(f"noise-{noise:g}")
    job.say(f"[compare] base classifier under noise {noise:g} -> {run_dir}")
    spec = dataclasses.replace(job.spec, train=dataclasses.replace(job.spec.train, noise_sigma=noise))
    sigma = constant_sigma(noise, spec.data.input_shape)
    train_base_run(TrainJob(spec, build_model(spec), job.train_set, job.test_set, job.device, sigma), run_dir)
    return run_dir / "checkpoint.pt"


def rows_of_kind(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The rows of one kind (isotropic, anisotropic, co-optimized) with a certified input."""
    return [r for r in rows if r["method"] == kind and math.isfinite(r["mean_log_area"])]


def best_point(points: list[dict[str, Any]], floor: float) -> dict[str, Any]:
    """The point with the most certified area among those at least ``floor`` accurate."""
    eligible = [p for p in points if p["accuracy"] >= floor] or [max(points, key=lambda p: p["accuracy"])]
    return max(eligible, key=lambda p: p["mean_log_area"])


def point_sigma(point: dict[str, Any], spec: RunSpec) -> Sigma:
    if point["method"] == "isotropic":
        return constant_sigma(float(point["init"]), spec.data.input_shape)
    return load_sigma(Path(point["run_dir"]) / point["sigma_file"], spec)


def certify_point(job: CompareJob, letter: str, point: dict[str, Any]) -> ResultFile:
    """CERTIFY a method's best point on the report set; its result file, labelled by the method."""
    spec = dataclasses.replace(
        job.spec, certify=dataclasses.replace(job.spec.certify, max=job.spec.compare.certify_max, inputs="report")
    )
    tsv = job.layout.root / "certify" / f"compare-{letter.replace(chr(39), 'prime')}.tsv"
    job.say(f"[compare] certify {letter} ({point['accuracy']:.1%}, {point['mean_log_area']:.1f}) -> {tsv}")
    model, _ = load_checkpoint(point["checkpoint"], spec)
    sigma = point_sigma(point, spec)
    certify_table(SmoothedJob(spec, model, sigma, job.test_set, tsv, job.device, point["checkpoint"]))
    return dataclasses.replace(load_result(tsv), name=LABELS[letter])


def draw_comparison(job: CompareJob, points, best, results: dict[str, ResultFile], out: Path) -> list[Path]:
    """The clean-accuracy plot of every point, Fig. 1 of the best points, their sigmas, and the tables."""
    curves = {LABELS[m]: [(p["accuracy"], p["mean_log_area"]) for p in found] for m, found in points.items()}
    fronts = {label: front_curve(found) for label, found in curves.items()}
    title = f"{job.spec.name}: five methods"
    written = plot_methods(curves, fronts, out / "compare-clean-accuracy", title)
    ordered = [results[m] for m in LABELS]
    for column, suffix in (("log_area", "area"), ("radius", "radius")):
        written += plot_certified_accuracy(ordered, column, out / f"compare-certified-accuracy-{suffix}", title)
    sigmas = [point_sigma(best[m], job.spec) for m in ("B", "D")]
    written += plot_sigmas(sigmas, out / "compare-sigma", titles=[LABELS["B"], LABELS["D"]])
    pairs = [(f"Δ {a} − {b}", results[a], results[b]) for a, b in GAINS]
    for column, thresholds in (("radius", list(job.spec.compare.radii)), ("log_area", None)):
        stem = out / f"compare-table-{column.replace('_', '-')}"
        written += write_tables(ordered, column, thresholds, stem, pairs, job.spec.inputs.bootstrap)
    return written


def summarize(points, best, results: dict[str, ResultFile], floor: float) -> dict[str, Any]:
    """Gains at equal clean accuracy between the methods' fronts, and the certified best points."""
    plain = {m: [_plain(p) for p in found] for m, found in points.items()}
    gains = {}
    for letter, against in GAINS:
        comparison = compare_to_front(plain[letter], plain[against])
        gains[f"{letter} vs {against}"] = {
            "max_gain_at_equal_accuracy": comparison["max_gain_at_equal_accuracy"],
            "front": comparison["reference"],
        }
    return {
        "accuracy_floor": floor,
        "gains": gains,
        "best": {m: {**_plain(best[m]), "certified": str(results[m].path)} for m in best},
        "points": plain,
    }


def _plain(point: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "init", "sub_epoch", "accuracy", "mean_log_area", "sigma_mean", "sigma_file", "run_dir")
    return {key: point[key] for key in keys} | {"checkpoint": point["checkpoint"]}
