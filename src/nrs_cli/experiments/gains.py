"""Gains a reviewer accepts: chosen on the selection set, reported on the report set, with intervals.

Each gain is at equal clean accuracy, against a dense reference, with a 95% interval and a second
noise seed.

For a compared method (optimised sigmas) and a reference (a family of sigmas, see
:mod:`nrs_cli.runs.reference`):

1. **selection set**: the method's points with the largest gains over the reference's sweep front
   (a sparse grid joined by straight lines: the number sweeps used to print) are re-measured against
   the reference refined around each one's accuracy; the point with the largest dense gain is chosen;
2. **report set**: the chosen point and the reference are evaluated afresh on inputs no choice has
   seen, the reference refined around the point's report accuracy; the gain and its paired-bootstrap
   95% interval are reported;
3. **second noise seed**: step 2 again with the noise seed plus one, to show how much of the
   interval is Monte Carlo noise rather than the choice of inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from nrs_cli.io.spec import RunSpec
from nrs_cli.method.sigma import Sigma, load_sigma
from nrs_cli.method.statistics import (
    Interval,
    Outcomes,
    gain_at_equal_accuracy,
    mean_log_area_difference,
    reference_area,
)
from nrs_cli.runs.evaluation import Evaluator, Say, Settings
from nrs_cli.runs.reference import Family, ReferencePoint, front_bracket, is_dense, refine
from nrs_cli.runs.sweep import sweep_summary

CANDIDATES = 3  # points of the compared method refined on the selection set


@dataclass(frozen=True)
class Point:
    """A compared point: an optimised sigma on a network, with its selection-set evaluation."""

    checkpoint: str
    sigma: Callable[[], Sigma]  # loads the sigma when it is needed
    accuracy: float
    mean_log_area: float
    describe: dict[str, Any]  # how a summary names it (init, sub_epoch, sigma_file, ...)


# A point's reference: the families of sigmas to refine around its accuracy, each with its points already evaluated.
ReferenceOf = Callable[[Point], list[tuple[Family, list[ReferencePoint]]]]


@dataclass
class Study:
    """Everything one comparison needs: the two evaluators, the settings and the refinement limits."""

    selection: Evaluator
    report: Evaluator
    settings: Settings  # the evaluation's CERTIFY settings (the sweep's eval_n0, eval_n, eval_alpha)
    tolerance: float
    steps: int
    resamples: int

    @classmethod
    def of(cls, spec: RunSpec, test_set: Dataset, folder: Path, device: torch.device, say: Say, report_count: int):
        """The study of a spec: the sweep's selection inputs and evaluation settings, ``report_count`` report
        inputs, evaluations kept under ``folder``."""
        o = spec.optimize
        return cls(
            selection=Evaluator(spec, test_set, "selection", o.eval_max, folder, device, say),
            report=Evaluator(spec, test_set, "report", report_count, folder, device, say),
            settings=Settings(o.eval_n0, o.eval_n, o.eval_alpha, spec.seed),
            tolerance=spec.inputs.tolerance,
            steps=spec.inputs.refine_steps,
            resamples=spec.inputs.bootstrap,
        )

    def reference_point(self, family: Family, index: int, scale: float, evaluator: Evaluator, settings: Settings):
        """The reference's family ``index`` (``family``) at ``scale``, evaluated."""
        outcomes = evaluator.outcomes(family.checkpoint, family.sigma(scale), settings)
        return ReferencePoint(scale, outcomes.accuracy, outcomes.mean_log_area, outcomes, index)

    def refine(self, family: Family, index: int, points, accuracy: float, evaluator: Evaluator, settings: Settings):
        def evaluate(scale: float) -> ReferencePoint:
            return self.reference_point(family, index, scale, evaluator, settings)

        known = [dataclasses.replace(p, family=index) for p in points]
        return refine(evaluate, known, accuracy, self.tolerance, self.steps)


def read_reference(groups: dict[int, list[ReferencePoint]], accuracy: float, tolerance: float):
    """The bracket of the reference's front (all families' points) around ``accuracy``, and whether it is dense."""
    points = [p for group in groups.values() for p in group]
    return front_bracket(points, accuracy), is_dense(points, accuracy, tolerance)


def dense_gain(bracket, accuracy: float, area: float) -> float | None:
    if bracket is None:
        return None
    first, second = bracket
    return area - float(
        reference_area(accuracy, (first.accuracy, first.mean_log_area), (second.accuracy, second.mean_log_area))
    )


