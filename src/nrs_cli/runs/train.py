"""Training the base classifier f (``nrs train-base``).

Plain supervised training with the spec's optimizer and schedule (a step
schedule, or a linear warm-up and decay), optionally in bf16 mixed precision,
and optionally with Gaussian noise augmentation ``x + sigma * z`` with a
scalar or a per-element sigma (Cohen et al. train this way; the paper trained
on clean images). A run folder gets ``checkpoint.pt``, ``metrics.csv`` (a row
per epoch), ``manifest.json`` and ``train_state.pt``, all rewritten after
every epoch. Rerunning the same command resumes after the last finished
epoch, exactly (optimizer, schedule and random streams included); a run made
with another spec, noise or data is refused.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nrs_cli.errors import NrsError
from nrs_cli.io.data import batch_loader, inputs_digest
from nrs_cli.io.devices import autocast
from nrs_cli.io.models import model_digest, save_checkpoint
from nrs_cli.io.runstate import Resumable, pause_for_tests, spec_sections, write_manifest
from nrs_cli.io.spec import RunSpec, TrainSpec
from nrs_cli.io.tables import Schema, column, columns_of, write_table
from nrs_cli.method.sigma import Sigma, constant_sigma, load_sigma, sigma_number

STATE_FILE = "train_state.pt"


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
    """One epoch of training: a row of the run's metrics.csv."""

    epoch: int = column(int)
    lr: float = column(float)
    train_loss: float = column(float)
    train_accuracy: float = column(float)
    test_accuracy: float = column(float)
    seconds: float = column(float)


TRAIN_SCHEMA = Schema("training metrics", tuple(columns_of(EpochMetrics)), checksum=False, delimiter=",")


def make_optimizer(model: nn.Module, train: TrainSpec) -> torch.optim.Optimizer:
    """The spec's optimizer; weight decay applies to weights, not to normalisation scales and biases."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.lr)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov)


def lr_factor(train: TrainSpec, step: int, steps_per_epoch: int) -> float:
    """The learning rate at optimisation step ``step`` (0-based), as a fraction of ``train.lr``."""
    if train.schedule == "linear":
        warmup = train.warmup_epochs * steps_per_epoch
        total = train.epochs * steps_per_epoch
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(total - warmup, 1))
    return train.lr_gamma ** (step // steps_per_epoch // train.lr_step) if train.lr_step > 0 else 1.0


def augment(images: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips, and for ``crop-flip`` random crops of the image padded by 4 pixels."""
    if mode == "none":
        return images
    flip = torch.rand(len(images), generator=generator) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    if mode == "crop-flip":
        count, channels, height, width = images.shape
        padded = F.pad(images, (4, 4, 4, 4))
        offsets = torch.randint(0, 9, (count, 2), generator=generator)
        rows = (offsets[:, 0:1] + torch.arange(height)).view(count, 1, height, 1)
        columns = (offsets[:, 1:2] + torch.arange(width)).view(count, 1, 1, width)
        images = padded[torch.arange(count).view(-1, 1, 1, 1), torch.arange(channels).view(1, -1, 1, 1), rows, columns]
    return images


def evaluate_accuracy(
    model: nn.Module, dataset: Dataset, device: torch.device, precision: str = "fp32", batch_size: int = 500
) -> float:
    """Clean accuracy of the base classifier (no noise)."""
    model.eval()
    correct = 0
    with torch.inference_mode(), autocast(device, precision):
        for images, labels in batch_loader(dataset, batch_size):
            predictions = model(images.to(device)).argmax(1).cpu()
            correct += int((predictions == labels).sum())
    return correct / len(dataset)


