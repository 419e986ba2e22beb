import math

import pytest
import torch

from nrs_cli.io.spec import load_spec
from nrs_cli.method.sigma import SIGMA_FORMAT, constant_sigma, load_sigma, parse_sigma, save_sigma


def test_sigma_file_round_trip_keeps_values_and_metadata(tmp_path):
    spec = load_spec("mnist-mini")
    values = torch.rand(1, 28, 28) + 0.1
    save_sigma(tmp_path / "s.pt", values, spec, method="anisotropic", init=0.3, epoch=2)
    raw = torch.load(tmp_path / "s.pt", weights_only=True)  # plain data, readable without nrs
    assert raw["format"] == SIGMA_FORMAT and raw["input_shape"] == [1, 28, 28]
    sigma = load_sigma(tmp_path / "s.pt", spec)
    assert torch.equal(sigma.values, values) and sigma.metadata["init"] == 0.3 and sigma.label == "s"
    assert sigma.source == str(tmp_path / "s.pt") and not sigma.isotropic


def test_bare_tensor_and_scalar_sigmas(tmp_path):
    spec = load_spec("mnist-mini")
    torch.save(torch.full((1, 28, 28), 0.5, dtype=torch.float64), tmp_path / "bare.pt")
    bare = parse_sigma(str(tmp_path / "bare.pt"), spec)
    scalar = parse_sigma("0.5", spec)
    assert bare.values.dtype == torch.float32 and bare.isotropic and scalar.isotropic
    assert bare.digest == scalar.digest == constant_sigma(0.5, (1, 28, 28)).digest
    assert scalar.source == "" and scalar.label == "0.5"
    assert scalar.log_sum == pytest.approx(784 * math.log(0.5), rel=1e-12)
