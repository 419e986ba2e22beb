"""Result tables as a reader sees them: a certify TSV with its manifest, and certified accuracy from its rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nrs_cli.errors import NrsError
from nrs_cli.io.serialization import read_json
from nrs_cli.io.tables import existing_sidecar
from nrs_cli.runs.certification import read_results

OPTIMIZED = {"anisotropic": "optimized"}  # how a legend names a sigma method


@dataclass
class ResultFile:
    """A certify TSV with what its manifest says about it."""

    path: Path
    rows: list[dict[str, str]]
    manifest: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # a legend label of the caller's; else one made from the manifest

    @property
    def label(self) -> str:
        """The legend of its sigma: "isotropic, σ = 0.25", "optimized from σ = 0.25, sub-epoch 2"."""
        if self.name:
            return self.name
        sigma = section(self.manifest, "sigma")
        method, init, rounds = sigma.get("method"), sigma.get("init"), sigma.get("sub_epoch")
        if not isinstance(init, (int, float)) or not isinstance(method, str):
            return self.path.stem
        if method == "isotropic":
            return f"isotropic, σ = {init:g}"
        label = f"{OPTIMIZED.get(method, method)} from σ = {init:g}"
        if isinstance(rounds, int) and not isinstance(rounds, bool) and rounds > 0:
            label += f", {'round' if method == 'co-optimized' else 'sub-epoch'} {rounds}"
        return label

    @property
    def isotropic(self) -> bool:
        return section(self.manifest, "sigma").get("method") == "isotropic"


def section(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    """A sub-mapping of a manifest, or {} when it is missing or not a mapping (a manifest is only a label)."""
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def load_result(path: str | Path) -> ResultFile:
    path = Path(path)
    if not path.is_file():
        raise NrsError(f"result file not found: {path}")
    rows = read_results(path)
    for column in ("correct", "log_area", "radius", "gm_radius"):
        if rows and column not in rows[0]:
            raise NrsError(f"{path} is not a certify result (no '{column}' column)")
    manifest = existing_sidecar(path, "manifest")  # its own, else one named as earlier versions named it
    return ResultFile(path, rows, read_json(manifest, "manifest") if manifest else {})


def certified_values(rows: list[dict[str, str]], column: str) -> tuple[np.ndarray, int]:
    """Sorted certificate sizes of the correctly classified inputs, and the number of inputs."""
    values = sorted(float(row[column]) for row in rows if row["correct"] == "1")
    return np.array(values), len(rows)


def certified_accuracy_at(rows: list[dict[str, str]], column: str, thresholds: list[float]) -> list[float]:
    """Fraction of all inputs that are correct with a certificate of at least each threshold."""
    values, total = certified_values(rows, column)
    if total == 0:
        return [math.nan for _ in thresholds]
    return [float((values >= t).sum()) / total for t in thresholds]


def certified_accuracy_curve(rows: list[dict[str, str]], column: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact step curve: at ``x[k]`` the certified accuracy drops to ``y[k]``.

    ``x`` starts at the smallest certificate (for radii: at 0) where ``y`` is
    the clean certified accuracy, then has one point per distinct certificate
    size; ``y[k]`` is the accuracy just above ``x[k]``. Draw with
    ``step(x, y, where="post")``.
    """
    values, total = certified_values(rows, column)
    if len(values) == 0:
        return np.array([0.0]), np.array([0.0])
    distinct = np.unique(values)
    above = np.array([(values > v).sum() for v in distinct]) / total
    start = 0.0 if column != "log_area" else float(distinct[0])
    x = np.concatenate([[min(start, distinct[0])], distinct])
    y = np.concatenate([[len(values) / total], above])
    return x, y
