"""Theorem 3.1 and the statistics against analytic ground truth."""

import math

import numpy as np
import pytest
import torch
from linear import SHAPE, linear_engine, linear_model
from scipy.stats import norm

from nrs_cli.errors import NrsError
from nrs_cli.method.certificate import (
    ABSTAIN,
    certificate,
    class_bounds,
    lower_confidence_bound,
    upper_confidence_bound,
)
from nrs_cli.method.sigma import Sigma, constant_sigma
from nrs_cli.method.smooth import Smooth


def anisotropic_sigma(seed=1):
    generator = torch.Generator().manual_seed(seed)
    return Sigma(0.05 + torch.rand(SHAPE, generator=generator), "random")


def inputs_with_margins(model, sigma, count=24, seed=2):
    """Inputs whose exact pA spreads over (0.5, 1)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((count, *SHAPE), generator=generator)
    # shift each input along w so that its score hits a chosen margin (in sigma units)
    spread = float((model.w * sigma.values).norm())
    targets = torch.linspace(-3.5, 3.5, count, dtype=torch.float64) * spread
    shift = (targets - model.score(x)) / float(model.w.double().norm() ** 2)
    return (x.double() + shift.view(-1, 1, 1, 1) * model.w.double()).float()


def test_certified_ellipsoid_is_sound_against_the_exact_smoothed_classifier():
    model, sigma = linear_model(), anisotropic_sigma()
    x = inputs_with_margins(model, sigma)
    smooth = Smooth.from_engine(linear_engine(model), sigma, seed=0)
    certificates = smooth.certify(x, n0=64, n=2000, alpha=0.001)
    truth = model.label(x)
    exact_R = norm.ppf(model.p_top(x, sigma.values).numpy())
    certified = 0
    generator = torch.Generator().manual_seed(3)
    for i, cert in enumerate(certificates):
        if cert.abstained:
            continue
        certified += 1
        assert cert.prediction == truth[i]
        assert cert.icdf <= exact_R[i]  # the Monte Carlo certificate never claims more than the truth
        # points inside the ellipsoid ||delta / sigma|| < R: the worst one and random ones keep g's label
        u = torch.randn((200, *SHAPE), generator=generator, dtype=torch.float64)
        u = (
            u
            / u.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            * torch.rand(200, 1, 1, 1, generator=generator, dtype=torch.float64)
        )
        u = torch.cat([u, model.worst_direction(x[i : i + 1], sigma.values) * 0.999999])
        delta = cert.icdf * sigma.values.double() * u
        assert (model.label(x[i].double() + delta) == truth[i]).all()
    assert certified >= 18  # most margins are large enough to certify


def test_theorem_is_tight_for_a_linear_classifier():
    model, sigma = linear_model(), anisotropic_sigma()
    x = inputs_with_margins(model, sigma)
    truth = model.label(x)
    p_top = model.p_top(x, sigma.values)
    for i in range(len(x)):
        if p_top[i] <= 0.5 + 1e-9:
            continue
        cert = certificate(int(truth[i]), float(p_top[i]), None, sigma)  # exact pA
        u = model.worst_direction(x[i : i + 1], sigma.values)[0]
        inside = x[i].double() + (1 - 1e-6) * cert.icdf * sigma.values.double() * u
        outside = x[i].double() + (1 + 1e-6) * cert.icdf * sigma.values.double() * u
        assert model.label(inside[None]) == truth[i]
        assert model.label(outside[None]) != truth[i]


def test_isotropic_sigma_reproduces_cohens_radius_exactly():
    sigma = constant_sigma(0.375, (3, 8, 8))  # exactly representable: the noise uses float32 sigma
    for p in (0.51, 0.8, 0.99, 0.999999):
        cert = certificate(4, p, None, sigma)
        cohen = 0.375 * norm.ppf(p)  # Cohen et al.: radius = sigma * Phi^-1(pA_lower)
        assert cert.radius == cohen
        assert cert.gm_radius == pytest.approx(cohen, rel=1e-14)
        assert cert.log_area == pytest.approx(192 * math.log(cohen), rel=1e-14)
    # any other constant agrees to the float32 precision in which the noise is applied
    assert certificate(0, 0.9, None, constant_sigma(0.37, (1, 2, 2))).radius == pytest.approx(
        0.37 * norm.ppf(0.9), rel=1e-7
    )


def test_certificate_quantities_for_an_anisotropic_sigma():
    values = torch.tensor([0.1, 0.4, 1.6, 0.4]).view(1, 2, 2)
    cert = certificate(1, 0.9, None, Sigma(values, "v"))
    R = norm.ppf(0.9)
    assert cert.icdf == pytest.approx(R)
    assert cert.radius == pytest.approx(0.1 * R, rel=1e-6)  # the smallest semi-axis
    assert cert.gm_radius == pytest.approx(0.4 * R, rel=1e-6)  # geometric mean 0.4
    assert cert.log_area == pytest.approx(float(np.log(values.numpy()).sum()) + 4 * math.log(R), rel=1e-6)


def test_abstains_at_or_below_one_half():
    sigma = constant_sigma(0.5, (1, 2, 2))
    for p in (0.5, 0.3, 0.0):
        cert = certificate(0, p, None, sigma)
        assert cert.prediction == ABSTAIN and cert.radius == 0 and cert.log_area == -math.inf


def test_clopper_pearson_lower_bound_fails_at_most_at_rate_alpha():
    rng = np.random.default_rng(0)
    trials, alpha = 20000, 0.05
    for p, n in ((0.9, 100), (0.6, 50), (0.99, 1000)):
        successes = rng.binomial(n, p, size=trials)
        failures = sum(lower_confidence_bound(int(k), n, alpha) > p for k in successes)
        assert failures / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_confidence_bounds_at_the_edges():
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    assert upper_confidence_bound(100, 100, 0.001) == 1.0
    assert lower_confidence_bound(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100))


def test_monte_carlo_pA_lower_covers_the_exact_pA():
    """Whole pipeline: engine noise, counting and bound fail at most at rate alpha."""
    model, sigma = linear_model(seed=5), anisotropic_sigma(seed=6)
    x = inputs_with_margins(model, sigma, count=400, seed=7)
    alpha = 0.2
    smooth = Smooth.from_engine(linear_engine(model, chunk_size=512), sigma, seed=11)
    certificates = smooth.certify(x, n0=32, n=50, alpha=alpha)
    exact = model.p_top(x, sigma.values)
    truth = model.label(x)
    failures = sum(1 for cert, p, t in zip(certificates, exact, truth) if cert.prediction == t and cert.pA_lower > p)
    assert failures / len(x) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / len(x))


def test_two_sided_bounds_hold_jointly_and_never_overstate_the_radius():
    rng = np.random.default_rng(1)
    probabilities = np.array([0.6, 0.25, 0.1, 0.05])
    true_R = (norm.ppf(0.6) - norm.ppf(0.25)) / 2
    alpha, n, trials = 0.05, 400, 4000
    failures = 0
    for counts in rng.multinomial(n, probabilities, size=trials):
        lower, upper = class_bounds(torch.tensor(counts), 0, alpha, "two-sided")
        assert upper is not None
        holds = lower <= 0.6 and upper >= 0.25
        failures += not holds
        if holds:
            assert (norm.ppf(lower) - norm.ppf(upper)) / 2 <= true_R
        assert upper <= 1 - lower
    assert failures / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_two_sided_certifies_more_when_the_runner_up_is_small():
    counts = torch.tensor([700, 100, 100, 100])  # one-sided charges all of 1 - pA to the runner-up
    sigma = constant_sigma(0.5, (1, 2, 2))
    one = certificate(0, *class_bounds(counts, 0, 0.001, "one-sided"), sigma)
    two = certificate(0, *class_bounds(counts, 0, 0.001, "two-sided"), sigma)
    assert two.radius > one.radius > 0


def test_smooth_takes_cohens_arguments_and_keys_noise_by_index():
    model = linear_model()
    x = inputs_with_margins(model, constant_sigma(0.3, SHAPE), count=6)
    smooth = Smooth(model, 2, 0.3)  # Cohen et al.'s order; the shape comes with the first input
    explicit = Smooth.from_engine(linear_engine(linear_model()), constant_sigma(0.3, SHAPE), seed=0)
    keyed = smooth.certify(x, 32, 200, 0.001, indices=list(range(6)))
    assert keyed == explicit.certify(x, 32, 200, 0.001, indices=list(range(6)))
    assert smooth.predict(x, 200, 0.001, seed=0) == explicit.predict(x, 200, 0.001, indices=list(range(6)))
    tensor = Smooth(model, 2, torch.full(SHAPE, 0.3), seed=0)  # a tensor sigma; a seed fixes every call
    assert tensor.certify(x, 32, 200, 0.001) == keyed == tensor.certify(x, 32, 200, 0.001, batch_size=7)
    shifted = smooth.certify(x, 32, 200, 0.001, indices=list(range(100, 106)))  # other indices, other noise
    assert [c.pA_lower for c in shifted] != [c.pA_lower for c in keyed]
    with pytest.raises(NrsError, match="values <= 0"):
        Smooth(model, 2, torch.zeros(SHAPE))
