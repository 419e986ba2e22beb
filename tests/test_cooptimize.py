"""Co-optimisation: fine-tuning follows the per-element sigma, resume is exact, the comparison is drawn from files."""

import json
import math
import shutil

import pytest
import torch
from torch import nn

from nrs_cli.errors import NrsError
from nrs_cli.io.data import ImageTensorDataset
from nrs_cli.io.loaders import load_split
from nrs_cli.io.models import load_checkpoint
from nrs_cli.io.spec import load_spec
from nrs_cli.runs.cooptimize import cooptimize_run, finetune_under_noise
from nrs_cli.runs.optimization import OptimizeContext, OptimizeJob, PointDone, read_metrics
from nrs_cli.runs.work import BACKWARD_COST, Progress, Started

HALVES = {
    "data.input_shape": [1, 4, 4],
    "data.num_classes": 2,
    "data.mean": [0.0],
    "data.std": [1.0],
    "cooptimize.finetune_steps": 150,
    "cooptimize.finetune_batch_size": 32,
    "cooptimize.finetune_lr": 0.05,
    "optimize.eval_max": 4,
}


def redundant_halves(count=256):
    """Both halves of every image say the label: either half alone is enough."""
    labels = torch.arange(count) % 2
    images = torch.where(labels.view(-1, 1, 1, 1) == 1, 200, 55).to(torch.uint8).expand(count, 1, 4, 4).clone()
    return ImageTensorDataset(images, labels)


def weight_on_each_half(noise_left: float, noise_right: float) -> tuple[float, float]:
    spec = load_spec("mnist-mini", HALVES)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
    data = redundant_halves()
    job = OptimizeJob(spec, model, data, data, None, torch.device("cpu"))
    context = OptimizeContext.build(job)
    sigma = torch.full((1, 4, 4), noise_left)
    sigma[..., 2:] = noise_right
    optimizer = torch.optim.Adam(list(model.parameters()), lr=spec.cooptimize.finetune_lr)
    finetune_under_noise(context, optimizer, sigma, "test", 1)
    w = (model[1].weight[1] - model[1].weight[0]).view(4, 4)
    return float(w[:, :2].abs().sum()), float(w[:, 2:].abs().sum())


def test_fine_tuning_learns_to_ignore_the_half_under_heavy_noise():
    left, right = weight_on_each_half(0.05, 5.0)
    assert right < 0.2 * left  # the noisy right half is (nearly) ignored
    left, right = weight_on_each_half(5.0, 0.05)
    assert left < 0.2 * right  # and the other way round: the noise's shape decides, not the data


TINY = {
    "optimize.inits": 1,
    "optimize.init": 0.3,
    "optimize.batch_size": 16,
    "optimize.n0": 4,
    "optimize.eval_max": 8,
    "optimize.eval_n0": 8,
    "optimize.eval_n": 32,
    "cooptimize.rounds": 2,
    "cooptimize.finetune_steps": 3,
    "cooptimize.finetune_batch_size": 16,
    "cooptimize.sigma_steps": 2,
}


class Stop(Exception):
    pass


def tiny_cooptimize(trained_mini, run_dir, on_event=None, rounds=2):
    spec = load_spec("mnist-mini", {**TINY, "cooptimize.rounds": rounds})
    model, _ = load_checkpoint(trained_mini / "checkpoint.pt", spec)
    train, test = load_split(spec.data, "train"), load_split(spec.data, "test")
    job = OptimizeJob(spec, model, train, test, run_dir, torch.device("cpu"), str(trained_mini / "checkpoint.pt"))
    return cooptimize_run(job, on_event)


