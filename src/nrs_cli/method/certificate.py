"""Where a certificate is born: probability bounds and the certified ellipsoid (paper Theorem 3.1).

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
import statistics
from dataclasses import dataclass, fields
from typing import Any

import torch
from scipy.stats import beta, norm

from nrs_cli.errors import NrsError
from nrs_cli.io.tables import column, columns_of, finite
from nrs_cli.method.sigma import Sigma

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


def prediction_column():
    """The ``predict`` column of certify and predict tables: a class, or -1 for an abstention."""
    return column(int, lambda v: v >= ABSTAIN, "a class or -1", name="predict")


@dataclass(frozen=True)
class Certificate:
    """The outcome of CERTIFY for one input; its fields are the columns a certify table adds to
    Cohen et al.'s (``predict`` and ``radius`` are theirs)."""

    prediction: int = prediction_column()  # cA, or ABSTAIN
    pA_lower: float = column(float, finite(0, 1), "a probability")
    pB_upper: float = column(float, finite(0, 1), "a probability")
    icdf: float = column(float, finite(0), "a radius in sigma units")  # R; 0 when abstaining
    radius: float = column(float, finite(0), "a radius")  # min_i sigma_i * R
    log_area: float = column(float, lambda v: not math.isnan(v) and v < math.inf, "a log-area or -inf")
    gm_radius: float = column(float, finite(0), "a radius")  # exp(mean_i log sigma_i) * R

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    def __iter__(self):
        """``prediction, radius = certificate``: Cohen et al.'s pair (the ellipsoid is in the other fields)."""
        return iter((self.prediction, self.radius))

    def cells(self) -> dict[str, Any]:
        """The certificate as table cells, by column."""
        return {column.name: getattr(self, f.name) for f, column in zip(fields(self), columns_of(Certificate))}


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


@dataclass(frozen=True)
class CertifiedSummary:
    """How a smoothed classifier did on a set of inputs (CERTIFY): the clean-accuracy / certified-area
    point of the paper's Fig. 2."""

    accuracy: float  # fraction of the inputs certified with the right class
    mean_log_area: float  # over those inputs (the others have no certified region)
    median_radius: float
    median_gm_radius: float

    @classmethod
    def of(cls, outcomes: list[tuple[bool, float, float, float]]) -> CertifiedSummary:
        """Summary of ``(correct, log_area, radius, gm_radius)`` per input."""
        right = [outcome for outcome in outcomes if outcome[0]]
        if not right:
            return cls(0.0 if outcomes else math.nan, math.nan, math.nan, math.nan)
        return cls(
            accuracy=len(right) / len(outcomes),
            mean_log_area=statistics.fmean(outcome[1] for outcome in right),
            median_radius=statistics.median(outcome[2] for outcome in right),
            median_gm_radius=statistics.median(outcome[3] for outcome in right),
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
