"""CUDA runs of the engine and of its noise (skipped where there is no GPU, as in CI).

The device check (benchmarks/device_check.sh) runs these first on a lent GPU.
"""

import math

import pytest
import torch
from linear import SHAPE, linear_model

from nrs_cli.method.noise import GaussianNoise, _compiled_counter_normals, counter_normals, input_key, philox4x32
from nrs_cli.method.sampling import SamplingEngine, choose_chunk_size, prepare_model
from nrs_cli.method.smooth import Smooth
from nrs_cli.runs.certification import read_results

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def test_cuda_counts_are_invariant_to_chunking_and_bf16_agrees():
    model = prepare_model(linear_model(), CUDA, channels_last=False)
    x = torch.rand((8, *SHAPE), generator=torch.Generator().manual_seed(0))
    sigma = torch.full(SHAPE, 0.4)
    counts = [
        SamplingEngine(model, 2, SHAPE, CUDA, "fp32", chunk).count(
            x, list(range(8)), sigma, 3000, GaussianNoise(0, "gpu")
        )
        for chunk in (64, 1000, 24000)
    ]
    assert torch.equal(counts[0], counts[1]) and torch.equal(counts[1], counts[2])
    assert counts[0].sum(1).tolist() == [3000] * 8
    bf16 = SamplingEngine(model, 2, SHAPE, CUDA, "bf16", 1000).count(
        x, list(range(8)), sigma, 3000, GaussianNoise(0, "gpu")
    )
    assert (bf16 - counts[0]).abs().max() <= 60
    assert choose_chunk_size(model, SHAPE, CUDA, "fp32") >= 8


def test_philox_words_on_cuda_are_the_cpu_words():
    counter = [torch.randint(0, 2**32, (4096,), dtype=torch.int64) for _ in range(4)]
    key = [torch.randint(0, 2**32, (4096,), dtype=torch.int64) for _ in range(2)]
    cpu = philox4x32(tuple(counter), tuple(key))
    cuda = philox4x32(tuple(c.to(CUDA) for c in counter), tuple(k.to(CUDA) for k in key))
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda))


def test_compiled_counter_noise_on_cuda_matches_the_cpu_code():
    keys = torch.tensor([input_key(0, "estimation", i) for i in (3, 3, 8, 8, 8)], dtype=torch.int64)
    samples = torch.tensor([0, 1, 0, 5, 99_999], dtype=torch.int64)
    cpu = counter_normals(keys, samples, 150_528)  # one ImageNet input's elements
    eager = counter_normals(keys.to(CUDA), samples.to(CUDA), 150_528).cpu()
    compiled = _compiled_counter_normals()(keys.to(CUDA), samples.to(CUDA), 150_528).cpu()
    assert torch.allclose(eager, cpu, rtol=1e-5, atol=1e-5) and torch.allclose(compiled, cpu, rtol=1e-5, atol=1e-5)
    z = compiled.double()
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01


def test_cuda_smooth_reproduces_cohens_radius():
    model = linear_model()
    smooth = Smooth(model.to(CUDA), 2, 0.3, precision="bf16")
    x = torch.rand((6, *SHAPE), generator=torch.Generator().manual_seed(3)).to(CUDA)
    for cert in smooth.certify(x, 100, 10_000, 0.001):
        if not cert.abstained:
            assert math.isclose(cert.radius, 0.3 * cert.icdf, rel_tol=1e-6)


def test_train_and_certify_on_cuda_from_the_command_line(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli("train-base", "--device", "cuda", "--epochs", 2).code == 0
    result = run_cli("certify", "--device", "cuda", "--precision", "bf16", "--sigma", 0.25, "--max", 100, "--n", 2000)
    assert result.code == 0, result.stderr
    rows = [r for r in read_results(tmp_path / "runs/mnist-mini/certify/iso-0.25_n2000.tsv") if r["predict"] != "-1"]
    assert sum(r["correct"] == "1" for r in rows) >= 80
    assert all(math.isclose(float(r["radius"]), 0.25 * float(r["icdf"]), rel_tol=1e-6) for r in rows)