class Trainer:
    """What one training run updates besides the weights: optimizer, schedule and random streams.

    The data order, crops, flips and noise come from ``generator``, dropout
    from the global generator; :meth:`state_dict` holds all of them, so a
    resumed run continues exactly where it stopped.
    """

    def __init__(self, job: TrainJob):
        spec = job.spec
        self.job = job
        torch.manual_seed(spec.seed)
        self.generator = torch.Generator().manual_seed(spec.seed)
        job.model.to(job.device)
        if job.device.type == "cpu" and spec.engine.channels_last:
            job.model.to(memory_format=torch.channels_last)  # 2x faster convolutions on CPU
        self.optimizer = make_optimizer(job.model, spec.train)
        self.loader = batch_loader(job.train_set, spec.train.batch_size, spec.data.workers, self.generator)
        steps = len(self.loader)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(spec.train, s, steps))
        self.sigma = job.noise_sigma.values.to(job.device) if job.noise_sigma is not None else None

    def state_dict(self) -> dict[str, Any]:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "rng": torch.get_rng_state(),
        }
        if self.job.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.job.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.job.device)

    def run_epoch(self, epoch: int, on_batch: Callable[[int, int], None] | None = None) -> EpochMetrics:
        job, train = self.job, self.job.spec.train
        model, device = job.model, job.device
        start = time.perf_counter()
        model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        total_loss, correct, seen = 0.0, 0, 0
        for step, (images, labels) in enumerate(self.loader, 1):
            images = augment(images, train.augment, self.generator).to(device)
            labels = labels.to(device)
            if self.sigma is not None:
                images = images + self.sigma * torch.randn(images.shape, generator=self.generator).to(device)
            with autocast(device, train.precision):
                logits = model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=train.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            if on_batch:
                on_batch(step, len(self.loader))
        if not math.isfinite(total_loss):
            raise NrsError(f"training diverged in epoch {epoch} (loss {total_loss}): lower train.lr")
        return EpochMetrics(
            epoch=epoch,
            lr=lr,
            train_loss=total_loss / seen,
            train_accuracy=correct / seen,
            test_accuracy=evaluate_accuracy(model, job.test_set, device, train.precision),
            seconds=time.perf_counter() - start,
        )


