"""Numbers a reviewer accepts: disjoint selection and report sets, dense references, bootstrap intervals."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pytest
import torch

from nrs_cli.io.data import input_set, input_set_pools
from nrs_cli.io.tables import sidecar
from nrs_cli.method.statistics import (
    Outcomes,
    certified_accuracy_difference,
    gain_at_equal_accuracy,
    mean_log_area_difference,
)
from nrs_cli.runs.certification import read_results
from nrs_cli.runs.reference import ReferencePoint, front_bracket, is_dense, refine, scale_neighbours


def test_selection_and_report_sets_never_overlap_and_are_class_balanced():
    rng = random.Random(7)
    for trial in range(40):
        classes = rng.randint(2, 12)
        weights = [rng.random() + 0.1 for _ in range(classes)]
        labels = rng.choices(range(classes), weights=weights, k=rng.randint(1, 400))
        pools = input_set_pools(labels, seed=trial)
        selection, report = pools["selection"], pools["report"]
        assert not set(selection) & set(report)
        assert sorted(selection + report) == list(range(len(labels)))  # every input in one of them
        for pool in (selection, report):
            assert len(set(pool)) == len(pool)
            available = Counter(labels[i] for i in pool)
            for size in (10, 50, len(pool)):  # any prefix: each class within one of the most taken, while it lasts
                counts = Counter(labels[i] for i in pool[:size])
                most = max(counts.values(), default=0)
                assert all(counts[c] >= min(available[c], most - 1) for c in available)
        assert input_set_pools(labels, seed=trial) == pools  # seeded
    assert input_set_pools(list(range(10)) * 20, 0) != input_set_pools(list(range(10)) * 20, 1)


def test_input_sets_of_a_split_and_their_limits():
    test = [(torch.zeros(1), label) for label in [0, 1, 2] * 10]
    report = input_set(test, "report", 6, seed=3)
    selection = input_set(test, "selection", -1, seed=3)
    assert len(report) == 6 and len(selection) == 15 and not set(report) & set(selection)
    assert sorted(Counter(test[i][1] for i in report).values()) == [2, 2, 2]
    assert input_set(test, "report", 16, seed=3) == input_set(test, "report", -1, seed=3)  # as --max: all there is


def outcomes(correct, areas, indices=None):
    correct = np.asarray(correct, dtype=bool)
    areas = np.where(correct, np.asarray(areas, dtype=float), -np.inf)
    indices = tuple(range(len(correct))) if indices is None else tuple(indices)
    return Outcomes(indices, correct, areas, np.where(correct, 0.1, 0.0))


def test_bootstrap_interval_of_a_known_difference_covers_it_95_percent_of_the_time():
    """Paired data with a known mean difference: the 95% interval holds it in about 95% of repeats."""
    rng = np.random.default_rng(20261203)
    truth, covered, repeats = 2.0, 0, 300
    for repeat in range(repeats):
        shared = rng.normal(0, 5, 150)  # what both sides have in common, per input: pairing removes it
        a = outcomes(np.ones(150), shared + truth + rng.normal(0, 1, 150))
        b = outcomes(np.ones(150), shared + rng.normal(0, 1, 150))
        interval = mean_log_area_difference(a, b, resamples=400, seed=repeat)
        covered += interval.low <= truth <= interval.high
    assert 0.91 <= covered / repeats <= 0.985, covered / repeats


def test_certified_accuracy_difference_interval_covers_a_known_difference():
    rng = np.random.default_rng(5)
    covered, repeats = 0, 300
    for repeat in range(repeats):
        u = rng.random(300)
        a = outcomes(u < 0.8, np.ones(300))  # certified accuracy 0.8 vs 0.7, paired through u
        b = outcomes(u < 0.7, np.ones(300))
        (interval,) = certified_accuracy_difference(a, b, "log_area", [0.5], resamples=400, seed=repeat)
        covered += interval.low <= 0.1 <= interval.high
    assert 0.91 <= covered / repeats <= 0.99, covered / repeats


def test_gain_at_equal_accuracy_is_the_area_above_the_line_through_the_two_references():
    point = outcomes([1, 1, 1, 0], [-10, -20, -30, 0])  # accuracy 0.75, mean -20
    first = outcomes([1, 1, 1, 1], [-50, -50, -50, -50])  # accuracy 1.0, mean -50
    second = outcomes([1, 1, 0, 0], [-30, -30, 0, 0])  # accuracy 0.5, mean -30
    gain = gain_at_equal_accuracy(point, first, second, resamples=200)
    assert gain.estimate == pytest.approx(-20 - (-40))  # the reference at 0.75 is halfway: -40
    assert gain.low <= gain.estimate <= gain.high
    with pytest.raises(ValueError, match="same inputs"):
        gain_at_equal_accuracy(point, first, outcomes([1, 1, 0, 0], [-30, -30, 0, 0], indices=[4, 5, 6, 7]))


def synthetic_reference(inputs: int = 200):
    """An isotropic reference on ``inputs`` inputs: input k stays correct up to sigma 0.05 + k / inputs * 0.6,
    certified log-area grows with sigma, so accuracy falls in steps of one input as sigma grows."""
    limits = 0.05 + np.arange(inputs) / inputs * 0.6
    evaluated = []

    def evaluate(scale: float) -> ReferencePoint:
        evaluated.append(scale)
        correct = limits >= scale
        area = np.where(correct, 1000 * math.log(scale), -np.inf)
        found = Outcomes(tuple(range(inputs)), correct, area, np.where(correct, scale, 0.0))
        return ReferencePoint(scale, found.accuracy, found.mean_log_area, found)

    return evaluate, evaluated


@pytest.mark.parametrize("target", [0.9, 0.755, 0.42, 0.33])
def test_the_refined_reference_brackets_the_compared_accuracy(target):
    evaluate, evaluated = synthetic_reference()
    sparse = [evaluate(s) for s in (0.1, 0.4, 0.7)]  # a grid three points wide
    points = refine(evaluate, sparse, target, tolerance=0.005, steps=12)
    more, less = front_bracket(points, target)
    assert is_dense(points, target, 0.005)
    assert less.accuracy < target <= more.accuracy
    close = more.accuracy - target <= 0.005 + 1e-9 and target - less.accuracy <= 0.005 + 1e-9
    low, high = scale_neighbours(points, target)
    assert close or high <= 1.01 * low
    assert len(evaluated) - 3 <= 12
    before = front_bracket(sparse, target)  # the sparse grid's chord spans far more than an accuracy point
    assert before is None or before[0].accuracy - before[1].accuracy > 0.05


def test_a_reference_outside_the_accuracy_range_is_widened():
    evaluate, _ = synthetic_reference()
    points = refine(evaluate, [evaluate(0.3), evaluate(0.35)], 0.95, tolerance=0.005, steps=12)
    assert min(p.scale for p in points) < 0.3 and is_dense(points, 0.95, 0.005)
    points = refine(evaluate, [evaluate(0.1), evaluate(0.12)], 0.2, tolerance=0.005, steps=12)
    assert max(p.scale for p in points) > 0.12 and is_dense(points, 0.2, 0.005)


@pytest.mark.slow
def test_sweep_chooses_on_the_selection_set_and_a_report_may_not_reuse_it(run_cli, trained_mini, tmp_path):
    sweep = [
        "optimize-sigma", "--checkpoint", trained_mini / "checkpoint.pt", "--runs-dir", tmp_path, "--inits", 1,
        "--sub-epochs", 1, "--steps", 2, "--batch-size", 8, "--n0", 4, "--eval-max", 20, "--eval-n0", 8,
        "--eval-n", 32,
    ]  # fmt: skip
    assert run_cli(*sweep).code == 0
    sigma_file = tmp_path / "mnist-mini/optimize/sweep/sigmas/init00-0.1_sub01.pt"
    chosen = torch.load(sigma_file, weights_only=True)["chosen_on"]
    assert chosen["set"] == "selection" and len(chosen["indices"]) == 20
    certify = ["certify", "--checkpoint", trained_mini / "checkpoint.pt", "--sigma", sigma_file, "--n0", 8,
               "--n", 32, "--max", 15, "--inputs", "report"]  # fmt: skip
    out = tmp_path / "report.tsv"
    assert run_cli(*certify, "--out", out).code == 0
    reported = [int(row["idx"]) for row in read_results(out)]
    assert len(reported) == 15 and not set(reported) & set(chosen["indices"])
    manifest = json.loads(sidecar(out, "manifest").read_text())
    assert manifest["fingerprint"]["inputs"] == "report"
    # in the report set's seeded order, not the split's; read so even without its manifest (as old side-cars are)
    assert reported != sorted(reported)
    sidecar(out, "manifest").rename(tmp_path / "kept.json")
    assert [int(row["idx"]) for row in read_results(out)] == reported
    (tmp_path / "kept.json").rename(sidecar(out, "manifest"))
    # a sigma chosen on inputs that the report would include is refused
    payload = torch.load(sigma_file, weights_only=True)
    payload.pop("content_sha256")
    payload["chosen_on"]["indices"] = reported[:3]
    torch.save(payload, tmp_path / "reused.pt")
    result = run_cli(*certify[:4], tmp_path / "reused.pt", *certify[5:], "--out", tmp_path / "mixed.tsv")
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and "was chosen on 3 of these report inputs" in lines[0]
    assert not (tmp_path / "mixed.tsv").exists()


def test_an_evaluation_of_fewer_inputs_reads_the_first_rows_of_a_longer_one(trained_mini, tmp_path):
    """figures evaluates a sigma on 200 report inputs, compare the same sigma on 100: one table serves both."""
    from nrs_cli.io.loaders import load_split
    from nrs_cli.io.spec import load_spec
    from nrs_cli.method.sigma import parse_sigma
    from nrs_cli.runs.evaluation import Evaluator, Settings

    spec = load_spec("mnist-mini")
    test_set, sigma, settings = load_split(spec.data, "test"), parse_sigma("0.3", spec), Settings(4, 16, 0.001, 0)
    checkpoint = str(trained_mini / "checkpoint.pt")
    cpu = torch.device("cpu")
    longer = Evaluator(spec, test_set, "report", 6, tmp_path, cpu).outcomes(checkpoint, sigma, settings)
    shorter = Evaluator(spec, test_set, "report", 3, tmp_path, cpu).outcomes(checkpoint, sigma, settings)
    assert longer.indices == tuple(input_set(test_set, "report", 6, spec.inputs.seed))
    assert shorter.indices == longer.indices[:3] and shorter.log_area.tolist() == longer.log_area[:3].tolist()
    assert len(read_results(next(tmp_path.rglob("*.tsv")))) == 6  # no file changed
