"""The Python API at the package root: Cohen's Smooth(base_classifier, num_classes, sigma), one input
or a batch, fresh or keyed noise, one-line errors, the caller's model left as it was; optimize_sigma."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear import SHAPE, linear_model
from torch import nn

import nrs_cli
from nrs_cli import ABSTAIN, Certificate, NrsError, Sigma, Smooth, optimize_sigma


def inputs(count=6, seed=2):
    return torch.rand((count, *SHAPE), generator=torch.Generator().manual_seed(seed))


def test_the_root_exports_the_api():
    for name in nrs_cli.__all__:
        assert getattr(nrs_cli, name) is not None
    assert nrs_cli.__version__ and "Smooth" in dir(nrs_cli)
    with pytest.raises(AttributeError):
        nrs_cli.no_such_name  # noqa: B018


def test_cohens_order_one_input_gives_prediction_and_radius():
    model, x = linear_model(), inputs()
    smooth = Smooth(model, 2, 0.3)
    one = smooth.certify(x[0], 32, 500, 0.001, seed=1)
    prediction, radius = one  # Cohen et al.'s pair; the certificate carries the ellipsoid too
    assert isinstance(one, Certificate) and isinstance(prediction, int) and isinstance(radius, float)
    assert one == smooth.certify(x, 32, 500, 0.001, seed=1)[0]  # input 0 of a batch: the same noise
    if prediction != ABSTAIN:
        assert prediction == int(model.label(x[:1])) and radius == pytest.approx(0.3 * one.icdf)
    assert smooth.predict(x[0], 500, 0.001, seed=1) in (0, 1, ABSTAIN)
    assert len(smooth.predict(x, 500, 0.001, batch_size=64)) == len(x)


def test_noise_is_fresh_per_call_unless_seeded():
    smooth, x = Smooth(linear_model(), 2, 0.5), inputs()
    first, second = smooth.certify(x, 16, 100, 0.01), smooth.certify(x, 16, 100, 0.01)
    assert [c.pA_lower for c in first] != [c.pA_lower for c in second]
    torch.manual_seed(7)  # like Cohen et al.'s torch.randn, torch's global generator repeats it
    again = smooth.certify(x, 16, 100, 0.01)
    torch.manual_seed(7)
    assert smooth.certify(x, 16, 100, 0.01) == again
    assert smooth.certify(x, 16, 100, 0.01, seed=3) == smooth.certify(x, 16, 100, 0.01, seed=3, batch_size=5)
    keyed = Smooth(linear_model(), 2, torch.full(SHAPE, 0.5), seed=3)  # a seed for every call
    assert keyed.certify(x, 16, 100, 0.01) == smooth.certify(x, 16, 100, 0.01, seed=3)


def test_a_numpy_integer_is_the_index_of_one_input():
    smooth, x = Smooth(linear_model(), 2, 0.5), inputs()
    keyed = smooth.certify(x[:2], 16, 100, 0.01, indices=[4, 5])
    assert smooth.certify(x[0], 16, 100, 0.01, indices=np.int64(4)) == keyed[0]
    assert smooth.certify(x[:2], 16, 100, 0.01, indices=[np.int32(4), np.uint8(5)]) == keyed
    assert keyed != smooth.certify(x[:2], 16, 100, 0.01, indices=[5, 4])  # the index keys the noise


class Net(nn.Module):
    """BatchNorm and dropout (they act differently in training), a frozen layer, a module left in eval mode."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(4 * 2 * 2, 2)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "channels_last": model.features[0].weight.is_contiguous(memory_format=torch.channels_last),
        "grads": [p.grad for p in model.parameters()],
        "ids": [id(p) for p in model.parameters()],
        "devices": {p.device for p in model.parameters()},
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    assert {k: v for k, v in before.items() if k != "state"} == {k: v for k, v in after.items() if k != "state"}


def test_the_callers_model_is_left_as_it_was():
    torch.manual_seed(0)
    model = Net().to(memory_format=torch.channels_last).train()
    model.features[1].eval()  # e.g. frozen batch statistics
    model.features[0].bias.requires_grad_(False)
    before = snapshot(model)
    smooth = Smooth(model, 2, 0.25)
    smooth.certify(inputs(), 16, 64, 0.01)
    smooth.predict(inputs()[0], 64, 0.01)
    optimize_sigma(model, (inputs(8), torch.tensor([0, 1] * 4)), init=0.25, steps=2, batch_size=4, n0=4)
    assert_same(before, snapshot(model))


def test_a_model_in_training_mode_is_certified_as_in_eval_mode():
    torch.manual_seed(0)
    model = Net().eval()
    expected = Smooth(model, 2, 0.25).certify(inputs(), 16, 64, 0.01, seed=0)
    assert Smooth(model.train(), 2, 0.25).certify(inputs(), 16, 64, 0.01, seed=0) == expected  # no dropout
    assert model.training


