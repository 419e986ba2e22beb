"""CUDA runs of the engine (skipped where there is no GPU, as in CI)."""

import pytest
import torch
from linear import SHAPE, linear_model

from nrs_cli.noise import GaussianNoise
from nrs_cli.sampling import SamplingEngine, choose_chunk_size, prepare_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_counts_are_invariant_to_chunking_and_bf16_agrees():
    device = torch.device("cuda")
    model = prepare_model(linear_model(), device, channels_last=False)
    x = torch.rand((8, *SHAPE), generator=torch.Generator().manual_seed(0))
    sigma = torch.full(SHAPE, 0.4)
    counts = [
        SamplingEngine(model, 2, SHAPE, device, "fp32", chunk).count(
            x, list(range(8)), sigma, 3000, GaussianNoise(0, "gpu")
        )
        for chunk in (64, 1000, 24000)
    ]
    assert torch.equal(counts[0], counts[1]) and torch.equal(counts[1], counts[2])
    assert counts[0].sum(1).tolist() == [3000] * 8
    bf16 = SamplingEngine(model, 2, SHAPE, device, "bf16", 1000).count(
        x, list(range(8)), sigma, 3000, GaussianNoise(0, "gpu")
    )
    assert (bf16 - counts[0]).abs().max() <= 60
    assert choose_chunk_size(model, SHAPE, device, "fp32") >= 8
