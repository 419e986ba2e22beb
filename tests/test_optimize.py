"""Algorithm 1 and the sweep: gradients with a known answer, safety, resume, CLI."""

import csv
import json
import math

import pytest
import torch
from linear import SHAPE, Linear2, linear_engine

from nrs_cli.io.models import load_checkpoint
from nrs_cli.io.spec import load_spec
from nrs_cli.method.algorithm1 import P_HAT_RANGE, algorithm1_step
from nrs_cli.method.certificate import lower_confidence_bound
from nrs_cli.method.fronts import pareto_front
from nrs_cli.method.noise import GaussianNoise
from nrs_cli.method.sigma import SIGMA_BOUNDS, load_sigma
from nrs_cli.runs.optimization import OptimizeJob, PointDone, batch_stream, read_metrics
from nrs_cli.runs.sweep import run_sweep, sweep_summary
from nrs_cli.runs.work import BACKWARD_COST, Progress, Started


def half_blind_model():
    """Uses only the left half of the input: the right half cannot matter."""
    w = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    w[..., 2:] = 0
    return Linear2(w, 0.0)


def confident_inputs(model, count=16):
    x = torch.rand((count, *SHAPE), generator=torch.Generator().manual_seed(1))
    x = x + 0.5 * torch.sign(model.score(x)).view(-1, 1, 1, 1).float() * model.w / model.w.norm()
    return x, model.label(x)


def step(model, log_sigma, optimizer, x, labels, n0=32, seed=0):
    return algorithm1_step(
        linear_engine(model, 128),
        log_sigma,
        optimizer,
        (x, labels, list(range(len(x)))),
        n0,
        GaussianNoise(seed, "train"),
    )


def test_gradient_on_an_ignored_input_is_exactly_minus_one_and_elsewhere_larger():
    model = half_blind_model()
    x, labels = confident_inputs(model)
    log_sigma = torch.full(SHAPE, math.log(0.3), requires_grad=True)
    optimizer = torch.optim.SGD([log_sigma], lr=0.0)  # look at the gradient only
    result = step(model, log_sigma, optimizer, x, labels)
    grad = log_sigma.grad
    assert result.right == 16 and math.isfinite(result.loss)
    # loss = -(sum log sigma + D mean log Phi^-1(p_hat)): the ignored half only sees -sum log sigma
    assert torch.equal(grad[..., 2:], torch.full_like(grad[..., 2:], -1.0))
    # on the used half more noise lowers p_hat, which the area term resists
    assert (grad[..., :2] > -1.0).all()


def test_sigma_grows_where_the_classifier_does_not_look():
    model = half_blind_model()
    x, labels = confident_inputs(model)
    log_sigma = torch.full(SHAPE, math.log(0.3), requires_grad=True)
    optimizer = torch.optim.Adam([log_sigma], lr=0.05)
    for seed in range(30):
        step(model, log_sigma, optimizer, x, labels, seed=seed)
    sigma = log_sigma.detach().exp()
    assert (sigma[..., 2:] > 0.3 * math.exp(0.05 * 25)).all()  # about lr per step, every step
    assert sigma[..., 2:].min() > sigma[..., :2].max()


def test_capped_p_hat_leaves_inputs_past_the_certificate_to_the_sigma_term():
    model = Linear2(half_blind_model().w * 4, 0.0)  # large logits: p_hat between the cap and 1 - 1e-7
    x, labels = confident_inputs(model)
    cap = lower_confidence_bound(256, 256, 0.001)  # all 256 votes right: the largest p_A bound CERTIFY gives
    sigma = torch.full(SHAPE, 0.1)
    p_hat, _ = linear_engine(model, 128).mean_softmax(
        x, labels, list(range(len(x))), sigma, 32, GaussianNoise(0, "train")
    )
    assert cap < p_hat.min() and p_hat.max() < P_HAT_RANGE[1]
    gradients = []
    for p_hat_max in (P_HAT_RANGE[1], cap):
        log_sigma = sigma.log().requires_grad_(True)
        optimizer = torch.optim.SGD([log_sigma], lr=0.0)
        algorithm1_step(
            linear_engine(model, 128),
            log_sigma,
            optimizer,
            (x, labels, list(range(len(x)))),
            32,
            GaussianNoise(0, "train"),
            p_hat_max=p_hat_max,
        )
        gradients.append(log_sigma.grad)
    uncapped, capped = gradients
    assert (uncapped[..., :2] > -1.0).all()  # without the cap the sure inputs still hold sigma down
    assert torch.equal(capped, torch.full_like(capped, -1.0))  # with it only sum log sigma is left


