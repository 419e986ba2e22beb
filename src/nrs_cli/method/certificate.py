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
class SigmaFacts:
    """What a certificate takes from sigma: ``min_i sigma_i``, ``sum_i log sigma_i``, ``mean_i log sigma_i``
    and D. A certify manifest records them (its ``sigma`` section), so a table can be checked against them."""

    min: float
    log_sum: float
    log_mean: float
    dimension: int

    @classmethod
    def of(cls, sigma: Sigma) -> SigmaFacts:
        return cls(sigma.min, sigma.log_sum, sigma.log_mean, sigma.values.numel())

    @classmethod
    def recorded(cls, section: Any) -> SigmaFacts | None:
        """The facts a manifest's sigma section records; None when it has none (written by an earlier version)."""
        if not isinstance(section, dict):
            return None
        values = [section.get(f.name) for f in fields(cls)]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if not numbers or not isinstance(values[3], int) or values[0] <= 0 or values[3] < 1:
            return None
        return cls(*values)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_CELL = 1e-9  # relative rounding of a cell: 10 significant digits, with room


def certificate_problem(row: dict[str, str], sigma: SigmaFacts | None = None) -> str | None:
    """What in a certify row contradicts Theorem 3.1 (None: nothing), within the rounding of its cells.

    ``icdf`` must be ``(Phi^-1(pA_lower) - Phi^-1(pB_upper)) / 2`` (one-sided: ``pB_upper = 1 - pA_lower``,
    where this is ``Phi^-1(pA_lower)``), positive unless the row abstains; an abstention has no
    certificate (icdf, radius and gm_radius 0, log_area -inf); ``radius <= gm_radius`` (the smallest
    sigma is at most their geometric mean). With ``sigma``: ``radius = min sigma * icdf``,
    ``gm_radius = exp(mean log sigma) * icdf`` and ``log_area = sum log sigma + D log icdf``.
    """
    predict, R = int(row["predict"]), float(row["icdf"])
    radius, gm_radius, log_area = float(row["radius"]), float(row["gm_radius"]), float(row["log_area"])
    low, high = _icdf_range(float(row["pA_lower"]), float(row["pB_upper"]))
    if predict == ABSTAIN:
        if (R, radius, gm_radius, log_area) != (0.0, 0.0, 0.0, -math.inf):
            return "an abstention (predict -1) with a certificate (icdf, radius, gm_radius must be 0, log_area -inf)"
        if low > 0:
            return f"predict is -1 (abstain), but pA_lower {row['pA_lower']} and pB_upper {row['pB_upper']} certify"
        return None
    if not R > 0 or not low * (1 - _CELL) <= R <= high * (1 + _CELL):
        expected = f"{(low + high) / 2:.10g}" if high > 0 else "an abstention"
        return f"icdf {row['icdf']} does not follow from pA_lower and pB_upper (expected {expected})"
    if radius > gm_radius * (1 + 2 * _CELL):
        return f"radius {row['radius']} exceeds gm_radius {row['gm_radius']} (the smallest sigma is at most their mean)"
    if sigma is None:
        return None
    for name, value, expected in (
        ("radius", radius, sigma.min * R),
        ("gm_radius", gm_radius, math.exp(sigma.log_mean) * R),
    ):
        if not math.isclose(value, expected, rel_tol=10 * _CELL):
            return f"{name} {row[name]} is not that of its icdf and sigma (expected {expected:.10g})"
    expected = sigma.log_sum + sigma.dimension * math.log(R)
    if not math.isclose(log_area, expected, rel_tol=0, abs_tol=10 * _CELL * (abs(expected) + sigma.dimension) + 1e-9):
        return f"log_area {row['log_area']} is not that of its icdf and sigma (expected {expected:.10g})"
    return None


def _icdf_range(pA_lower: float, pB_upper: float) -> tuple[float, float]:
    """The least and greatest ``(Phi^-1(pA) - Phi^-1(pB)) / 2`` for bounds rounded to the given cells."""

    def ppf(p: float) -> float:
        return float(norm.ppf(min(max(p, 0.0), 1.0)))

    low = (ppf(pA_lower * (1 - _CELL)) - ppf(pB_upper * (1 + _CELL))) / 2
    high = (ppf(pA_lower * (1 + _CELL)) - ppf(pB_upper * (1 - _CELL))) / 2
    return low, high


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