def test_resumed_cooptimisation_ends_with_the_same_network_and_sigma(trained_mini, tmp_path):
    events = []
    whole = tiny_cooptimize(trained_mini, tmp_path / "whole", events.append)
    # two rounds of three fine-tuning steps, two steps of Algorithm 1 and an evaluation, in noisy samples
    round_work = 3 * 16 * BACKWARD_COST + 2 * 16 * 4 * BACKWARD_COST + 8 * (8 + 32)
    assert events[0] == Started(2 * round_work, 0, "")
    assert [event.done for event in events if isinstance(event, Progress)][-1] == 2 * round_work
    seen = []

    def interrupt(event):
        seen.append(event)
        if isinstance(event, PointDone):
            raise Stop  # after the first round was saved

    with pytest.raises(Stop):
        tiny_cooptimize(trained_mini, tmp_path / "cut", interrupt)
    assert len(read_metrics(tmp_path / "cut")) == 1
    events = []
    resumed = tiny_cooptimize(trained_mini, tmp_path / "cut", events.append)
    assert events[0] == Started(2 * round_work, round_work, "after round 1 of init 1 (σ = 0.3)")
    without_time = [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.rows]
    assert without_time == [{k: v for k, v in r.items() if k != "seconds"} for r in whole.rows]
    assert [r["method"] for r in whole.rows] == ["co-optimized", "co-optimized"]
    name = "init00-0.3_round02.pt"
    sigmas = [torch.load(tmp_path / run / "sigmas" / name, weights_only=True)["sigma"] for run in ("whole", "cut")]
    assert torch.equal(*sigmas)
    networks = [torch.load(tmp_path / run / "checkpoints" / name, weights_only=True) for run in ("whole", "cut")]
    assert all(
        torch.equal(networks[0]["state_dict"][k], networks[1]["state_dict"][k]) for k in networks[0]["state_dict"]
    )
    base = torch.load(trained_mini / "checkpoint.pt", weights_only=True)["state_dict"]
    tuned = torch.load(tmp_path / "whole" / "checkpoints/init00-0.3_round02.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(base[k], tuned[k]) for k in base)  # the network did change
    with pytest.raises(NrsError, match=r"a different cooptimize\.rounds \(2 → 3\)"):  # other settings: refused
        tiny_cooptimize(trained_mini, tmp_path / "whole", rounds=3)


@pytest.mark.slow
def test_compare_draws_every_method_from_its_run_files(run_cli, trained_mini, tmp_path, monkeypatch):
    import nrs_cli.experiments.compare as methods

    drawn = {}
    real = methods.plot_methods

    def spy(curves, fronts, out_stem, title=""):
        drawn.update(curves)
        return real(curves, fronts, out_stem, title)

    monkeypatch.setattr(methods, "plot_methods", spy)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained_mini, tmp_path / "runs" / "mnist-mini" / "base")
    (tmp_path / "runs" / "mnist-mini" / "base" / "train_state.pt").unlink()  # a given checkpoint: used as it is
    settings = [f"{key}={value}" for key, value in {**TINY, "optimize.inits": 2, "optimize.init_step": 0.2}.items()]
    settings += [
        "figures.inits=1", "figures.sub_epochs=1", "figures.steps_per_sub_epoch=2", "figures.eval_max=8",
        "compare.noise_sigmas=[0.25]", "compare.cooptimize_from=0.25", "compare.cooptimize_inits=[0.25]",
        "compare.sweep_factors=[1.0, 1.5]", "compare.certify_max=6", "certify.n0=8", "certify.n=40",
        "train.epochs=1", "data.train_size=512", "inputs.refine_steps=2", "inputs.bootstrap=200",
    ]  # fmt: skip
    result = run_cli("compare", *[part for s in settings for part in ("--set", s)])
    assert result.code == 0, result.stderr
    runs = tmp_path / "runs" / "mnist-mini"
    expected = {
        "A": [r for r in read_metrics(runs / "optimize/figures") if r["method"] == "isotropic"],
        "B": [r for r in read_metrics(runs / "optimize/figures") if r["method"] == "anisotropic"],
        "C": [r for r in read_metrics(runs / "optimize/noise-0.25") if r["method"] == "isotropic"],
        "C'": [r for r in read_metrics(runs / "optimize/noise-0.25") if r["method"] == "anisotropic"],
        "D": read_metrics(runs / "optimize/co-clean") + read_metrics(runs / "optimize/co-noise-0.25"),
    }
    for method, rows in expected.items():
        points = [(r["accuracy"], r["mean_log_area"]) for r in rows if math.isfinite(r["mean_log_area"])]
        assert drawn[methods.LABELS[method]] == points, method
    summary = json.loads((tmp_path / "figures" / "mnist-mini" / "compare-summary.json").read_text())
    assert set(summary["best"]) == {"A", "B", "C", "C'", "D"} and "D vs C" in summary["gains"]
    table = (tmp_path / "figures" / "mnist-mini" / "compare-table-radius.md").read_text()
    assert all(methods.LABELS[m] in table for m in methods.LABELS) and "| 0.25 | 0.5 | 0.75 | 1 |" in table
