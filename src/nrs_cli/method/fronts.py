"""Gains at equal clean accuracy: one method's points against another method's front.

Every evaluation of a sigma is a point (clean accuracy, mean certified
log-area). A method is compared with a reference method (the isotropic
baseline, or a noise-trained network) at equal clean accuracy: the reference
curve is mean log-area as a function of accuracy, linear between the points
of its Pareto front. A reference point that another one matches or beats on
both axes is never the one to compare with: on a fine grid two isotropic sigmas
can share an accuracy (the smaller certifying less), and a large sigma can lose
both accuracy and area to a smaller one.
"""

from __future__ import annotations

import math
from typing import Any

Point = tuple[float, float]  # (clean accuracy, mean log_area)
NEAR = 0.01  # "the same clean accuracy": within one accuracy point


def pareto_front(points: list[Point]) -> list[int]:
    """Indices of the (accuracy, mean log_area) points no other point matches or beats on both.

    Most accurate first, so the areas increase along the list; identical
    points are all kept.
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front: list[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1] or points[i] == points[front[-1]]:
            front.append(i)
    return front


def front_curve(points: list[Point]) -> list[Point]:
    """The Pareto front of finite points, by increasing accuracy."""
    finite = [p for p in points if math.isfinite(p[1])]
    return [finite[i] for i in reversed(pareto_front(finite))]


def interpolate(curve: list[Point], accuracy: float) -> float | None:
    """The curve's log-area at an accuracy inside its range (None outside it)."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= accuracy <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (accuracy - x0) / (x1 - x0)
    if curve and curve[0][0] == accuracy:
        return curve[0][1]
    return None


def gain_over(curve: list[Point], accuracy: float, area: float) -> dict[str, Any]:
    """A point's gain over a reference front: at equal accuracy (interpolated) and over the nearest
    front point within one accuracy point (None where there is none)."""
    interpolated = interpolate(curve, accuracy)
    near = [p for p in curve if abs(p[0] - accuracy) <= NEAR + 1e-9]  # one point, whatever the float error
    nearest = min(near, key=lambda p: abs(p[0] - accuracy)) if near else None
    return {
        "gain_at_equal_accuracy": area - interpolated if interpolated is not None else None,
        "nearest_reference": None
        if nearest is None
        else {"accuracy": nearest[0], "mean_log_area": nearest[1], "gain": area - nearest[1]},
    }


def compare_to_front(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Every row's gain over the front of the reference rows (both with ``accuracy`` and ``mean_log_area``).

    Rows without a certified input (log-area not finite) are left out. Returns
    the reference front, the points with their gains, and the largest gain at
    equal accuracy (None when no point lies inside the front's accuracy range).
    """
    curve = front_curve([(float(r["accuracy"]), float(r["mean_log_area"])) for r in reference if _finite(r)])
    points = []
    for row in rows:
        if not _finite(row):
            continue
        accuracy, area = float(row["accuracy"]), float(row["mean_log_area"])
        points.append({**row, "accuracy": accuracy, "mean_log_area": area, **gain_over(curve, accuracy, area)})
    gains = [p["gain_at_equal_accuracy"] for p in points if p["gain_at_equal_accuracy"] is not None]
    return {
        "reference": [{"accuracy": a, "mean_log_area": m} for a, m in curve],
        "points": points,
        "max_gain_at_equal_accuracy": max(gains) if gains else None,
    }


def _finite(row: dict[str, Any]) -> bool:
    try:
        return math.isfinite(float(row["mean_log_area"]))
    except (TypeError, ValueError):
        return False