def one_line_error(call, *fragments: str) -> None:
    with pytest.raises(NrsError) as err:
        call()
    assert "\n" not in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_every_mismatch_is_a_one_line_error():
    model, x = linear_model(), inputs()
    smooth = Smooth(model, 2, 0.3)
    smooth.certify(x, 8, 16, 0.01)  # learns the input shape 1x4x4 from the first input
    one_line_error(lambda: Smooth(model, 0.3, 2), "num_classes must be an integer", "got 0.3")
    one_line_error(lambda: Smooth(model, 2, "0.3"), "sigma must be a number, a tensor or a Sigma")
    one_line_error(lambda: Smooth(model, 2, -0.3), "positive")
    one_line_error(lambda: Smooth(model, 2, Sigma(torch.zeros(SHAPE), "zeros")), "16 values <= 0")
    tiny = Sigma(torch.full(SHAPE, 1e-300, dtype=torch.float64), "tiny")  # 0 in float32, the engine's precision
    one_line_error(lambda: Smooth(model, 2, tiny), "16 values <= 0 (sigma must be positive) in float32")
    one_line_error(lambda: Smooth(model, 2, Sigma([0.3] * 16, "list")), "a Sigma's values must be a tensor")
    one_line_error(lambda: Smooth(lambda x: x, 2, 0.3), "must be a torch.nn.Module")
    one_line_error(lambda: smooth.certify(x[0, 0], 8, 16, 0.01), "one input (C, H, W) or a batch", "(4, 4)")
    one_line_error(lambda: smooth.certify(x.unsqueeze(0), 8, 16, 0.01), "(1, 6, 1, 4, 4)")
    one_line_error(lambda: smooth.certify(torch.rand(2, 1, 5, 5), 8, 16, 0.01), "1x5x5", "sigma has shape 1x4x4")
    one_line_error(lambda: smooth.certify((x * 255).byte(), 8, 16, 0.01), "floating-point pixels", "uint8")
    one_line_error(lambda: smooth.certify(x.to("meta"), 8, 16, 0.01), "x is on meta but the model is on cpu")
    one_line_error(lambda: smooth.certify(x, 8, 16, 0.01, batch_size=0), "batch_size must be a positive integer")
    one_line_error(lambda: smooth.certify(x, 8, 16, 0.01, indices=[1, 2]), "one non-negative integer per input (6)")
    one_line_error(lambda: smooth.certify(x[0], 8, 16, 0.01, indices=1.5), "one non-negative integer per input (1)")
    one_line_error(lambda: smooth.certify(x[:2], 8, 16, 0.01, indices=[0, -1]), "got [0, -1]")
    one_line_error(lambda: smooth.certify(x, 8, 16, 0.01, seed=-1), "seed must be an integer")
    one_line_error(lambda: smooth.certify(x, 0, 16, 0.01), "n0 and n must be at least 1")
    one_line_error(lambda: Smooth(model, 3, 0.3).certify(x, 8, 16, 0.01), "not (2, 3) class scores")
    one_line_error(lambda: Smooth(Net(), 2, 0.3).certify(torch.rand(2, 3, 4, 4), 8, 16, 0.01), "cannot take 3x4x4")
    one_line_error(lambda: Smooth(linear_model().double(), 2, 0.3).certify(x, 8, 16, 0.01), "torch.float64")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inputs_on_another_device_than_the_model_are_refused():
    model = linear_model().cuda()
    smooth = Smooth(model, 2, 0.3)
    one_line_error(lambda: smooth.certify(inputs(), 8, 16, 0.01), "x is on cpu but the model is on cuda")
    on_gpu = smooth.certify(inputs().cuda(), 8, 16, 0.01, seed=0)
    model.cpu()  # the caller moves the model: the next call follows it
    assert len(smooth.certify(inputs(), 8, 16, 0.01, seed=0)) == len(on_gpu)


def test_optimize_sigma_widens_sigma_where_the_linear_classifier_does_not_look():
    """Ground truth: f depends on x through w.x only, so noise along elements with small |w| is free;
    Algorithm 1 must grow sigma there more than where |w| is large."""
    model, x = linear_model(), inputs(64, seed=0)
    labels = model.label(x)
    sigma = optimize_sigma(model, (x, labels), init=0.2, steps=30, batch_size=16, n0=16, lr=0.05)
    assert isinstance(sigma, Sigma) and sigma.values.shape == SHAPE
    order = model.w.abs().flatten().argsort()
    values = sigma.values.flatten()
    assert values[order[:4]].mean() > 1.5 * values[order[-4:]].mean()
    as_dataset = [(image, int(label)) for image, label in zip(x, labels)]  # any dataset of (image, label)
    again = optimize_sigma(model, as_dataset, init=0.2, steps=30, batch_size=16, n0=16, lr=0.05)
    assert torch.equal(again.values, sigma.values)  # the same arguments, the same sigma
    certificates = Smooth(model, 2, sigma).certify(x[:4], 16, 64, 0.01, seed=0)
    assert all(c.abstained or c.log_area > -1e9 for c in certificates)


def test_optimize_sigma_errors_are_one_line():
    model, x = linear_model(), inputs(8)
    one_line_error(lambda: optimize_sigma(model, (x, torch.arange(8))), "labels run from 0 to 7", "2 class scores")
    one_line_error(lambda: optimize_sigma(model, (x[0], torch.zeros(1))), "images (N, C, H, W) and labels (N,)")
    one_line_error(lambda: optimize_sigma(model, (x, torch.zeros(8)), steps=1), "labels must be class indices")
    one_line_error(lambda: optimize_sigma(model, (x, torch.zeros(8, dtype=torch.long)), steps=0), "steps")
    one_line_error(lambda: optimize_sigma(model, (x, torch.zeros(8, dtype=torch.long)), init=0), "positive")
