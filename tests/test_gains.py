"""Choosing on the selection set and reporting on the report set, end to end on an analytic reference.

The isotropic reference is a known curve: sigma s certifies a fraction 1 - s of the inputs
(none above 0.3, where nothing is certified), each with log-area 100 log s. The compared point lies
a known number of nats above that curve, at a known accuracy on each input set and noise seed, so
every step (refining, choosing, reporting, the second seed) has a number to be right about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from nrs_cli.experiments.gains import Point, Study, gains_markdown, headline_markdown, measure_gain, report_gain
from nrs_cli.method.sigma import constant_sigma
from nrs_cli.method.statistics import Outcomes
from nrs_cli.runs.evaluation import Settings
from nrs_cli.runs.reference import Family, ReferencePoint

INPUTS = 400
SHAPE = (1, 2, 2)
ABOVE = {"selection": 50.0, "report": 30.0}  # the point's nats above the isotropic curve on each set
BETTER = 20.0  # a second network's isotropic curve lies this many nats above the first's
POINT_ACCURACY = {("selection", 0): 0.75, ("report", 0): 0.74, ("report", 1): 0.73}


def isotropic_accuracy(scale: float) -> float:
    return 0.0 if scale > 0.3 else round(INPUTS * (1 - scale)) / INPUTS


def isotropic_area(accuracy: float) -> float:
    return 100 * math.log(1 - accuracy)  # the curve through (1 - s, 100 log s)


@dataclass
class AnalyticEvaluator:
    """Stands in for :class:`nrs_cli.runs.evaluation.Evaluator`: outcomes from the known curves."""

    which: str
    first_index: int  # the two sets hold different inputs
    calls: list = field(default_factory=list)

    @property
    def size(self) -> int:
        return INPUTS

    def outcomes(self, checkpoint: str, sigma, settings: Settings) -> Outcomes:
        self.calls.append((checkpoint, float(sigma.values.mean()), settings.seed))
        if checkpoint == "optimised":
            accuracy = POINT_ACCURACY[(self.which, settings.seed)]
            area = isotropic_area(accuracy) + ABOVE[self.which]
        else:  # "base", or "better": the same accuracies, BETTER nats more area
            scale = float(sigma.values.mean())
            accuracy = isotropic_accuracy(scale)
            area = 100 * math.log(scale) + (BETTER if checkpoint == "better" else 0.0)
        correct = np.arange(INPUTS) < round(accuracy * INPUTS)
        indices = tuple(range(self.first_index, self.first_index + INPUTS))
        return Outcomes(indices, correct, np.where(correct, area, -np.inf), np.where(correct, 0.1, 0.0))


def study(steps: int = 12) -> Study:
    return Study(
        selection=AnalyticEvaluator("selection", 0),
        report=AnalyticEvaluator("report", 10_000),
        settings=Settings(32, 256, 0.001, 0),
        tolerance=0.005,
        steps=steps,
        resamples=500,
    )


def point() -> Point:
    sigma = constant_sigma(0.5, SHAPE)  # its values do not matter: the evaluator knows the point by its network
    accuracy = POINT_ACCURACY[("selection", 0)]
    return Point("optimised", lambda: sigma, accuracy, isotropic_area(accuracy) + ABOVE["selection"], {"init": 0.25})


def sweep_reference():
    """A sparse sweep: one accurate sigma and, half as large again, one that certifies nothing (refining
    must bisect between them: widening the range would only reach the second again)."""
    family = Family("base", None, SHAPE)
    return family, [ReferencePoint(0.22, isotropic_accuracy(0.22), 100 * math.log(0.22)),
                    ReferencePoint(0.33, 0.0, math.nan)]  # fmt: skip


def test_the_point_is_chosen_on_the_selection_set_and_its_gain_reported_on_the_report_set():
    s = study()
    found = measure_gain(s, lambda p: [sweep_reference()], [point()], second_seed=True)

    (candidate,) = found["selection"]["candidates"]
    assert abs(candidate["gain"] - ABOVE["selection"]) < 2  # a dense reference: within a chord's error
    report, second = found["report"], found["second_seed"]
    assert report["dense"] and second["dense"]
    assert report["accuracy"] == 0.74 and second["accuracy"] == 0.73
    for result in (report, second):
        gain = result["gain"]
        assert abs(gain["estimate"] - ABOVE["report"]) < 2
        assert gain["low"] <= gain["estimate"] <= gain["high"]
        more, less = result["bracket"]
        assert more["accuracy"] >= result["accuracy"] > less["accuracy"]
        assert more["accuracy"] - result["accuracy"] <= 0.005 + 1e-9 >= result["accuracy"] - less["accuracy"]
    # the report set is only ever evaluated on report inputs, the selection set never for the report
    assert {seed for _, _, seed in s.report.calls} == {0, 1}
    assert ("optimised", 0.5, 0) in s.report.calls and not any(c[0] == "optimised" for c in s.selection.calls)


def test_a_reference_that_cannot_be_refined_gives_no_report_gain_and_the_table_says_why():
    family, _ = sweep_reference()
    far = [{"family": 0, "scale": 0.15}, {"family": 0, "scale": 0.29}]  # 85% and 71%: around 74%, far apart
    result = report_gain(study(steps=0), [family], point(), far)
    assert not result["dense"] and result["gain"] is None and result["bracket"] is not None
    found = {"sparse": None, "selection": None, "report": result, "second_seed": None}
    table = gains_markdown("analytic", {"B vs A": found}, (INPUTS, INPUTS, 0))
    assert "| B vs A | - | - | - (no reference within the tolerance) | - |" in table


def test_the_headline_table_names_each_report_rows_own_accuracy():
    found = measure_gain(study(), lambda p: [sweep_reference()], [point()], second_seed=True)
    report = {**found["report"], "sub_epoch": 3}
    headline = {
        "inputs": {"selection": {"count": INPUTS, "seed": 0}, "report": {"count": INPUTS, "seed": 0}},
        "sparse": {"grid": 2},
        "selection": {"candidates": []},
        "report": report,
        "second_seed": found["second_seed"],
    }
    lines = headline_markdown("analytic", headline).splitlines()
    assert "400 test inputs; report set: 400 other test inputs" in lines[2]
    (seed0,) = [line for line in lines if "(seed 0)" in line]
    (seed1,) = [line for line in lines if "(seed 1)" in line]
    assert "(74.0%)" in seed0 and "(73.0%)" in seed1


def test_every_network_compare_evaluates_has_its_own_evaluation_folder():
    from nrs_cli.runs.evaluation import network_tag

    runs = "runs/mnist-mini"
    networks = [
        f"{runs}/base/checkpoint.pt",
        f"{runs}/noise-0.25/checkpoint.pt",
        f"{runs}/optimize/co-clean/checkpoints/init00-0.25_round03.pt",  # two co-optimisations name rounds alike
        f"{runs}/optimize/co-noise-0.25/checkpoints/init00-0.25_round03.pt",
    ]
    tags = [network_tag(n) for n in networks]
    assert tags == ["base", "noise-0.25", "co-clean_init00-0.25_round03", "co-noise-0.25_init00-0.25_round03"]


def test_a_reference_of_two_families_is_read_on_the_front_of_both():
    """Against a reference method with two networks, the gain is over the better one near the accuracy."""
    s = study()
    base, points = sweep_reference()
    better = Family("better", None, SHAPE)
    far_above = [ReferencePoint(0.1, isotropic_accuracy(0.1), 100 * math.log(0.1) + BETTER)]  # to be refined
    found = measure_gain(s, lambda p: [(base, points), (better, far_above)], [point()], second_seed=False)
    (candidate,) = found["selection"]["candidates"]
    assert abs(candidate["gain"] - (ABOVE["selection"] - BETTER)) < 2
    report = found["report"]
    assert report["dense"] and {b["family"] for b in report["bracket"]} == {1}
    assert abs(report["gain"]["estimate"] - (ABOVE["report"] - BETTER)) < 2
    assert any(call[0] == "better" for call in s.report.calls)


def test_compare_refines_the_reference_methods_front_points_either_side_of_the_accuracy():
    from nrs_cli.experiments.compare import reference_families
    from nrs_cli.io.spec import load_spec

    rows = [
        {"method": "isotropic", "checkpoint": net, "init": init, "accuracy": accuracy, "mean_log_area": area}
        for net, init, accuracy, area in [("a", 0.1, 0.9, -100.0), ("a", 0.3, 0.7, -50.0), ("b", 0.2, 0.8, -60.0)]
    ]
    spec = load_spec("mnist-mini")

    def networks(accuracy):
        families = reference_families(spec, accuracy, rows)
        return [(family.checkpoint, [p.scale for p in points]) for family, points in families]

    assert networks(0.85) == [("a", [0.1, 0.3]), ("b", [0.2])]  # the network above and the one below
    assert networks(0.75) == [("b", [0.2]), ("a", [0.1, 0.3])]
    assert networks(0.95) == [("a", [0.1, 0.3])]  # nothing above: the nearest below, to be widened
