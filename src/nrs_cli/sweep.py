"""The sweep behind the paper's Fig. 2, in named parts that other optimisation loops reuse.

The sweep re-initialises sigma to each constant ``init, init + init_step,
...``, optimises it for ``sub_epochs`` sub-epochs of ``steps_per_sub_epoch``
steps of Algorithm 1 (learning rate times ``lr_decay`` after each sub-epoch)
and evaluates it after every sub-epoch with the real CERTIFY statistics on a
test subset. The isotropic baseline is the same evaluation of constant
sigmas. Every evaluation is one clean-accuracy / certified-area point of
Fig. 2 and one row of ``metrics.csv``.

The parts: :class:`RunState` (``state.pt``: resume position, rows, tensors),
:class:`OptimizeContext` (engine, evaluation inputs, events),
:func:`run_isotropic_baseline`, :func:`run_sub_epoch` (steps of Algorithm 1),
:func:`evaluate_point` (one row), :func:`optimise_from_constant` (one
initialisation's sub-epochs) and :func:`compare_to_isotropic`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from nrs_cli.collective import SINGLE_PROCESS, Collective
from nrs_cli.compare import front_curve, gain_over
from nrs_cli.data import inputs_digest, selected_indices
from nrs_cli.errors import NrsError
from nrs_cli.models import model_digest
from nrs_cli.noise import GaussianNoise
from nrs_cli.optimize import (
    algorithm1_step,
    baseline_constants,
    batch_stream,
    check_optimize_options,
    evaluate_sigma,
    p_hat_ceiling,
    sweep_constants,
)
from nrs_cli.results import CertifiedSummary, check_fingerprint, write_manifest, write_metrics
from nrs_cli.sampling import SamplingEngine, build_engine
from nrs_cli.serialization import (
    DIGEST_KEY,
    OutputLock,
    atomic_torch_save,
    check_digest,
    load_weights_only,
    with_digest,
    write_json,
)
from nrs_cli.sigma import Sigma, SigmaStats, constant_sigma, save_sigma
from nrs_cli.spec import RunSpec


@dataclass(frozen=True)
class OptimizeJob:
    """What an optimisation run works on, and where it writes."""

    spec: RunSpec
    model: nn.Module  # the base classifier f
    train_set: Dataset  # Algorithm 1's batches
    test_set: Dataset  # evaluations
    run_dir: Path
    device: torch.device
    checkpoint: str = ""  # where the model came from, for the manifest and sigma files
    collective: Collective = SINGLE_PROCESS


@dataclass(frozen=True)
class SweepRow:
    """One evaluation of a sigma: a row of ``metrics.csv`` (columns ``results.SWEEP_COLUMNS``)."""

    method: str  # isotropic, anisotropic, ...
    init: float  # the constant sigma started from
    sub_epoch: int  # 0 for the isotropic baseline
    step: int  # optimisation steps so far
    lr: float  # learning rate of the last sub-epoch (nan: none)
    train_loss: float  # means over the sub-epoch's steps (nan: none)
    train_objective: float
    accuracy: float
    mean_log_area: float
    median_radius: float
    median_gm_radius: float
    sigma_mean: float
    sigma_std: float
    sigma_min: float
    sigma_max: float
    gm_sigma: float
    seconds: float
    sigma_file: str  # relative to the run folder ("" for the baseline)

    @classmethod
    def of(cls, summary: CertifiedSummary, sigma: torch.Tensor, **fields: Any) -> SweepRow:
        """A row from an evaluation, the sigma evaluated, and the remaining columns by name."""
        stats = SigmaStats.of(sigma)
        return cls(
            **fields,
            **dataclasses.asdict(summary),
            sigma_mean=stats.mean,
            sigma_std=stats.std,
            sigma_min=stats.min,
            sigma_max=stats.max,
            gm_sigma=stats.gm,
        )


@dataclass(frozen=True)
class StepDone:
    """An optimisation step finished (for progress bars)."""

    init: float
    sub_epoch: int
    step: int  # 1-based, over the whole initialisation
    steps: int  # of the whole initialisation
    loss: float
    right: float  # fraction of the batch whose vote was right
    sigma: SigmaStats


@dataclass(frozen=True)
class PointDone:
    """A sigma was evaluated and its row written."""

    row: SweepRow


SweepEvent = Union[StepDone, PointDone]


class RunState:
    """``state.pt`` of a resumable optimisation run: where to resume, every row so far, tensors to resume from.

    The values are plain data (a weights-only load reads them back). ``save``
    also rewrites ``metrics.csv`` from the rows, so the two never disagree.
    """

    def __init__(self, run_dir: Path, values: dict[str, Any]):
        self.run_dir = run_dir
        self.values = values

    @classmethod
    def load(cls, run_dir: Path, fingerprint: dict[str, Any], fresh: dict[str, Any]) -> RunState:
        """The saved state, or ``fresh`` for a new run; refuses a run made with anything else, or a damaged state."""
        path = run_dir / "state.pt"
        if not path.is_file():
            return cls(run_dir, {"fingerprint": fingerprint, "rows": [], **fresh})
        values = load_weights_only(path, "run state")
        remedy = f"delete {run_dir} or choose another --name"
        if not isinstance(values, dict) or set(values) - {DIGEST_KEY} != {"fingerprint", "rows", *fresh}:
            raise NrsError(f"{path} is not the state of this kind of run (damaged?): {remedy}")
        check_digest(values, "run state", path)
        values.pop(DIGEST_KEY, None)
        check_fingerprint(run_dir, values["fingerprint"], fingerprint, remedy)
        return cls(run_dir, values)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.values["rows"]

    def add_row(self, row: SweepRow) -> None:
        self.values["rows"].append(dataclasses.asdict(row))

    def save(self, collective: Collective) -> None:
        if collective.is_main:
            write_metrics(self.run_dir / "metrics.csv", self.rows)
            atomic_torch_save(with_digest(self.values), self.run_dir / "state.pt")
        collective.barrier()


@dataclass(frozen=True)
class OptimizeContext:
    """The engine and settings shared by every part of one run."""

    job: OptimizeJob
    engine: SamplingEngine
    eval_indices: list[int]  # test inputs of every evaluation
    steps: int  # per sub-epoch
    p_hat_max: float
    emit: Callable[[SweepEvent], None]

    @classmethod
    def build(
        cls, job: OptimizeJob, on_event: Callable[[SweepEvent], None] | None = None, steps: int | None = None
    ) -> OptimizeContext:
        """The context of a run; ``steps`` of Algorithm 1 per sub-epoch (default: the optimize section's)."""
        o = job.spec.optimize
        return cls(
            job=job,
            engine=build_engine(job.model, job.spec, job.device),
            eval_indices=selected_indices(len(job.test_set), 1, o.eval_max),
            steps=steps or o.steps_per_sub_epoch or math.ceil(len(job.train_set) / o.batch_size),
            p_hat_max=p_hat_ceiling(o),
            emit=on_event or (lambda event: None),
        )

    def evaluate(self, sigma: Sigma) -> CertifiedSummary:
        job = self.job
        return evaluate_sigma(self.engine, sigma, job.test_set, self.eval_indices, job.spec, job.collective)


def fingerprint(job: OptimizeJob, eval_indices: list[int], sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything a sweep's rows depend on, the data actually read included (and the named spec sections)."""
    return {
        "spec_sha256": job.spec.digest("data", "optimize", "seed", *sections),
        "precision": job.spec.engine.precision,
        "device_type": job.device.type,
        "model_sha256": model_digest(job.model),
        "train_sha256": inputs_digest(job.train_set, list(range(len(job.train_set)))),
        "test_sha256": inputs_digest(job.test_set, eval_indices),
    }


@dataclass(frozen=True)
class SweepResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    comparison: dict[str, Any]  # compare_to_isotropic(rows), also in summary.json


def sweep_run(job: OptimizeJob, on_event: Callable[[SweepEvent], None] | None = None) -> SweepResult:
    """The whole sweep with its isotropic baseline, resumable, into ``job.run_dir``.

    Writes ``metrics.csv`` (a row per evaluation), ``sigmas/*.pt`` (sigma after
    every sub-epoch), ``state.pt`` (where to resume), ``manifest.json`` and
    ``summary.json`` (the comparison with the isotropic baseline). Rerunning
    the same command continues after the last finished sub-epoch; a run made
    with another spec, model or data is refused.
    """
    spec = job.spec
    check_optimize_options(spec.optimize)
    context = OptimizeContext.build(job, on_event)
    fresh = {"position": [0, 0], "baseline_done": False, "log_sigma": None, "optimizer": None}
    with run_lock(job):
        state = RunState.load(job.run_dir, fingerprint(job, context.eval_indices), fresh)
        if job.collective.is_main and state.values["position"] == [0, 0] and not state.rows:
            write_run_manifest(context, "optimize-sigma", state.values["fingerprint"])
        if spec.optimize.baseline and not state.values["baseline_done"]:
            run_isotropic_baseline(context, state)
        constants = sweep_constants(spec)
        for init_index in range(state.values["position"][0], len(constants)):
            optimise_from_constant(context, state, init_index, constants[init_index])
        comparison = compare_to_isotropic(state.rows)
        if job.collective.is_main:
            write_json(comparison, job.run_dir / "summary.json")
    return SweepResult(job.run_dir, state.rows, comparison)


def run_lock(job: OptimizeJob) -> contextlib.AbstractContextManager:
    """The run folder's lock, held by the process that writes it (rank 0)."""
    if not job.collective.is_main:
        return contextlib.nullcontext()
    return OutputLock(job.run_dir, job.run_dir / ".lock")


def write_run_manifest(context: OptimizeContext, kind: str, run_fingerprint: dict[str, Any]) -> None:
    job = context.job
    write_manifest(
        job.run_dir / "manifest.json",
        kind,
        job.spec,
        fingerprint=run_fingerprint,
        checkpoint=job.checkpoint,
        device=str(job.device),
        chunk_size=context.engine.chunk_size,
        world_size=job.collective.world,
    )


def run_isotropic_baseline(context: OptimizeContext, state: RunState) -> None:
    """Evaluate every baseline constant not evaluated yet, saving after each."""
    for constant in baseline_constants(context.job.spec):
        if any(r["method"] == "isotropic" and r["init"] == constant for r in state.rows):
            continue
        started = time.perf_counter()
        sigma = constant_sigma(constant, context.job.spec.data.input_shape)
        row = SweepRow.of(
            context.evaluate(sigma),
            sigma.values,
            method="isotropic",
            init=constant,
            sub_epoch=0,
            step=0,
            lr=math.nan,
            train_loss=math.nan,
            train_objective=math.nan,
            seconds=time.perf_counter() - started,
            sigma_file="",
        )
        state.add_row(row)
        state.save(context.job.collective)
        context.emit(PointDone(row))
    state.values["baseline_done"] = True
    state.save(context.job.collective)


def run_sub_epoch(
    context: OptimizeContext,
    log_sigma: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    stream: int | str,
    sub_epoch: int,
    init: float,
) -> tuple[list[float], list[float]]:
    """The steps of one sub-epoch of Algorithm 1; returns their losses and objectives.

    ``stream`` keys the batches and the noise (the sweep uses the index of the
    initialisation), so every step draws the same data and noise after a resume.
    """
    job, o, steps = context.job, context.job.spec.optimize, context.steps
    collective = job.collective
    losses, objectives = [], []
    for step in range((sub_epoch - 1) * steps, sub_epoch * steps):
        indices = batch_stream(len(job.train_set), o.batch_size, job.spec.seed, stream, step)
        mine = indices[collective.rank :: collective.world]
        images, labels = stack_items(job.train_set, mine)
        noise = GaussianNoise(job.spec.seed, f"optimize/{stream}/{step}")
        result = algorithm1_step(
            context.engine, log_sigma, optimizer, (images, labels, mine), o.n0, noise, collective, context.p_hat_max
        )
        losses.append(result.loss)
        objectives.append(result.objective)
        stats = SigmaStats.of(log_sigma.detach().exp())
        context.emit(
            StepDone(init, sub_epoch, step + 1, o.sub_epochs * steps, result.loss, result.right / result.total, stats)
        )
    return losses, objectives


def evaluate_point(
    context: OptimizeContext,
    values: torch.Tensor,
    sigma_file: Path,
    started: float,
    checkpoint: str | None = None,
    **fields: Any,
) -> SweepRow:
    """Evaluate an optimised sigma, save it as ``sigma_file`` (relative to the run folder), and make its row.

    ``fields`` are the row's remaining columns (method, init, sub_epoch, step,
    lr, train_loss, train_objective); they also go into the sigma file, with
    the network it goes with (``checkpoint``, by default the run's).
    """
    job = context.job
    sigma = Sigma(values, sigma_file.stem, {"method": fields["method"], "init": fields["init"]})
    summary = context.evaluate(sigma)
    if job.collective.is_main:
        save_sigma(
            job.run_dir / sigma_file,
            values,
            job.spec,
            method=fields["method"],
            init=fields["init"],
            sub_epoch=fields["sub_epoch"],
            step=fields["step"],
            accuracy=summary.accuracy,
            mean_log_area=summary.mean_log_area,
            checkpoint=checkpoint or job.checkpoint,
        )
    seconds = time.perf_counter() - started
    return SweepRow.of(summary, values, **fields, seconds=seconds, sigma_file=str(sigma_file))


def optimise_from_constant(context: OptimizeContext, state: RunState, init_index: int, constant: float) -> None:
    """One initialisation of the sweep: its remaining sub-epochs, evaluated and saved after each."""
    job, o = context.job, context.job.spec.optimize
    done = state.values["position"][1]  # sub-epochs of this initialisation already finished
    log_sigma = torch.full(job.spec.data.input_shape, math.log(constant), device=job.device, dtype=torch.float32)
    optimizer = torch.optim.Adam([log_sigma], lr=o.lr)
    if done:
        with torch.no_grad():
            log_sigma.copy_(state.values["log_sigma"].to(job.device))
        optimizer.load_state_dict(state.values["optimizer"])  # with the decayed learning rate
    log_sigma.requires_grad_(True)
    for sub_epoch in range(done + 1, o.sub_epochs + 1):
        started = time.perf_counter()
        losses, objectives = run_sub_epoch(context, log_sigma, optimizer, init_index, sub_epoch, constant)
        fields = dict(method="anisotropic", init=constant, sub_epoch=sub_epoch, step=sub_epoch * context.steps)
        fields.update(lr=step_down(optimizer, o.lr_decay), **train_means(losses, objectives))
        resume_from = dict(
            position=[init_index, sub_epoch],
            log_sigma=log_sigma.detach().cpu().clone(),
            optimizer=optimizer.state_dict(),
        )
        sigma_file = Path("sigmas") / f"init{init_index:02d}-{constant:g}_sub{sub_epoch:02d}.pt"
        save_point(context, state, sigma_file, started, fields, resume_from)
    state.values.update(position=[init_index + 1, 0], log_sigma=None, optimizer=None)
    state.save(job.collective)


def step_down(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """The learning rate just used; multiplied by ``factor`` for the next sub-epoch or round."""
    lr = optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups:
        group["lr"] *= factor
    return lr


def train_means(losses: list[float], objectives: list[float]) -> dict[str, float]:
    """A row's training columns: the means of the finite losses and objectives of its steps."""
    return {"train_loss": finite_mean(losses), "train_objective": finite_mean(objectives)}


def save_point(
    context: OptimizeContext,
    state: RunState,
    sigma_file: Path,
    started: float,
    fields: dict[str, Any],
    resume_from: dict[str, Any],
    checkpoint: str | None = None,
) -> None:
    """Evaluate an optimised sigma (``resume_from["log_sigma"]``), keep its row, then save the state to
    resume after it: a sub-epoch of the sweep or a round of co-optimisation is done."""
    row = evaluate_point(context, resume_from["log_sigma"].exp(), sigma_file, started, checkpoint, **fields)
    state.add_row(row)
    state.values.update(resume_from)
    state.save(context.job.collective)
    context.emit(PointDone(row))


def stack_items(dataset: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the given dataset indices as two tensors."""
    items = [dataset[i] for i in indices]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def finite_mean(values: list[float]) -> float:
    """The mean of the finite values (nan if there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan


def compare_to_isotropic(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Certified-area gain of every anisotropic point over the isotropic front at equal accuracy.

    See :mod:`nrs_cli.compare`. A point outside the front's accuracy range gets
    no interpolated gain. ``nearest_isotropic`` is the closest front point
    within one accuracy point, if any, with its own gain.
    """
    curve = front_curve([(float(r["accuracy"]), float(r["mean_log_area"])) for r in rows if r["method"] == "isotropic"])
    points = []
    for r in rows:
        if r["method"] != "anisotropic" or not math.isfinite(float(r["mean_log_area"])):
            continue
        accuracy, area = float(r["accuracy"]), float(r["mean_log_area"])
        gains = gain_over(curve, accuracy, area)
        points.append(
            {
                "init": r["init"],
                "sub_epoch": r["sub_epoch"],
                "accuracy": accuracy,
                "mean_log_area": area,
                "gain_at_equal_accuracy": gains["gain_at_equal_accuracy"],
                "nearest_isotropic": gains["nearest_reference"],
                "sigma_file": r["sigma_file"],
            }
        )
    gains = [p["gain_at_equal_accuracy"] for p in points if p["gain_at_equal_accuracy"] is not None]
    return {
        "isotropic": [{"accuracy": a, "mean_log_area": m} for a, m in curve],
        "anisotropic": points,
        "max_gain_at_equal_accuracy": max(gains) if gains else None,
    }
