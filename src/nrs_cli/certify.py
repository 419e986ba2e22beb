"""The smoothed classifier and its certificate (paper Theorem 3.1).

``g(x) = argmax_c P(f(x + sigma * z) = c)``, ``z ~ N(0, I)``, with one noise
scale ``sigma_i`` per input element. If ``pA_lower <= P(f(x + eps) = cA)`` and
``pB_upper >= max_{c != cA} P(f(x + eps) = c)`` then ``g(x + delta) = cA`` for
every ``delta`` with

    || delta / sigma ||_2 < R,   R = (Phi^-1(pA_lower) - Phi^-1(pB_upper)) / 2,

and with ``pB_upper = 1 - pA_lower`` simply ``R = Phi^-1(pA_lower)``. The
certified region is the axis-aligned ellipsoid with semi-axes ``sigma_i * R``.
Each certificate reports:

- ``icdf`` = R, the radius in sigma units;
- ``radius`` = ``min_i sigma_i * R``, the largest l2 ball inside the ellipsoid
  (Cohen et al.'s radius when sigma is constant);
- ``log_area`` = ``sum_i log sigma_i + D log R``, the paper's certified-area
  objective O_CA (natural log, the volume constant dropped);
- ``gm_radius`` = ``exp(mean_i log sigma_i) * R``, the radius of the ball with
  the same volume as the ellipsoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.stats import beta, binomtest, norm
from torch import nn

from nrs_cli.errors import NrsError
from nrs_cli.noise import GaussianNoise
from nrs_cli.sampling import SamplingEngine, prepare_model
from nrs_cli.sigma import Sigma, constant_sigma, validate_sigma

ABSTAIN = -1
BOUNDS = ("one-sided", "two-sided")


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if successes <= 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def upper_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial proportion."""
    if successes >= trials:
        return 1.0
    return float(beta.ppf(1 - alpha, successes + 1, trials - successes))


def class_bounds(counts: torch.Tensor, top: int, alpha: float, bound: str) -> tuple[float, float | None]:
    """``(pA_lower, pB_upper)`` for class ``top`` from estimation counts, jointly valid w.p. >= 1 - alpha.

    One-sided (Cohen et al.): ``pA_lower`` at level alpha; ``pB_upper`` is None,
    meaning ``1 - pA_lower``. Two-sided: ``pA_lower`` at alpha / 2 and an upper
    bound for every other class at alpha / (2 (C - 1)) (Bonferroni);
    ``pB_upper`` is the largest of those, and never more than ``1 - pA_lower``.
    """
    trials = int(counts.sum())
    if bound == "one-sided":
        return lower_confidence_bound(int(counts[top]), trials, alpha), None
    lower = lower_confidence_bound(int(counts[top]), trials, alpha / 2)
    others = [int(c) for i, c in enumerate(counts.tolist()) if i != top]
    level = alpha / (2 * max(1, len(others)))
    upper = max(upper_confidence_bound(c, trials, level) for c in others)
    return lower, min(upper, 1.0 - lower)


@dataclass(frozen=True)
class Certificate:
    """The outcome of CERTIFY for one input."""

    prediction: int  # cA, or ABSTAIN
    pA_lower: float
    pB_upper: float
    icdf: float  # R in sigma units; 0 when abstaining
    radius: float  # min_i sigma_i * R
    log_area: float  # sum_i log sigma_i + D log R; -inf when abstaining
    gm_radius: float  # exp(mean_i log sigma_i) * R

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


def certificate(prediction: int, pA_lower: float, pB_upper: float | None, sigma: Sigma) -> Certificate:
    """Theorem 3.1 for given probability bounds; abstains when R <= 0.

    ``pB_upper`` None is the one-sided case ``pB_upper = 1 - pA_lower``, where
    ``R = Phi^-1(pA_lower)`` exactly as in Cohen et al.
    """
    if pB_upper is None:
        R, pB_upper = float(norm.ppf(pA_lower)), 1.0 - pA_lower
    else:
        R = (float(norm.ppf(pA_lower)) - float(norm.ppf(pB_upper))) / 2
    if not R > 0:
        return Certificate(ABSTAIN, pA_lower, pB_upper, 0.0, 0.0, -math.inf, 0.0)
    dimension = sigma.values.numel()
    return Certificate(
        prediction=prediction,
        pA_lower=pA_lower,
        pB_upper=pB_upper,
        icdf=R,
        radius=sigma.min * R,
        log_area=sigma.log_sum + dimension * math.log(R),
        gm_radius=math.exp(sigma.log_mean) * R,
    )


