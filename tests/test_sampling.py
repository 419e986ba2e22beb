"""The Monte Carlo engine: counts, invariance to batching, memory, the differentiable path."""

import pytest
import torch
from linear import SHAPE, linear_engine, linear_model
from torch import nn

from nrs_cli.method.noise import NOISE_BLOCK, GaussianNoise, block_seed
from nrs_cli.method.sampling import SamplingEngine, prepare_model


@pytest.mark.parametrize("counter", [False, True])
def test_noise_depends_only_on_seed_index_and_phase(counter):
    noise = GaussianNoise(3, "estimation", counter)
    whole = noise.fill(torch.empty(300, *SHAPE), 42, 0, 300)
    pieces = torch.cat([noise.fill(torch.empty(e - s, *SHAPE), 42, s, e) for s, e in ((0, 5), (5, 130), (130, 300))])
    assert torch.equal(whole, pieces)
    assert torch.equal(noise.fill(torch.empty(10, *SHAPE), 42, 0, 10), whole[:10])  # a prefix for smaller n
    other_phase = GaussianNoise(3, "selection", counter).fill(torch.empty(10, *SHAPE), 42, 0, 10)
    assert not torch.equal(other_phase, whole[:10])
    assert not torch.equal(noise.fill(torch.empty(10, *SHAPE), 43, 0, 10), whole[:10])
    assert not torch.equal(GaussianNoise(4, "estimation", counter).fill(torch.empty(10, *SHAPE), 42, 0, 10), whole[:10])
    assert block_seed(3, "estimation", 42, 1) != block_seed(3, "estimation", 42, 0)
    assert abs(float(whole.mean())) < 0.05 and abs(float(whole.std()) - 1) < 0.05


@pytest.mark.parametrize("counter", [False, True])
def test_counts_are_invariant_to_chunk_size_and_batching(counter):
    model = linear_model()
    x = torch.rand((6, *SHAPE), generator=torch.Generator().manual_seed(0))
    sigma = 0.3 + torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    indices = [10, 11, 12, 13, 14, 15]
    reference = linear_engine(model, 1000).count(x, indices, sigma, 150, GaussianNoise(0, "p", counter))
    for chunk in (1, 7, NOISE_BLOCK, 333):
        engine = linear_engine(model, chunk)
        assert torch.equal(engine.count(x, indices, sigma, 150, GaussianNoise(0, "p", counter)), reference)
        one_by_one = torch.cat(
            [engine.count(x[i : i + 1], [indices[i]], sigma, 150, GaussianNoise(0, "p", counter)) for i in range(6)]
        )
        assert torch.equal(one_by_one, reference)
    assert reference.sum(1).tolist() == [150] * 6


class Constant(nn.Module):
    def __init__(self, label, classes=5):
        super().__init__()
        self.label, self.classes = label, classes

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.label), self.classes).float()


def test_counts_land_on_the_right_input_and_class():
    engine = SamplingEngine(Constant(3), 5, SHAPE, torch.device("cpu"), "fp32", 16)
    counts = engine.count(torch.zeros(4, *SHAPE), [0, 1, 2, 3], torch.ones(SHAPE), 50, GaussianNoise(0, "p"))
    assert counts.tolist() == [[0, 0, 0, 50, 0]] * 4


class Widest(nn.Module):
    """Records the largest batch it is given."""

    def __init__(self):
        super().__init__()
        self.widest = 0

    def forward(self, x):
        self.widest = max(self.widest, len(x))
        return x.flatten(1)[:, :2]


def test_memory_does_not_grow_with_n():
    spy = Widest()
    engine = SamplingEngine(spy, 2, SHAPE, torch.device("cpu"), "fp32", 256)
    counts = engine.count(torch.zeros(1, *SHAPE), [0], torch.ones(SHAPE), 100_000, GaussianNoise(0, "p"))
    assert counts.sum() == 100_000 and spy.widest == 256


def test_automatic_chunk_size_is_cache_sized_on_cpu():
    from nrs_cli.io.models import build_model
    from nrs_cli.io.spec import load_spec

    spec = load_spec("mnist")
    engine = SamplingEngine(
        prepare_model(build_model(spec), torch.device("cpu")), 10, (1, 28, 28), torch.device("cpu"), "fp32"
    )
    assert NOISE_BLOCK <= engine.chunk_size <= 256 and engine.chunk_size % NOISE_BLOCK == 0


def test_bf16_counts_agree_with_fp32():
    model = linear_model()
    x = torch.rand((4, *SHAPE), generator=torch.Generator().manual_seed(0))
    sigma = torch.full(SHAPE, 0.5)
    fp32 = linear_engine(model).count(x, [0, 1, 2, 3], sigma, 500, GaussianNoise(0, "p"))
    engine = linear_engine(model)
    engine.precision = "bf16"
    bf16 = engine.count(x, [0, 1, 2, 3], sigma, 500, GaussianNoise(0, "p"))
    assert (fp32 - bf16).abs().max() <= 10  # only samples within bf16 rounding of the boundary move


def test_mean_softmax_matches_a_direct_computation_and_its_gradient():
    model = linear_model()
    x = torch.rand((3, *SHAPE), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1])
    log_sigma = torch.full(SHAPE, -1.0, requires_grad=True)
    noise = GaussianNoise(0, "train")
    engine = linear_engine(model, chunk_size=7)
    p_hat, counts = engine.mean_softmax(x, labels, [5, 6, 7], log_sigma.exp(), 20, noise)
    p_hat.sum().backward()
    engine_grad = log_sigma.grad.clone()

    log_sigma.grad = None
    direct = []
    for i in range(3):
        z = noise.fill(torch.empty(20, *SHAPE), 5 + i, 0, 20)
        probabilities = model(x[i] + log_sigma.exp() * z).softmax(1)[:, labels[i]]
        direct.append(probabilities.mean())
    torch.stack(direct).sum().backward()
    assert torch.allclose(p_hat, torch.stack(direct).detach(), atol=1e-6)
    assert torch.allclose(engine_grad, log_sigma.grad, atol=1e-6)
    assert counts.sum(1).tolist() == [20, 20, 20]


def test_prepare_model_freezes_parameters():
    model = prepare_model(nn.Linear(3, 2), torch.device("cpu"), channels_last=False)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
