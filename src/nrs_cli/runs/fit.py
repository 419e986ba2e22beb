"""Algorithm 1 in memory, for Python: ``optimize_sigma(model, train_data)`` returns a sigma (no files).

The steps of one initialization of the sweep (:func:`~nrs_cli.method.algorithm1.algorithm1_step`
on seeded batches, :func:`~nrs_cli.runs.optimization.batch_stream`), on the caller's model as it
is: in eval mode with its parameters' ``requires_grad`` off for the call (both restored after),
so the gradient reaches sigma only. Like ANCER's ``optimize_ancer``, but one sigma for the data
rather than one per input; ``nrs optimize-sigma`` runs the same steps over a sweep, evaluated.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset

from nrs_cli.errors import NrsError
from nrs_cli.io.models import check_outputs
from nrs_cli.method.algorithm1 import algorithm1_step
from nrs_cli.method.noise import GaussianNoise
from nrs_cli.method.sampling import SamplingEngine, borrowed
from nrs_cli.method.sigma import Sigma, constant_sigma, validate_sigma
from nrs_cli.method.smooth import model_device
from nrs_cli.runs.optimization import batch_stream


def optimize_sigma(
    model: nn.Module,
    train_data: Dataset | tuple[torch.Tensor, torch.Tensor],
    init: float = 0.25,
    steps: int = 100,
    batch_size: int = 32,
    n0: int = 16,
    lr: float = 0.01,
    seed: int = 0,
) -> Sigma:
    """A per-element sigma for ``model`` on ``train_data``: Algorithm 1 (paper) from the constant ``init``.

    ``train_data`` is a dataset of ``(image, label)`` pairs (images ``(C, H, W)``, pixels in
    [0, 1]) or a pair of tensors ``(images (N, C, H, W), labels (N,))``. Every step draws
    ``batch_size`` inputs (seeded) and ``n0`` noise samples each and takes an Adam step of ``lr``
    on log(sigma) towards a larger certified area over the inputs the smoothed classifier gets
    right. The same arguments give the same sigma. The model is left as it was.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("n0", n0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NrsError(f"optimize_sigma: {name} must be a positive integer, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise NrsError(f"optimize_sigma: lr must be a positive number, got {lr!r}")
    constant_sigma(init, (1,))  # a positive, finite init
    fetch, size, shape = _batches(train_data)
    device = model_device(model)
    with borrowed(model, freeze=True):
        num_classes = _num_classes(model, shape, device)
        engine = SamplingEngine(model, num_classes, shape, device)
        log_sigma = torch.full(shape, math.log(init), device=device, requires_grad=True)
        optimizer = torch.optim.Adam([log_sigma], lr=lr)
        objectives = []
        for step in range(steps):
            indices = batch_stream(size, batch_size, seed, "python", step)
            images, labels = fetch(indices)
            labels = _checked_labels(labels, num_classes)
            noise = GaussianNoise(seed, f"optimize/python/{step}")
            batch = (images.to(device), labels, indices)
            objectives.append(algorithm1_step(engine, log_sigma, optimizer, batch, n0, noise).objective)
    values = validate_sigma(log_sigma.detach().exp(), shape, "the optimized sigma")
    last = next((o for o in reversed(objectives) if math.isfinite(o)), math.nan)
    metadata = {"method": "anisotropic", "init": init, "steps": steps, "objective": last}
    return Sigma(values, "optimized", metadata)


def _batches(train_data) -> tuple:
    """``(fetch(indices) -> (images, labels), size, input shape)`` of a dataset or an (images, labels) pair."""
    if isinstance(train_data, (tuple, list)) and len(train_data) == 2 and isinstance(train_data[0], torch.Tensor):
        images, labels = train_data
        labels = torch.as_tensor(labels)
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels) or len(images) == 0:
            raise NrsError(
                f"optimize_sigma: train_data must be images (N, C, H, W) and labels (N,), got shapes "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        _check_images(images)
        return (lambda idx: (images[idx], labels[idx])), len(images), tuple(images.shape[1:])
    if not (hasattr(train_data, "__getitem__") and hasattr(train_data, "__len__")) or len(train_data) == 0:
        raise NrsError("optimize_sigma: train_data must be a non-empty dataset of (image, label) or (images, labels)")

    def fetch(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [train_data[i] for i in indices]
        images = torch.stack([torch.as_tensor(image) for image, _ in items])
        _check_images(images)
        return images, torch.tensor([int(label) for _, label in items])

    first = torch.as_tensor(train_data[0][0])
    if first.ndim != 3:
        raise NrsError(f"optimize_sigma: images must be (C, H, W), got shape {tuple(first.shape)}")
    return fetch, len(train_data), tuple(first.shape)


def _check_images(images: torch.Tensor) -> None:
    if not images.is_floating_point():
        raise NrsError(f"optimize_sigma: images must hold floating-point pixels in [0, 1], got {images.dtype}")


def _num_classes(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    """How many class scores the model gives (checked on two inputs of the data's shape)."""
    with torch.inference_mode():
        try:
            outputs = model(torch.zeros((1, *shape), device=device))
        except Exception:  # noqa: BLE001 - check_outputs below explains the failure in one line
            outputs = None
    classes = outputs.shape[-1] if isinstance(outputs, torch.Tensor) and outputs.ndim == 2 else 2
    check_outputs(model, shape, classes, "the model", device)
    return int(classes)


def _checked_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (int64) of the model's classes."""
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise NrsError(f"optimize_sigma: labels must be class indices (integers), got {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise NrsError(
            f"optimize_sigma: labels run from {int(labels.min())} to {int(labels.max())}, "
            f"but the model gives {num_classes} class scores"
        )
    return labels.long()
