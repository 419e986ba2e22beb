"""Training the base classifier f (``nrs train-base``).

Plain supervised training with the spec's optimizer and step schedule, and
optionally Gaussian noise augmentation ``x + sigma * z`` with a scalar or a
per-element sigma (Cohen et al. train this way; the paper trained on clean
images). A run folder gets ``checkpoint.pt`` (rewritten after every epoch),
``metrics.csv`` (a row per epoch) and ``manifest.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nrs_cli.models import model_digest, save_checkpoint
from nrs_cli.results import CsvLog, write_manifest
from nrs_cli.sigma import Sigma, constant_sigma, load_sigma, sigma_number
from nrs_cli.spec import RunSpec

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_accuracy", "test_accuracy", "seconds"]


@dataclass(frozen=True)
class TrainJob:
    """What training works on: the spec's train section, a model (trained in place), the data and the noise."""

    spec: RunSpec
    model: nn.Module
    train_set: Dataset
    test_set: Dataset
    device: torch.device
    noise_sigma: Sigma | None = None  # Gaussian noise augmentation x + sigma * z (None: clean images)


def training_sigma(spec: RunSpec, option: str | None = None) -> Sigma | None:
    """The noise to train under: a sigma file given as ``--noise-sigma``, else ``train.noise_sigma``
    (where a number given as ``--noise-sigma`` goes). 0 means clean training; a negative number is an error.
    """
    if option is not None and sigma_number(option) is None:
        return load_sigma(option, spec)
    if spec.train.noise_sigma == 0:
        return None
    return constant_sigma(spec.train.noise_sigma, spec.data.input_shape)


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float


def make_optimizer(model: nn.Module, spec: RunSpec) -> torch.optim.Optimizer:
    train = spec.train
    if train.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def augment(images: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips, and for ``crop-flip`` random 4-pixel-padded crops."""
    if mode == "none":
        return images
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if mode == "crop-flip":
        padded = F.pad(images, (4, 4, 4, 4))
        offsets = torch.randint(0, 9, (len(images), 2), generator=generator).tolist()
        height, width = images.shape[-2:]
        images = torch.stack([padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])
    return images


def evaluate_accuracy(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 500) -> float:
    """Clean accuracy of the base classifier (no noise)."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for images, labels in DataLoader(dataset, batch_size=batch_size):
            predictions = model(images.to(device)).argmax(1).cpu()
            correct += int((predictions == labels).sum())
    return correct / len(dataset)


def train_base(
    job: TrainJob,
    on_epoch: Callable[[EpochMetrics, nn.Module], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[EpochMetrics]:
    """Train ``job.model`` in place for ``spec.train.epochs`` epochs; seeded by ``spec.seed``.

    With ``job.noise_sigma`` every training image gets ``sigma * z`` added (z
    standard normal). ``on_epoch`` sees each epoch's metrics and the model (to
    save it); ``on_batch(done, total)`` is for progress bars.
    """
    spec, model, device = job.spec, job.model, job.device
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    model.to(device)
    if device.type == "cpu" and spec.engine.channels_last:
        model.to(memory_format=torch.channels_last)  # 2x faster convolutions on CPU
    optimizer = make_optimizer(model, spec)
    schedule = (
        torch.optim.lr_scheduler.StepLR(optimizer, spec.train.lr_step, spec.train.lr_gamma)
        if spec.train.lr_step > 0
        else None
    )
    loader = DataLoader(
        job.train_set,
        batch_size=spec.train.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=spec.data.workers,
    )
    sigma = job.noise_sigma.values.to(device) if job.noise_sigma is not None else None
    history = []
    for epoch in range(1, spec.train.epochs + 1):
        start = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        total_loss, correct, seen = 0.0, 0, 0
        for step, (images, labels) in enumerate(loader, 1):
            images = augment(images, spec.train.augment, generator).to(device)
            labels = labels.to(device)
            if sigma is not None:
                images = images + sigma * torch.randn(images.shape, generator=generator).to(device)
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            if on_batch:
                on_batch(step, len(loader))
        if schedule:
            schedule.step()
        metrics = EpochMetrics(
            epoch=epoch,
            lr=lr,
            train_loss=total_loss / seen,
            train_accuracy=correct / seen,
            test_accuracy=evaluate_accuracy(model, job.test_set, device),
            seconds=time.perf_counter() - start,
        )
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics, model)
    return history


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint: Path
    test_accuracy: float
    history: list[EpochMetrics]


def train_base_run(
    job: TrainJob,
    run_dir: str | Path,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train and write the run folder: checkpoint, metrics.csv and manifest.json.

    The checkpoint and the metrics row are written after every epoch, so an
    interrupted run keeps every finished epoch. With ``train.epochs: 0`` the
    model (e.g. pretrained weights) is evaluated and saved as it is.
    """
    spec, noise_sigma = job.spec, job.noise_sigma
    run_dir = Path(run_dir)
    checkpoint = run_dir / "checkpoint.pt"
    log = CsvLog(run_dir / "metrics.csv", METRIC_COLUMNS)
    noise_info = {
        "noise_sigma": noise_sigma.label if noise_sigma else 0.0,
        "noise_sigma_sha256": noise_sigma.digest if noise_sigma else None,
    }

    def save(model: nn.Module, test_accuracy: float) -> None:
        save_checkpoint(checkpoint, model, spec, spec.model.arch, test_accuracy=test_accuracy, **noise_info)
        write_manifest(
            run_dir / "manifest.json",
            "train-base",
            spec,
            device=str(job.device),
            checkpoint=checkpoint.name,
            model_sha256=model_digest(model),
            test_accuracy=test_accuracy,
            **noise_info,
        )

    def finish_epoch(metrics: EpochMetrics, model: nn.Module) -> None:
        log.append(vars(metrics))
        save(model, metrics.test_accuracy)
        if on_epoch:
            on_epoch(metrics)

    history = train_base(job, finish_epoch, on_batch)
    if history:
        accuracy = history[-1].test_accuracy
    else:
        accuracy = evaluate_accuracy(job.model.to(job.device), job.test_set, job.device)
        save(job.model, accuracy)
    return TrainResult(run_dir, checkpoint, accuracy, history)