def choose_on_selection(study: Study, reference_of: ReferenceOf, candidates: list[Point]) -> dict[str, Any]:
    """Refine each candidate's reference around its selection accuracy; the candidate with the largest dense gain.

    ``reference_of(point)`` gives the families to refine for that point and their points already evaluated
    on the selection set (those refined for one candidate are kept for the next with the same family)."""
    measured, refined = [], {}
    for point in candidates:
        reference = reference_of(point)
        groups = {}
        for index, (family, initial) in enumerate(reference):
            known = refined.get(family.key, initial)
            refined[family.key] = study.refine(family, index, known, point.accuracy, study.selection, study.settings)
            groups[index] = refined[family.key]
        bracket, dense = read_reference(groups, point.accuracy, study.tolerance)
        gain = dense_gain(bracket if dense else None, point.accuracy, point.mean_log_area)
        families = [family for family, _ in reference]
        measured.append({"point": point, "families": families, "gain": gain, "bracket": _bracket_dict(bracket)})
    gained = [m for m in measured if m["gain"] is not None]
    chosen = max(gained, key=lambda m: m["gain"]) if gained else None
    return {"candidates": measured, "chosen": chosen}


def report_gain(
    study: Study, families: list[Family], point: Point, start: list[dict[str, Any]], seed_offset: int = 0
) -> dict[str, Any]:
    """The point's gain over the reference on the report set, refined from the bracket ``start`` (each point's
    family index and scale: the families that bracketed the point on the selection set).

    A gain is given only where the refined reference brackets the point's report accuracy within the
    tolerance (``dense``); otherwise ``gain`` is None and ``bracket`` shows how far it got."""
    settings = Settings(study.settings.n0, study.settings.n, study.settings.alpha, study.settings.seed + seed_offset)
    outcomes = study.report.outcomes(point.checkpoint, point.sigma(), settings)
    groups = {}
    for index in sorted({b["family"] for b in start}):
        family = families[index]
        known = [study.reference_point(family, index, b["scale"], study.report, settings)
                 for b in start if b["family"] == index]  # fmt: skip
        groups[index] = study.refine(family, index, known, outcomes.accuracy, study.report, settings)
    bracket, dense = read_reference(groups, outcomes.accuracy, study.tolerance)
    result: dict[str, Any] = {
        "seed": settings.seed,
        "accuracy": outcomes.accuracy,
        "mean_log_area": outcomes.mean_log_area,
        "bracket": _bracket_dict(bracket),
        "dense": dense,
        "gain": None,
    }
    if dense:
        gain = gain_at_equal_accuracy(
            outcomes, bracket[0].outcomes, bracket[1].outcomes, study.resamples, settings.seed
        )
        result["gain"] = gain.to_dict()
    return result


def measure_gain(study: Study, reference_of: ReferenceOf, candidates: list[Point], second_seed: bool) -> dict:
    """Steps 1 to 3 of the module docstring for ranked candidates: the selection-set choice, the chosen
    point's report-set gain, and (if ``second_seed``) the same with the next noise seed."""
    selection = choose_on_selection(study, reference_of, candidates)
    found: dict[str, Any] = {"selection": selection, "report": None, "second_seed": None}
    chosen = selection["chosen"]
    if chosen is None:
        return found
    point, families = chosen["point"], chosen["families"]
    found["report"] = {**point.describe, **report_gain(study, families, point, chosen["bracket"])}
    if second_seed:
        start = found["report"]["bracket"] or chosen["bracket"]
        found["second_seed"] = report_gain(study, families, point, start, seed_offset=1)
    return found


def _bracket_dict(bracket) -> list[dict[str, Any]] | None:
    if bracket is None:
        return None
    return [
        {"family": p.family, "scale": p.scale, "accuracy": p.accuracy, "mean_log_area": p.mean_log_area}
        for p in bracket
    ]


def interval(result: dict[str, Any] | None) -> Interval | None:
    """The gain of a :func:`report_gain` result as an :class:`Interval` (None when there is none)."""
    if not result or not result.get("gain"):
        return None
    gain = result["gain"]
    return Interval(gain["estimate"], gain["low"], gain["high"])


def sweep_headline(study: Study, spec, rows: list[dict[str, Any]], sweep_dir, checkpoint: str) -> dict[str, Any]:
    """The sweep's largest gain over isotropic sigma at equal accuracy, measured the three ways above."""
    family = Family(checkpoint, None, tuple(spec.data.input_shape))
    isotropic = [r for r in rows if r["method"] == "isotropic"]
    reference = [ReferencePoint(r["init"], r["accuracy"], r["mean_log_area"]) for r in isotropic]
    sparse = [p for p in sweep_summary(rows)["anisotropic"] if p["gain_at_equal_accuracy"] is not None]
    ranked = sorted(sparse, key=lambda p: -p["gain_at_equal_accuracy"])[:CANDIDATES]
    candidates = [
        Point(checkpoint, lambda f=p["sigma_file"]: load_sigma(sweep_dir / f, spec), p["accuracy"],
              p["mean_log_area"], {k: p[k] for k in ("init", "sub_epoch", "sigma_file")})
        for p in ranked
    ]  # fmt: skip
    found = measure_gain(study, lambda point: [(family, reference)], candidates, second_seed=True)
    chosen = found["selection"]["chosen"]
    return {
        "inputs": {
            "selection": {"count": study.selection.size, "seed": spec.inputs.seed},
            "report": {"count": study.report.size, "seed": spec.inputs.seed},
        },
        "sparse": {"grid": len(isotropic), **(_described(ranked[0]) if ranked else {})},
        "selection": {
            "candidates": [candidate_summary(m) for m in found["selection"]["candidates"]],
            "chosen_file": chosen["point"].describe["sigma_file"] if chosen else None,
        },
        "report": found["report"],
        "second_seed": found["second_seed"],
    }