def inputs_per_group(chunk_size: int, n0: int, n: int) -> int:
    """How many inputs to certify together: enough for the n0 selection samples to fill a
    forward pass, few enough that results are flushed every few passes of n samples."""
    return max(1, min(chunk_size // n0, 8 * chunk_size // n))


def check_options(n0: int, n: int, alpha: float, bound: str = "one-sided") -> None:
    if n0 < 1 or n < 1:
        raise NrsError(f"n0 and n must be at least 1 (got n0={n0}, n={n})")
    if not 0 < alpha < 1:
        raise NrsError(f"alpha must lie strictly between 0 and 1 (got {alpha})")
    if bound not in BOUNDS:
        raise NrsError(f"unknown bound '{bound}' (use {' or '.join(BOUNDS)})")


class Smooth:
    """A smoothed classifier g with per-element noise scales sigma.

    :param engine: runs the base classifier f on noisy inputs
    :param sigma: noise scales, one per input element (pixel units)
    :param seed: seeds the noise; with the inputs' dataset indices it fixes every draw
    """

    ABSTAIN = ABSTAIN

    def __init__(self, engine: SamplingEngine, sigma: Sigma, seed: int = 0):
        self.engine = engine
        self.sigma = sigma
        self.seed = seed

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        sigma: float | torch.Tensor | Sigma,
        num_classes: int,
        input_shape: tuple[int, ...] | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        seed: int = 0,
    ) -> Smooth:
        """The smoothed classifier of a model, as in Cohen et al.'s ``Smooth(model, num_classes, sigma)``.

        ``sigma`` is a number (isotropic; then ``input_shape`` is needed), a
        tensor of the input shape, or a :class:`~nrs_cli.sigma.Sigma`. The model
        takes raw pixels; it is moved to ``device`` and frozen.
        """
        if not isinstance(sigma, Sigma):
            if isinstance(sigma, torch.Tensor):
                sigma = Sigma(validate_sigma(sigma, tuple(sigma.shape), "sigma"), "sigma")
            elif input_shape is None:
                raise NrsError("a constant sigma needs the input_shape of the model's inputs")
            else:
                sigma = constant_sigma(float(sigma), input_shape)
        device = torch.device(device)
        engine = SamplingEngine(prepare_model(model, device), num_classes, tuple(sigma.values.shape), device, precision)
        return cls(engine, sigma, seed)

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        bound: str = "one-sided",
        indices: list[int] | None = None,
    ) -> list[Certificate]:
        """CERTIFY (Cohen et al., with Theorem 3.1's ellipsoid) for a batch of inputs.

        Draw n0 samples and take the most frequent class cA; draw n fresh
        samples and bound ``P(f(x + eps) = cA)`` from below (and, two-sided,
        the runner-up from above). With probability at least 1 - alpha over the
        samples, a returned class equals g(x) and g is constant on the ellipsoid
        ``|| delta / sigma || < R``; otherwise the certificate abstains.
        ``indices`` (default ``0..B-1``) are the inputs' dataset indices: they key the noise.
        """
        check_options(n0, n, alpha, bound)
        selection = self.sample(x, n0, "selection", indices)
        estimation = self.sample(x, n, "estimation", indices)
        certificates = []
        for counts_selection, counts_estimation in zip(selection, estimation):
            top = int(counts_selection.argmax())
            pA_lower, pB_upper = class_bounds(counts_estimation, top, alpha, bound)
            certificates.append(certificate(top, pA_lower, pB_upper, self.sigma))
        return certificates

    def predict(self, x: torch.Tensor, n: int, alpha: float, indices: list[int] | None = None) -> list[int]:
        """PREDICT (Cohen et al.): the top class if a two-sided binomial test against the
        runner-up rejects equality at level alpha, else ABSTAIN. With probability at
        least 1 - alpha a returned class equals g(x)."""
        check_options(1, n, alpha)
        predictions = []
        for counts in self.sample(x, n, "predict", indices):
            top2 = counts.argsort(descending=True, stable=True)[:2].tolist()
            count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
            significant = binomtest(count1, count1 + count2, p=0.5).pvalue <= alpha
            predictions.append(top2[0] if significant else ABSTAIN)
        return predictions

    def sample(self, x: torch.Tensor, num: int, phase: str, indices: list[int] | None = None) -> torch.Tensor:
        """Class counts ``(B, C)`` of ``f(x + sigma * z)`` over ``num`` samples per input."""
        indices = list(range(len(x))) if indices is None else indices
        return self.engine.count(x, indices, self.sigma.values, num, GaussianNoise(self.seed, phase))
