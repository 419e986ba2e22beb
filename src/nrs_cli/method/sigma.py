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

from nrs_cli.errors import NrsError
from nrs_cli.io.serialization import atomic_torch_save, check_digest, load_weights_only, tensor_digest, with_digest
from nrs_cli.io.spec import RunSpec
from nrs_cli.io.spec_ranges import SIGMA_BOUNDS
from nrs_cli.version import __version__

SIGMA_FORMAT = "nrs-sigma/1"


@dataclass(frozen=True)
class SigmaStats:
    """Summary statistics of a sigma (pixel units)."""

    mean: float
    std: float
    min: float
    max: float
    gm: float  # geometric mean, exp(mean_i log sigma_i)

    @classmethod
    def of(cls, values: torch.Tensor) -> SigmaStats:
        values = values.detach().double()
        return cls(
            mean=float(values.mean()),
            std=float(values.std()) if values.numel() > 1 else 0.0,
            min=float(values.min()),
            max=float(values.max()),
            gm=float(values.log().mean().exp()),
        )


@dataclass(frozen=True)
class Sigma:
    """Validated noise scales in pixel units, one per input element (derived values are cached)."""

    values: torch.Tensor
    label: str  # for legends and file names: the constant, or the file's stem
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the sigma file it was read from ("" for a constant)

    @cached_property
    def tag(self) -> str:
        """How the sigma is named in result file names: its file's stem, or ``iso-<value>`` for a constant."""
        return self.label if self.source else f"iso-{self.label}"

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

    @cached_property
    def stats(self) -> SigmaStats:
        return SigmaStats.of(self.values)


def constant_sigma(value: float, input_shape: tuple[int, ...]) -> Sigma:
    """The isotropic sigma: ``value`` everywhere."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise NrsError(f"sigma must be a positive finite number, got {value}")
    values = validate_sigma(torch.full(tuple(input_shape), float(value), dtype=torch.float64), input_shape, "sigma")
    return Sigma(values, f"{value:g}", {"method": "isotropic", "init": value})


def sigma_number(text: str | float) -> float | None:
    """The number a ``--sigma``-like option gives, or None when it names a sigma file."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def parse_sigma(text: str | float, spec: RunSpec) -> Sigma:
    """``--sigma``: a number (isotropic) or the path of a sigma file."""
    value = sigma_number(text)
    if value is None:
        return load_sigma(text, spec)
    return constant_sigma(value, spec.data.input_shape)


def load_sigma(path: str | os.PathLike, spec: RunSpec | None = None) -> Sigma:
    """Read a sigma file and check it: against the spec's input shape, or without a spec its values alone."""
    payload = load_weights_only(path, "sigma file")
    if isinstance(payload, torch.Tensor):
        payload = {"sigma": payload}
    if not isinstance(payload, dict) or not isinstance(payload.get("sigma"), torch.Tensor):
        raise NrsError(f"{path} is not a sigma file (expected a tensor or a dict with a 'sigma' tensor)")
    check_digest(payload, "sigma file", path)
    if spec is None:  # its values alone
        values = validate_sigma(payload["sigma"], tuple(payload["sigma"].shape), str(path))
    else:
        values = validate_sigma(payload["sigma"], spec.data.input_shape, str(path), spec.name)
    metadata = {key: value for key, value in payload.items() if key != "sigma"}
    return Sigma(values, Path(path).stem, metadata, str(path))


def validate_sigma(
    values: torch.Tensor, input_shape: tuple[int, ...], source: str, dataset: str = "the"
) -> torch.Tensor:
    """A dense floating-point tensor of the input shape, every element in :data:`SIGMA_BOUNDS` once it is
    float32 (the engine's dtype: a float64 1e-300 would become 0 there); returns it as float32 on the CPU."""
    if values.layout != torch.strided:
        raise NrsError(f"{source}: sigma must be a dense tensor, got a {values.layout} one")
    if not values.is_floating_point():
        raise NrsError(f"{source}: sigma must be a floating-point tensor, got {values.dtype}")
    if tuple(values.shape) != tuple(input_shape):
        raise NrsError(
            f"{source}: sigma has shape {'x'.join(map(str, values.shape)) or 'scalar'}, "
            f"but {dataset} inputs are {'x'.join(map(str, input_shape))}"
        )
    converted = values.detach().to("cpu", torch.float32).contiguous()
    low, high = SIGMA_BOUNDS
    for problem, bad in (
        ("non-finite values", ~torch.isfinite(converted)),
        ("values <= 0 (sigma must be positive)", converted <= 0),
        (f"values outside [{low:g}, {high:g}] pixel units", (converted < low) | (converted > high)),
    ):
        if bad.any():
            raise NrsError(f"{source}: sigma has {int(bad.sum())} {problem} in float32, the engine's precision")
    return converted


def save_sigma(path: str | os.PathLike, values: torch.Tensor, spec: RunSpec, **metadata: Any) -> None:
    payload = {
        "format": SIGMA_FORMAT,
        "sigma": values.detach().to("cpu", torch.float32).contiguous(),
        "dataset": spec.name,
        "input_shape": list(spec.data.input_shape),
        "nrs_version": __version__,
        **metadata,
    }
    atomic_torch_save(with_digest(payload), path)
