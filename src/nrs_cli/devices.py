"""Device and precision selection, shared by training, sampling and optimisation."""

from __future__ import annotations

import contextlib

import torch

from nrs_cli.errors import NrsError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NrsError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NrsError(f"device '{name}' requested, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise NrsError(f"device '{name}' requested, but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise NrsError(f"unsupported device '{name}' (use auto, cpu, cuda or cuda:N)")
    return device


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the forward pass, or nothing for fp32.

    With bf16 the base classifier *is* the bf16 network: certificates are
    about that network, and manifests record the precision.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise NrsError(f"unknown precision '{precision}' (use fp32 or bf16)")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise NrsError(f"{torch.cuda.get_device_name(device)} does not support bf16; use --precision fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16)