def _described(point: dict[str, Any]) -> dict[str, Any]:
    keys = ("init", "sub_epoch", "sigma_file", "accuracy", "mean_log_area", "gain_at_equal_accuracy")
    return {key: point[key] for key in keys}


def candidate_summary(measured: dict[str, Any]) -> dict[str, Any]:
    point = measured["point"]
    return {
        **point.describe,
        "accuracy": point.accuracy,
        "mean_log_area": point.mean_log_area,
        "gain": measured["gain"],
        "bracket": measured["bracket"],
    }


def partner_gains(pairs, resamples: int) -> list[dict[str, Any]]:
    """Each optimised sigma's mean log-area over its isotropic partner's on the report set (Fig. 1's settings)."""
    found = []
    for label, optimised, partner in pairs:
        a, b = Outcomes.from_rows(optimised.rows), Outcomes.from_rows(partner.rows)
        gain = mean_log_area_difference(a, b, resamples)
        found.append({"label": label, "accuracy": [a.accuracy, b.accuracy], "mean_log_area_gain": gain.to_dict()})
    return found


def headline_markdown(name: str, headline: dict[str, Any]) -> str:
    """``headline.md``: the gain measured as the sweep reports it, with a dense reference, and on the report set."""
    selection, report = headline["inputs"]["selection"], headline["inputs"]["report"]
    sparse = headline["sparse"]
    lines = [
        f"# {name}: the largest certified-area gain over isotropic sigma at equal clean accuracy",
        "",
        f"Selection set: {selection['count']} test inputs; report set: {report['count']} other test inputs "
        f"(class-balanced, seed {selection['seed']}). Gains in mean log_area (nats); 95% paired-bootstrap intervals.",
        "",
        "| how the gain is measured | inputs | point | gain |",
        "|---|---|---|---:|",
    ]
    if "gain_at_equal_accuracy" in sparse:
        lines.append(
            f"| as the sweep reports it: {sparse['grid']} isotropic sigmas joined by straight lines | selection | "
            f"{_name(sparse)} | {sparse['gain_at_equal_accuracy']:+.1f} |"
        )
    for candidate in headline["selection"]["candidates"]:
        gain = "-" if candidate["gain"] is None else f"{candidate['gain']:+.1f}"
        lines.append(f"| same inputs, isotropic reference refined to its accuracy | selection | {_name(candidate)} "
                     f"| {gain} |")  # fmt: skip
    for title, result in (
        ("other inputs, refined reference", headline["report"]),
        ("the same, second noise seed", headline["second_seed"]),
    ):
        if result is not None:
            point = {**headline["report"], "accuracy": result["accuracy"]}
            lines.append(f"| {title} (seed {result['seed']}) | report | {_name(point)} | {_gain_text(result)} |")
    for partner in headline.get("partners", []):
        gain = partner["mean_log_area_gain"]
        text = Interval(gain["estimate"], gain["low"], gain["high"]).text()
        lines.append(f"| {partner['label']}: mean log_area, Fig. 1's CERTIFY | report | | {text} |")
    return "\n".join(lines) + "\n"


def _gain_text(result: dict[str, Any] | None) -> str:
    """A report-set gain with its interval; why there is none where there is none."""
    if not result:
        return "-"
    gain = interval(result)
    if gain is not None:
        return gain.text()
    return "- (no reference within the tolerance)" if result.get("bracket") else "- (reference not reached)"


def _name(point: dict[str, Any]) -> str:
    return f"from σ = {point['init']:g}, sub-epoch {point['sub_epoch']} ({100 * point['accuracy']:.1f}%)"


def gains_markdown(title: str, reported: dict[str, dict[str, Any]], counts: tuple[int, int, int]) -> str:
    """Each compared pair's gain as the fronts report it, with a dense reference, and on the report set."""
    selection, report, seed = counts
    lines = [
        f"# {title}: gains at equal clean accuracy",
        "",
        f"Chosen on {selection} selection inputs, reported on {report} other test inputs (class-balanced, seed "
        f"{seed}); mean log_area (nats), 95% paired-bootstrap intervals.",
        "",
        "| comparison | fronts as swept (selection) | refined reference (selection) | report set | second noise seed |",
        "|---|---:|---:|---:|---:|",
    ]
    for pair, found in reported.items():
        sparse = found.get("sparse")
        chosen = [c["gain"] for c in (found.get("selection") or {}).get("candidates", []) if c["gain"] is not None]
        cells = [
            "-" if not sparse else f"{sparse['gain_at_equal_accuracy']:+.1f}",
            "-" if not chosen else f"{max(chosen):+.1f}",
            *(_gain_text(found.get(key)) for key in ("report", "second_seed")),
        ]  # fmt: skip
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