@pytest.mark.parametrize("lr", [1e6, 1e-12])
def test_sigma_stays_positive_and_finite_under_extreme_learning_rates(lr):
    model = half_blind_model()
    x, labels = confident_inputs(model)
    log_sigma = torch.full(SHAPE, math.log(0.3), requires_grad=True)
    optimizer = torch.optim.Adam([log_sigma], lr=lr)
    for seed in range(4):
        step(model, log_sigma, optimizer, x, labels, seed=seed)
    sigma = log_sigma.detach().exp()
    assert torch.isfinite(sigma).all() and (sigma > 0).all()
    assert SIGMA_BOUNDS[0] * 0.999 <= float(sigma.min()) and float(sigma.max()) <= SIGMA_BOUNDS[1] * 1.001


def test_a_batch_with_no_right_vote_takes_no_step():
    model = half_blind_model()
    x, labels = confident_inputs(model)
    log_sigma = torch.full(SHAPE, math.log(0.3), requires_grad=True)
    optimizer = torch.optim.Adam([log_sigma], lr=0.1)
    result = step(model, log_sigma, optimizer, x, 1 - labels)  # every label wrong
    assert result.right == 0 and math.isnan(result.loss)
    assert torch.allclose(log_sigma.detach(), torch.full(SHAPE, math.log(0.3)))


