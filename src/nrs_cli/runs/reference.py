"""A dense reference at equal accuracy: refine a reference method's front around one clean accuracy.

A gain "at equal clean accuracy" compares a point with the reference front at the point's accuracy.
Between two reference points far apart in accuracy the front is a long chord across a curved line,
which flatters the point; so the reference is refined until its front has points on both sides of
the compared accuracy within ``tolerance`` (half an accuracy point by default).

A reference is a family of sigmas on one network, ``scale * base`` (for an isotropic reference the
base is 1 and the scale is the sigma itself; for an optimised one, the base is one of its sigmas):
accuracy falls as the scale grows, so refining is a bisection on the scale (geometric, since sigma
is a scale), with the range widened by half when the compared accuracy lies outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from nrs_cli.method.fronts import pareto_front
from nrs_cli.method.sigma import Sigma, constant_sigma
from nrs_cli.method.statistics import Outcomes

WIDEN = 1.5  # scale factor when the compared accuracy lies outside the reference's range
SCALE_PRECISION = 0.01  # sigmas this close are one reference point for practical purposes


@dataclass(frozen=True)
class ReferencePoint:
    scale: float
    accuracy: float
    mean_log_area: float
    outcomes: Outcomes | None = None  # per input, where it was evaluated here
    family: int = 0  # which family of the reference it belongs to, where it has several


@dataclass(frozen=True)
class Family:
    """The sigmas of a reference: ``scale * base`` on one network."""

    checkpoint: str
    base: Sigma | None  # None: isotropic, the scale is the sigma
    input_shape: tuple[int, ...]

    @property
    def key(self) -> tuple[str, str | None]:
        """Which family this is: its network and its base sigma's file (None: isotropic)."""
        return self.checkpoint, None if self.base is None else f"{self.base.source}/{self.base.label}"

    def sigma(self, scale: float) -> Sigma:
        if self.base is None:
            return constant_sigma(scale, self.input_shape)
        label = f"{self.base.label}-x{scale:g}"
        metadata = {**self.base.metadata, "scaled": scale}
        return Sigma(self.base.values * scale, label, metadata, f"{self.base.source} x{scale:g}")


def rounded(scale: float) -> float:
    """Scales evaluated are kept to 4 significant digits: readable names, and one file per scale."""
    return float(f"{scale:.4g}")


def front_bracket(points: list[ReferencePoint], accuracy: float) -> tuple[ReferencePoint, ReferencePoint] | None:
    """Two adjacent points of the reference's Pareto front around ``accuracy``: the least accurate one still
    at least as accurate, and the next one, less accurate (None when the front does not reach both sides).

    The reference at ``accuracy`` is the line between them (their first point on an exact match)."""
    finite = [p for p in points if math.isfinite(p.mean_log_area)]
    front = [finite[i] for i in pareto_front([(p.accuracy, p.mean_log_area) for p in finite])]
    at_least = [p for p in front if p.accuracy >= accuracy]
    below = [p for p in front if p.accuracy < accuracy]
    if not at_least or not below:
        return None
    return min(at_least, key=lambda p: p.accuracy), max(below, key=lambda p: p.accuracy)


def scale_neighbours(points: list[ReferencePoint], accuracy: float) -> tuple[float, float] | None:
    """The largest scale evaluated that is still at least as accurate, and the next larger scale evaluated
    (one that certifies no input counts: it is less accurate, and bisecting towards it finds the rest)."""
    accurate = [p.scale for p in points if p.accuracy >= accuracy and math.isfinite(p.mean_log_area)]
    if not accurate:
        return None
    larger = [p.scale for p in points if p.scale > max(accurate)]
    return (max(accurate), min(larger)) if larger else None


def is_dense(points: list[ReferencePoint], accuracy: float, tolerance: float) -> bool:
    """Whether the reference can be read at ``accuracy``: its front has points on both sides within
    ``tolerance`` of it, or (accuracy moving in steps of one input) both come from one family in which
    the largest sigma still as accurate and the next one evaluated are within 1% of each other.

    A reference of several families (see ``ReferencePoint.family``) is read on the front of all its points."""
    bracket = front_bracket(points, accuracy)
    if bracket is None:
        return False
    more, less = bracket
    if more.accuracy - accuracy <= tolerance + 1e-12 and accuracy - less.accuracy <= tolerance + 1e-12:
        return True
    if more.family != less.family:
        return False
    neighbours = scale_neighbours([p for p in points if p.family == more.family], accuracy)
    return neighbours is not None and neighbours[1] <= (1 + SCALE_PRECISION) * neighbours[0]


def refine(
    evaluate: Callable[[float], ReferencePoint],
    points: list[ReferencePoint],
    accuracy: float,
    tolerance: float,
    steps: int,
) -> list[ReferencePoint]:
    """The reference points with up to ``steps`` more evaluations, until its front brackets ``accuracy``
    within ``tolerance`` on both sides (see :func:`is_dense`); returns every point, old and new."""
    points = list(points)
    for _ in range(steps):
        if is_dense(points, accuracy, tolerance):
            break
        scale = _next_scale(points, accuracy)
        if scale is None or any(p.scale == scale for p in points):
            break  # the bracket cannot be narrowed at this precision, or the range cannot grow
        points.append(evaluate(scale))
    return points


def _next_scale(points: list[ReferencePoint], accuracy: float) -> float | None:
    """The scale to evaluate next: between the scale neighbours, or beyond the range on the side that lacks one."""
    finite = [p for p in points if math.isfinite(p.mean_log_area)]
    if not finite:
        return None
    if not any(p.accuracy >= accuracy for p in finite):  # smaller scales are more accurate
        return rounded(min(p.scale for p in points) / WIDEN)
    neighbours = scale_neighbours(points, accuracy)
    if neighbours is None:
        return rounded(max(p.scale for p in finite) * WIDEN)
    return rounded(math.sqrt(neighbours[0] * neighbours[1]))