def train_base(
    job: TrainJob,
    on_epoch: Callable[[EpochMetrics, Trainer], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> list[EpochMetrics]:
    """Train ``job.model`` in place up to ``spec.train.epochs`` epochs; seeded by ``spec.seed``.

    With ``job.noise_sigma`` every training image gets ``sigma * z`` added (z
    standard normal). ``resume`` (a saved :data:`STATE_FILE`) continues a run
    after its last finished epoch. ``on_epoch`` sees each epoch's metrics and
    the trainer (to save them); ``on_batch(done, total)`` is for progress bars.
    """
    trainer = Trainer(job)
    history: list[EpochMetrics] = []
    if resume is not None:
        job.model.load_state_dict(resume["model"])
        trainer.load_state_dict(resume["trainer"])
        history = [EpochMetrics(**row) for row in resume["history"]]
    for epoch in range(len(history) + 1, job.spec.train.epochs + 1):
        metrics = trainer.run_epoch(epoch, on_batch)
        history.append(metrics)
        if on_epoch:
            on_epoch(metrics, trainer)
    return history


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    checkpoint: Path
    test_accuracy: float
    history: list[EpochMetrics]
    epochs_run: int  # by this call (0: the run was already complete)


def training_fingerprint(job: TrainJob) -> dict[str, Any]:
    """Everything a trained model depends on, the data actually read included."""
    return {
        "spec": spec_sections(job.spec, "data", "model", "train", "seed"),
        "channels_last": job.spec.engine.channels_last,
        "device_type": job.device.type,
        "noise_sigma_sha256": job.noise_sigma.digest if job.noise_sigma is not None else None,
        "train_sha256": inputs_digest(job.train_set, list(range(len(job.train_set)))),
        "test_sha256": inputs_digest(job.test_set, list(range(len(job.test_set)))),
    }


def load_train_state(output: Resumable, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The state of an earlier run in the output's folder to resume from (None: a new run)."""
    run_dir = output.target
    if not (run_dir / STATE_FILE).is_file() and (run_dir / "checkpoint.pt").is_file():
        raise NrsError(f"{run_dir} already holds a checkpoint that train-base cannot resume ({output.remedy})")
    keys = {"history", "test_accuracy", "model", "trainer"}
    return output.load_state(run_dir / STATE_FILE, fingerprint, keys, "training state")


def train_base_run(
    job: TrainJob,
    run_dir: str | Path,
    on_batch: Callable[[int, int], None] | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train (or resume training) and write the run folder after every epoch.

    Nothing in ``run_dir`` changes before the first epoch of this call
    finishes, so a rerun that fails early keeps the earlier files. With
    ``train.epochs: 0`` the model (e.g. pretrained weights) is evaluated and
    saved as it is.
    """
    run_dir = Path(run_dir)
    with Resumable(run_dir, run_dir / ".lock", f"delete {run_dir} or choose another --name") as output:
        fingerprint = training_fingerprint(job)
        resume = load_train_state(output, fingerprint)
        earlier = [EpochMetrics(**row) for row in resume["history"]] if resume else []
        saver = EpochSaver(job, run_dir, fingerprint, on_epoch, earlier)
        if resume:
            job.model.load_state_dict(resume["model"])
            if not saver.outputs_current():  # killed after the state was saved, before the rest
                saver.save_outputs(resume["test_accuracy"])
            if len(earlier) >= job.spec.train.epochs:
                return saver.result(resume["test_accuracy"], earlier, 0)
        history = train_base(job, saver, on_batch, resume)
        if history:
            return saver.result(history[-1].test_accuracy, history, len(history) - len(earlier))
        accuracy = evaluate_accuracy(job.model.to(job.device), job.test_set, job.device)
        saver.save(accuracy, Trainer(job))
        return saver.result(accuracy, [], 0)


class EpochSaver:
    """Writes the run folder after an epoch: first the state to resume from (the commit point), then the
    checkpoint, metrics and manifest, which a resumed run rewrites from the state if a kill cut them short."""

    def __init__(
        self, job: TrainJob, run_dir: Path, fingerprint: dict[str, Any], on_epoch, earlier: list[EpochMetrics]
    ):
        self.job = job
        self.run_dir = run_dir
        self.fingerprint = fingerprint
        self.on_epoch = on_epoch
        self.history = list(earlier)  # every finished epoch, a resumed run's earlier ones included

    def __call__(self, metrics: EpochMetrics, trainer: Trainer) -> None:
        self.history.append(metrics)
        self.save(metrics.test_accuracy, trainer)
        if self.on_epoch:
            self.on_epoch(metrics)
        pause_for_tests("epochs", len(self.history))

    def save(self, test_accuracy: float, trainer: Trainer) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "history": [dataclasses.asdict(m) for m in self.history],
            "test_accuracy": test_accuracy,
            "model": {key: value.detach().cpu() for key, value in self.job.model.state_dict().items()},
            "trainer": trainer.state_dict(),
        }
        Resumable.save_state(self.run_dir / STATE_FILE, state)
        self.save_outputs(test_accuracy)

    def save_outputs(self, test_accuracy: float) -> None:
        job, noise = self.job, self.job.noise_sigma
        noise_info = {
            "noise_sigma": noise.label if noise else 0.0,
            "noise_sigma_sha256": noise.digest if noise else None,
        }
        model = job.model
        save_checkpoint(
            self.run_dir / "checkpoint.pt",
            model,
            job.spec,
            job.spec.model.arch,
            test_accuracy=test_accuracy,
            **noise_info,
        )
        write_manifest(
            self.run_dir / "manifest.json",
            "train-base",
            job.spec,
            device=str(job.device),
            checkpoint="checkpoint.pt",
            model_sha256=model_digest(model),
            test_accuracy=test_accuracy,
            **noise_info,
        )
        write_table(self.run_dir / "metrics.csv", TRAIN_SCHEMA, [dataclasses.asdict(m) for m in self.history])

    def outputs_current(self) -> bool:
        """Whether the files written after the state describe the state's epochs (metrics.csv comes last)."""
        metrics = self.run_dir / "metrics.csv"
        return metrics.is_file() and metrics.read_text().count("\n") == len(self.history) + 1

    def result(self, test_accuracy: float, history: list[EpochMetrics], epochs_run: int) -> TrainResult:
        return TrainResult(self.run_dir, self.run_dir / "checkpoint.pt", test_accuracy, history, epochs_run)
