"""The certificate sizes nrs reports, with every name they go by.

One registry for result columns, CLI choices, file names, axis labels and
table headings, so plots, tables, figures and the CLI always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from nrs_cli.errors import NrsError


@dataclass(frozen=True)
class Metric:
    column: str  # result TSV column
    option: str  # CLI choice and file-name suffix
    name: str  # in table headings
    axis: str  # axis label


METRICS = {
    metric.column: metric
    for metric in (
        Metric("log_area", "area", "certified area", "certified area  log V = Σ log σᵢ + D log R  (nats)"),
        Metric("radius", "radius", "l2 radius", "certified l2 radius  min σᵢ · R  (pixel units)"),
        Metric("gm_radius", "gm-radius", "equal-volume radius", "equal-volume radius  (Π σᵢ)^(1/D) · R  (pixel units)"),
    )
}


def metric(column: str) -> Metric:
    """The metric of a result column (``log_area``, ``radius``, ``gm_radius``)."""
    if column not in METRICS:
        raise NrsError(f"unknown certificate column '{column}' (use {', '.join(METRICS)})")
    return METRICS[column]


def metric_from_option(option: str) -> Metric:
    """The metric a CLI option names (``area``, ``radius``, ``gm-radius``)."""
    for candidate in METRICS.values():
        if candidate.option == option:
            return candidate
    raise NrsError(f"unknown axis '{option}' (use {', '.join(m.option for m in METRICS.values())})")
