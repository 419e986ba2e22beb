"""Paired bootstrap intervals: how sure a difference measured on N report inputs is.

Every comparison nrs publishes is measured on one set of inputs with both sides evaluated on the
same inputs. A resample draws N of those inputs with replacement, the same draw for every side,
and recomputes the difference; the 95% interval is the 2.5th and 97.5th percentile of the
resampled differences (the percentile bootstrap). It covers the input-sampling part of the
uncertainty; the Monte Carlo part (the noise draws) shows when the same comparison is repeated
with another noise seed.

The compared quantities, for per-input outcomes ``correct_i`` (certified with the right class) and
``a_i`` (the certified log-area, only meaningful where correct):

- clean accuracy ``acc = mean_i correct_i`` and mean log-area ``area = sum_i correct_i a_i / sum_i correct_i``;
- the **gain at equal accuracy** of a point P over a reference through two points R1, R2 whose
  accuracies bracket P's: ``area_P - (area_R1 + (area_R2 - area_R1) (acc_P - acc_R1) / (acc_R2 - acc_R1))``;
- the **difference of mean log-areas** of two sigmas (an optimised sigma and its isotropic partner);
- the **certified-accuracy difference** at a threshold t: ``mean_i [correct_i and v_i >= t]`` of one
  side minus the other's, for a certificate size v (log-area or radius).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Outcomes:
    """Per-input results of one sigma on an ordered set of inputs (every side of a comparison in the same order)."""

    indices: tuple[int, ...]  # dataset indices, in order
    correct: np.ndarray  # bool: certified with the right class
    log_area: np.ndarray  # the certified log-area (-inf where nothing is certified)
    radius: np.ndarray  # the certified l2 radius (0 where nothing is certified)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else math.nan

    @property
    def mean_log_area(self) -> float:
        return float(self.log_area[self.correct].mean()) if self.correct.any() else math.nan

    @classmethod
    def from_rows(cls, rows: list[dict[str, str]]) -> Outcomes:
        """The outcomes recorded in the rows of a certify table (``idx``, ``correct``, ``log_area``, ``radius``)."""
        return cls(
            indices=tuple(int(row["idx"]) for row in rows),
            correct=np.array([row["correct"] == "1" for row in rows], dtype=bool),
            log_area=np.array([float(row["log_area"]) for row in rows]),
            radius=np.array([float(row["radius"]) for row in rows]),
        )

    def values(self, column: str) -> np.ndarray:
        """A certificate size per input, -inf where the input is not certified correctly."""
        size = self.log_area if column == "log_area" else self.radius
        return np.where(self.correct, size, -np.inf)


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% paired-bootstrap interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    def text(self) -> str:
        """``+352.1 [310.2, 398.7]``."""
        return f"{self.estimate:+.1f} [{self.low:.1f}, {self.high:.1f}]"


def resample_weights(size: int, count: int, seed: int) -> np.ndarray:
    """``count`` bootstrap resamples of ``size`` inputs as multiplicities, shape (count, size)."""
    generator = np.random.default_rng(seed)
    if size == 0:  # nothing to resample: every resampled statistic is nan
        return np.zeros((count, 0))
    return generator.multinomial(size, np.full(size, 1.0 / size), size=count).astype(np.float64)


def _accuracy_and_area(outcomes: Outcomes, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resampled clean accuracy and mean log-area (nan where a resample certifies nothing)."""
    right = weights @ outcomes.correct.astype(np.float64)
    areas = np.where(outcomes.correct, outcomes.log_area, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return right / len(outcomes.correct), (weights @ areas) / right


def _interval(estimate: float, resampled: np.ndarray) -> Interval:
    finite = resampled[np.isfinite(resampled)]
    if not math.isfinite(estimate) or len(finite) < 0.9 * len(resampled):
        return Interval(estimate, math.nan, math.nan)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


def _check_paired(*sides: Outcomes) -> None:
    if any(side.indices != sides[0].indices for side in sides[1:]):
        raise ValueError("a paired comparison needs every side on the same inputs, in the same order")


def reference_area(accuracy, first, second):
    """The reference's log-area at ``accuracy``: linear through ``first`` and ``second`` ((accuracy, area) each,
    arrays or numbers); where the two accuracies coincide, the larger area (the front's point)."""
    (a1, m1), (a2, m2) = first, second
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (np.asarray(m2) - m1) / (np.asarray(a2) - a1)
        line = m1 + slope * (np.asarray(accuracy) - a1)
    return np.where(np.asarray(a1) == np.asarray(a2), np.maximum(m1, m2), line)


def gain_at_equal_accuracy(
    point: Outcomes, first: Outcomes, second: Outcomes, resamples: int = 2000, seed: int = 0
) -> Interval:
    """P's mean log-area minus the reference's at P's accuracy, the reference linear through R1 and R2."""
    _check_paired(point, first, second)
    estimate = point.mean_log_area - float(
        reference_area(point.accuracy, (first.accuracy, first.mean_log_area), (second.accuracy, second.mean_log_area))
    )
    weights = resample_weights(len(point.correct), resamples, seed)
    accuracy, area = _accuracy_and_area(point, weights)
    reference = reference_area(accuracy, _accuracy_and_area(first, weights), _accuracy_and_area(second, weights))
    return _interval(estimate, area - reference)


def mean_log_area_difference(a: Outcomes, b: Outcomes, resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean log-area of A minus B's, each over its own correctly certified inputs."""
    _check_paired(a, b)
    weights = resample_weights(len(a.correct), resamples, seed)
    resampled = _accuracy_and_area(a, weights)[1] - _accuracy_and_area(b, weights)[1]
    return _interval(a.mean_log_area - b.mean_log_area, resampled)


def certified_accuracy_difference(
    a: Outcomes, b: Outcomes, column: str, thresholds: list[float], resamples: int = 2000, seed: int = 0
) -> list[Interval]:
    """Certified accuracy of A minus B's at each threshold of a certificate size (``log_area`` or ``radius``)."""
    _check_paired(a, b)
    weights = resample_weights(len(a.correct), resamples, seed)
    intervals = []
    for threshold in thresholds:
        difference = (a.values(column) >= threshold).astype(np.float64) - (b.values(column) >= threshold)
        estimate = float(difference.mean()) if len(difference) else math.nan
        intervals.append(_interval(estimate, weights @ difference / max(len(difference), 1)))
    return intervals