def test_batch_stream_is_a_seeded_sequence_of_permutations():
    batches = [batch_stream(10, 4, seed=0, stream=0, step=s) for s in range(5)]
    flat = [i for b in batches for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert batch_stream(10, 4, 0, 0, 3) == batches[3]  # random access: resume and ranks agree
    assert batch_stream(10, 4, 0, 1, 0) != batches[0] and batch_stream(10, 4, 1, 0, 0) != batches[0]


def test_compare_to_isotropic_interpolates_at_equal_accuracy():
    rows = [
        {"method": "isotropic", "init": 0.2, "accuracy": 0.95, "mean_log_area": -900.0},
        {"method": "isotropic", "init": 0.4, "accuracy": 0.85, "mean_log_area": -700.0},
        {
            "method": "anisotropic",
            "init": 0.2,
            "sub_epoch": 1,
            "accuracy": 0.90,
            "mean_log_area": -300.0,
            "sigma_file": "a.pt",
        },
        {
            "method": "anisotropic",
            "init": 0.2,
            "sub_epoch": 2,
            "accuracy": 0.99,
            "mean_log_area": -100.0,
            "sigma_file": "b.pt",
        },
    ]
    summary = sweep_summary(rows)
    first, second = summary["anisotropic"]
    assert first["gain_at_equal_accuracy"] == pytest.approx(500.0)  # isotropic -800 at 90%
    assert first["nearest_isotropic"] is None  # no isotropic point within one accuracy point
    assert second["gain_at_equal_accuracy"] is None  # beyond the isotropic accuracy range
    assert summary["max_gain_at_equal_accuracy"] == pytest.approx(500.0)
    rows.append(
        {
            "method": "anisotropic",
            "init": 0.4,
            "sub_epoch": 1,
            "accuracy": 0.966,
            "mean_log_area": -400.0,
            "sigma_file": "c.pt",
        }
    )
    rows.append({"method": "isotropic", "init": 0.1, "accuracy": 0.976, "mean_log_area": -800.0})
    third = sweep_summary(rows)["anisotropic"][2]
    assert third["nearest_isotropic"]["gain"] == pytest.approx(400.0)  # 0.976 - 0.966 is one point


def test_gain_is_measured_against_the_isotropic_front():
    # Two isotropic sigmas at 91.4% (the smaller certifies less) and one that loses both accuracy and area.
    iso = [
        (0.914, -1736.7),
        (0.914, -1659.2),
        (0.904, -1578.2),
        (0.896, -1522.6),
        (0.844, -1415.0),
        (0.858, -1414.4),
        (0.802, -1439.9),
    ]
    assert [iso[i] for i in pareto_front(iso)] == [
        (0.914, -1659.2),
        (0.904, -1578.2),
        (0.896, -1522.6),
        (0.858, -1414.4),
    ]
    assert pareto_front([(0.9, -1.0), (0.8, -2.0), (0.9, -1.0)]) == [0, 2]  # identical points both stay
    rows = [{"method": "isotropic", "init": 0.0, "accuracy": a, "mean_log_area": m} for a, m in iso]
    rows.append(
        {
            "method": "anisotropic",
            "init": 0.1,
            "sub_epoch": 1,
            "accuracy": 0.914,
            "mean_log_area": -1359.2,
            "sigma_file": "a.pt",
        }
    )
    (point,) = sweep_summary(rows)["anisotropic"]
    assert point["gain_at_equal_accuracy"] == pytest.approx(300.0)  # not 377.5 against the weaker 91.4%
    assert point["nearest_isotropic"]["gain"] == pytest.approx(300.0)


TINY = {
    "optimize.init": 0.2,
    "optimize.init_step": 0.2,
    "optimize.inits": 2,
    "optimize.sub_epochs": 2,
    "optimize.steps_per_sub_epoch": 2,
    "optimize.batch_size": 8,
    "optimize.n0": 4,
    "optimize.eval_max": 12,
    "optimize.eval_n0": 8,
    "optimize.eval_n": 24,
    "optimize.lr": 0.05,
}


def tiny_sweep(trained_mini, run_dir, on_event=None):
    from nrs_cli.io.loaders import load_split

    spec = load_spec("mnist-mini", TINY)
    model, _ = load_checkpoint(trained_mini / "checkpoint.pt", spec)
    train, test = load_split(spec.data, "train"), load_split(spec.data, "test")
    return run_sweep(OptimizeJob(spec, model, train, test, run_dir, torch.device("cpu")), on_event)


def comparable(rows):
    """Rows without timings, NaN made comparable."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items() if k != "seconds"}
        for r in rows
    ]


class Stop(KeyboardInterrupt):
    pass


def test_resumed_sweep_ends_with_the_same_sigma_and_its_progress_where_it_stopped(trained_mini, tmp_path):
    events = []
    whole = tiny_sweep(trained_mini, tmp_path / "whole", events.append)
    # the work of the whole sweep in noisy samples, known from the start: two isotropic evaluations, then
    # for each of two inits two sub-epochs of two steps of Algorithm 1 (backward passes count 3x), each evaluated
    evaluation, step = 12 * (8 + 24), 8 * 4 * BACKWARD_COST
    total = 2 * evaluation + 2 * 2 * (2 * step + evaluation)
    assert events[0] == Started(total, 0, "")
    done = [event.done for event in events if isinstance(event, Progress)]
    assert done == sorted(done) and done[-1] == total
    assert isinstance(events[1], Progress)  # the isotropic baseline moves the bar
    seen = []

    def interrupt(event):
        seen.append(event)
        if isinstance(event, PointDone) and event.row.method == "anisotropic":
            raise Stop  # after the first optimised round was saved

    with pytest.raises(Stop):
        tiny_sweep(trained_mini, tmp_path / "cut", interrupt)
    partial = read_metrics(tmp_path / "cut")
    assert len(partial) == 3  # two isotropic points, one optimised round
    events = []
    resumed = tiny_sweep(trained_mini, tmp_path / "cut", events.append)
    stopped = [event.done for event in seen if isinstance(event, Progress)][-1]
    assert events[0] == Started(total, stopped, "after sub-epoch 1 of init 1 (σ = 0.2)")
    assert comparable(resumed.rows) == comparable(whole.rows)
    spec = load_spec("mnist-mini")
    for name in ("init00-0.2_sub02.pt", "init01-0.4_sub02.pt"):
        a = load_sigma(tmp_path / "whole" / "sigmas" / name, spec).values
        b = load_sigma(tmp_path / "cut" / "sigmas" / name, spec).values
        assert torch.equal(a, b)


def test_optimize_sigma_cli_end_to_end(run_cli, trained_mini, tmp_path):
    args = [
        "optimize-sigma",
        "--checkpoint",
        trained_mini / "checkpoint.pt",
        "--runs-dir",
        tmp_path,
        "--inits",
        2,
        "--init",
        0.25,
        "--init-step",
        0.25,
        "--sub-epochs",
        1,
        "--steps",
        3,
        "--batch-size",
        16,
        "--n0",
        4,
        "--eval-max",
        20,
        "--eval-n0",
        8,
        "--eval-n",
        32,
    ]
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    run = tmp_path / "mnist-mini" / "optimize" / "sweep"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [(r["method"], r["init"], r["sub_epoch"]) for r in rows] == [
        ("isotropic", "0.25", "0"),
        ("isotropic", "0.5", "0"),
        ("anisotropic", "0.25", "1"),
        ("anisotropic", "0.5", "1"),
    ]
    sigma = load_sigma(run / rows[2]["sigma_file"], load_spec("mnist-mini"))
    assert sigma.metadata["method"] == "anisotropic" and sigma.metadata["init"] == 0.25
    assert float(rows[2]["sigma_mean"]) == pytest.approx(float(sigma.values.double().mean()), rel=1e-6)
    assert all(0 < float(r["accuracy"]) <= 1 for r in rows) and "results:" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["anisotropic"]) == 2 and len(summary["isotropic"]) == 2
    fingerprint = json.loads((run / "manifest.json").read_text())["fingerprint"]
    assert len(fingerprint["train_sha256"]) == len(fingerprint["test_sha256"]) == 64  # the data read, hashed
    # the same command again finds everything done and changes nothing
    before = (run / "metrics.csv").read_text()
    assert run_cli(*args).code == 0 and (run / "metrics.csv").read_text() == before
    # other settings into the same run folder are refused
    result = run_cli(*args[:-2], "--eval-n", 64)
    assert result.code == 2 and "optimize.eval_n (32 → 64)" in result.stderr
    result = run_cli(*args, "--inits", 3)
    assert result.code == 2 and "a different optimize.inits (2 → 3) (delete" in result.stderr


def test_bad_sweep_options(run_cli, trained_mini, tmp_path):
    base = ["optimize-sigma", "--checkpoint", trained_mini / "checkpoint.pt", "--runs-dir", tmp_path]
    for args, message in [
        (["--init", -0.1], "optimize.init: expected a sigma from 1e-06 to 1000"),
        (["--init", 0.1, "--init-step", -0.1, "--inits", 3], "every initial sigma must be positive"),
        (["--inits", 0], "optimize.inits: expected from 1 to 10^4 constants"),
        (["--eval-alpha", 2], "optimize.eval_alpha: expected a number strictly between 0 and 1"),
        (["--lr", 0], "optimize.lr: expected a positive learning rate"),
        (["--eval-n", 4, "--cap-p-hat"], "cap_p_hat needs an evaluation that can certify"),
    ]:
        result = run_cli(*base, *args)
        assert result.code == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "mnist-mini").exists()
