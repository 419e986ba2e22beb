"""Sigma: the per-element noise scales, and the file format that carries them.

A sigma file is a ``torch.save`` of a plain dict (readable with
``torch.load(path, weights_only=True)``)::

    {
        "format": "nrs-sigma/1",
        "sigma": <float32 tensor of the dataset's input shape, pixel units, all > 0>,
        "dataset": "mnist",             # spec name it was made for
        "input_shape": [1, 28, 28],
        "method": "anisotropic",        # or "isotropic"
        "init": 0.3,                    # the constant it was initialised to
        ...                             # how it was made: epoch, step, objective, nrs version
    }

A bare tensor saved with ``torch.save`` loads too (no metadata). A scalar
sigma (``--sigma 0.25``) is the isotropic special case and becomes a
constant tensor, so both take the same code path everywhere.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from nrs_cli import __version__
from nrs_cli.errors import NrsError
from nrs_cli.serialization import atomic_torch_save, load_weights_only, tensor_digest
from nrs_cli.spec import RunSpec

SIGMA_FORMAT = "nrs-sigma/1"


@dataclass(frozen=True)
class Sigma:
    """Validated noise scales in pixel units, one per input element (derived values are cached)."""

    values: torch.Tensor
    label: str  # for legends and file names: the constant, or the file's stem
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the sigma file it was read from ("" for a constant)

    @cached_property
    def isotropic(self) -> bool:
        return bool((self.values == self.values.reshape(-1)[0]).all())

    @cached_property
    def digest(self) -> str:
        return tensor_digest({"sigma": self.values})

    @cached_property
    def log_sum(self) -> float:
        """sum_i log sigma_i, the sigma part of the certified-area objective."""
        return float(self.values.double().log().sum())

    @cached_property
    def log_mean(self) -> float:
        """mean_i log sigma_i (the log of the geometric mean)."""
        return float(self.values.double().log().mean())

    @cached_property
    def min(self) -> float:
        return float(self.values.min())


def constant_sigma(value: float, input_shape: tuple[int, ...]) -> Sigma:
    if not math.isfinite(value) or value <= 0:
        raise NrsError(f"sigma must be a positive finite number, got {value}")
    return Sigma(torch.full(tuple(input_shape), float(value)), f"{value:g}", {"method": "isotropic", "init": value})


def parse_sigma(text: str | float, spec: RunSpec) -> Sigma:
    """``--sigma``: a number (isotropic) or the path of a sigma file."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return load_sigma(text, spec)
    return constant_sigma(value, spec.data.input_shape)


def load_sigma(path: str | os.PathLike, spec: RunSpec) -> Sigma:
    """Read a sigma file and check it against the spec's input shape."""
    payload = load_weights_only(path, "sigma file")
    if isinstance(payload, torch.Tensor):
        payload = {"sigma": payload}
    if not isinstance(payload, dict) or not isinstance(payload.get("sigma"), torch.Tensor):
        raise NrsError(f"{path} is not a sigma file (expected a tensor or a dict with a 'sigma' tensor)")
    values = payload["sigma"]
    metadata = {key: value for key, value in payload.items() if key != "sigma"}
    return Sigma(validate_sigma(values, spec, str(path)), Path(path).stem, metadata, str(path))


def validate_sigma(values: torch.Tensor, spec: RunSpec, source: str) -> torch.Tensor:
    """Shape, dtype, finiteness and positivity; returns float32 on the CPU."""
    expected = tuple(spec.data.input_shape)
    if not values.is_floating_point():
        raise NrsError(f"{source}: sigma must be a floating-point tensor, got {values.dtype}")
    if tuple(values.shape) != expected:
        raise NrsError(
            f"{source}: sigma has shape {'x'.join(map(str, values.shape)) or 'scalar'}, "
            f"but {spec.name} inputs are {'x'.join(map(str, expected))}"
        )
    if not torch.isfinite(values).all():
        raise NrsError(f"{source}: sigma has {int((~torch.isfinite(values)).sum())} non-finite values")
    if not (values > 0).all():
        raise NrsError(f"{source}: sigma has {int((values <= 0).sum())} values <= 0 (sigma must be positive)")
    return values.detach().to("cpu", torch.float32).contiguous()


def save_sigma(path: str | os.PathLike, values: torch.Tensor, spec: RunSpec, **metadata: Any) -> None:
    payload = {
        "format": SIGMA_FORMAT,
        "sigma": values.detach().to("cpu", torch.float32).contiguous(),
        "dataset": spec.name,
        "input_shape": list(spec.data.input_shape),
        "nrs_version": __version__,
        **metadata,
    }
    atomic_torch_save(payload, path)
