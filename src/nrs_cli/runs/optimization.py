"""What every sigma-optimization run shares (the sweep of Fig. 2 and co-optimization), in named parts.

A run optimizes sigma with Algorithm 1 in rounds (a *sub-epoch* of the sweep, a *round* of
co-optimization: both are the ``sub_epoch`` column) and evaluates it after each with the real
CERTIFY statistics on test inputs. Every evaluation is one clean-accuracy / certified-area point
and one row of ``metrics.csv`` (:class:`SweepRow`).

The parts: :class:`OptimizeJob` (what a run works on), :class:`RunState` (``state.pt``: resume
position, rows, tensors; through :class:`~nrs_cli.io.runstate.Resumable`), :class:`OptimizeContext`
(engine, evaluation inputs, events), :func:`run_sub_epoch` (steps of Algorithm 1) and
:func:`save_point` (evaluate, save the sigma, keep its row, save the state).
"""

from __future__ import annotations

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

from nrs_cli.errors import NrsError
from nrs_cli.io.collective import SINGLE_PROCESS, Collective
from nrs_cli.io.data import input_set, inputs_digest
from nrs_cli.io.models import model_digest
from nrs_cli.io.runstate import Resumable, spec_sections, write_manifest
from nrs_cli.io.spec import RunSpec
from nrs_cli.io.tables import Schema, column, columns_of, read_table, write_table
from nrs_cli.method.algorithm1 import algorithm1_step, evaluate_sigma, p_hat_ceiling
from nrs_cli.method.certificate import CertifiedSummary
from nrs_cli.method.noise import GaussianNoise, block_seed
from nrs_cli.method.sampling import SamplingEngine, build_engine
from nrs_cli.method.sigma import Sigma, SigmaStats, save_sigma
from nrs_cli.runs.work import BACKWARD_COST, Progress, Started, WorkCounter

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class OptimizeJob:
    """What an optimization run works on, and where it writes."""

    spec: RunSpec
    model: nn.Module  # the base classifier f
    train_set: Dataset  # Algorithm 1's batches
    test_set: Dataset  # evaluations
    run_dir: Path
    device: torch.device
    checkpoint: str = ""  # where the model came from, for the manifest and sigma files
    collective: Collective = SINGLE_PROCESS


def _number(expected: str = "a number or empty"):
    return column(float, expected=expected, empty_is_nan=True)


@dataclass(frozen=True)
class SweepRow:
    """One evaluation of a sigma: a row of ``metrics.csv``."""

    method: str = column(str)  # isotropic, anisotropic, co-optimized
    init: float = _number()  # the constant sigma started from
    sub_epoch: int = column(int, expected="an integer")  # rounds so far (0 for the isotropic baseline)
    step: int = column(int, expected="an integer")  # optimization steps so far
    lr: float = _number()  # learning rate of the last round (nan: none)
    train_loss: float = _number()  # means over the round's steps (nan: none)
    train_objective: float = _number()
    accuracy: float = _number()
    mean_log_area: float = _number()
    median_radius: float = _number()
    median_gm_radius: float = _number()
    sigma_mean: float = _number()
    sigma_std: float = _number()
    sigma_min: float = _number()
    sigma_max: float = _number()
    gm_sigma: float = _number()
    seconds: float = _number()
    sigma_file: str = column(str)  # relative to the run folder ("" for the baseline)

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


SWEEP_SCHEMA = Schema("sweep metrics", tuple(columns_of(SweepRow)), checksum=False, delimiter=",")


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """A run's metrics.csv, replaced atomically."""
    write_table(path, SWEEP_SCHEMA, rows)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.csv, numbers as numbers (empty cells as nan)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise NrsError(f"{run_dir} is not an optimize-sigma run (no metrics.csv)")
    return [SWEEP_SCHEMA.values(row) for row in read_table(path, [SWEEP_SCHEMA])]


@dataclass(frozen=True)
class StepDone:
    """An optimization step finished (for progress bars)."""

    init: float
    sub_epoch: int
    step: int  # 1-based, over the whole initialization
    steps: int  # of the whole initialization
    loss: float
    right: float  # fraction of the batch whose vote was right
    sigma: SigmaStats


@dataclass(frozen=True)
class PointDone:
    """A sigma was evaluated and its row written."""

    row: SweepRow


SweepEvent = Union[Started, Progress, StepDone, PointDone]  # Started and Progress: nrs_cli.runs.work


class RunState:
    """``state.pt`` of a resumable optimization run: where to resume, every row so far, tensors to resume from.

    The values are plain data (a weights-only load reads them back). ``save`` also rewrites
    ``metrics.csv`` from the rows, so the two never disagree.
    """

    def __init__(self, run_dir: Path, values: dict[str, Any]):
        self.run_dir = run_dir
        self.values = values

    @classmethod
    def load(cls, output: Resumable, fingerprint: dict[str, Any], fresh: dict[str, Any]) -> RunState:
        """The saved state, or ``fresh`` for a new run; refuses a run made with anything else, or a damaged state."""
        run_dir = output.target
        saved = output.load_state(run_dir / STATE_FILE, fingerprint, {"rows", *fresh}, "run state")
        return cls(run_dir, saved if saved is not None else {"fingerprint": fingerprint, "rows": [], **fresh})

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.values["rows"]

    def add_row(self, row: SweepRow) -> None:
        self.values["rows"].append(dataclasses.asdict(row))

    def save(self, collective: Collective) -> None:
        if collective.is_main:
            write_metrics(self.run_dir / "metrics.csv", self.rows)
            Resumable.save_state(self.run_dir / STATE_FILE, self.values)
        collective.barrier()


def run_output(job: OptimizeJob) -> Resumable:
    """The run folder as an output: locked by the process that writes it (rank 0)."""
    remedy = f"delete {job.run_dir} or choose another --name"
    return Resumable(job.run_dir, job.run_dir / ".lock", remedy, writer=job.collective.is_main)


@dataclass(frozen=True)
class OptimizeContext:
    """The engine and settings shared by every part of one run."""

    job: OptimizeJob
    engine: SamplingEngine
    eval_indices: list[int]  # test inputs of every evaluation: the first eval_max of the selection set
    steps: int  # per sub-epoch
    p_hat_max: float
    emit: Callable[[SweepEvent], None]
    work: WorkCounter

    @classmethod
    def build(
        cls, job: OptimizeJob, on_event: Callable[[SweepEvent], None] | None = None, steps: int | None = None
    ) -> OptimizeContext:
        """The context of a run; ``steps`` of Algorithm 1 per sub-epoch (default: the optimize section's)."""
        o = job.spec.optimize
        emit = on_event or (lambda event: None)
        return cls(
            job=job,
            engine=build_engine(job.model, job.spec, job.device),
            eval_indices=input_set(job.test_set, "selection", o.eval_max, job.spec.inputs.seed),
            steps=steps if steps is not None else o.steps_per_sub_epoch or math.ceil(len(job.train_set) / o.batch_size),
            p_hat_max=p_hat_ceiling(o),
            emit=emit,
            work=WorkCounter(emit),
        )

    @property
    def evaluation_work(self) -> int:
        """Noisy samples of one evaluation (see :mod:`nrs_cli.runs.work`)."""
        o = self.job.spec.optimize
        return len(self.eval_indices) * (o.eval_n0 + o.eval_n)

    @property
    def step_work(self) -> int:
        """Noisy samples of one step of Algorithm 1, its backward pass included."""
        o = self.job.spec.optimize
        return o.batch_size * o.n0 * BACKWARD_COST

    def evaluate(self, sigma: Sigma, what: str = "") -> CertifiedSummary:
        """CERTIFY ``sigma`` on the evaluation inputs, reporting the work as it goes."""
        job, start, work = self.job, self.work.done, self.evaluation_work

        def on_inputs(done: int, total: int) -> None:  # this process's share, as a fraction of the whole
            self.work.reach(start + work * done // total, what)

        self.work.reach(start, what)  # says what it is doing from the start

        summary = evaluate_sigma(
            self.engine, sigma, job.test_set, self.eval_indices, job.spec, job.collective, on_inputs
        )
        if self.work.done != start + work:  # a process with no inputs of its own
            self.work.reach(start + work, what)
        return summary

    def write_manifest(self, kind: str, run_fingerprint: dict[str, Any]) -> None:
        job = self.job
        write_manifest(
            job.run_dir / "manifest.json",
            kind,
            job.spec,
            fingerprint=run_fingerprint,
            checkpoint=job.checkpoint,
            device=str(job.device),
            chunk_size=self.engine.chunk_size,
            world_size=job.collective.world,
        )


def fingerprint(job: OptimizeJob, eval_indices: list[int], sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything a run's rows depend on, the data actually read included (and the named spec sections)."""
    return {
        "spec": spec_sections(job.spec, "data", "optimize", "seed", *sections),
        "inputs": {"set": "selection", "seed": job.spec.inputs.seed},
        "precision": job.spec.engine.precision,
        "device_type": job.device.type,
        "model_sha256": model_digest(job.model),
        "train_sha256": inputs_digest(job.train_set, list(range(len(job.train_set)))),
        "test_sha256": inputs_digest(job.test_set, eval_indices),
    }


def batch_stream(size: int, batch_size: int, seed: int, stream: int | str, step: int) -> list[int]:
    """Dataset indices of global batch ``step`` of a stream of batches (a sweep point, a co-optimization start).

    The stream is a concatenation of seeded permutations of the training set, one per pass, so
    batch ``step`` is the same whatever happened before (resume) and whoever computes it (every
    rank of a distributed run).
    """
    start, stop = step * batch_size, (step + 1) * batch_size
    indices: list[int] = []
    for epoch in range(start // size, (stop - 1) // size + 1):
        generator = torch.Generator().manual_seed(block_seed(seed, f"stream/{stream}", 0, epoch))
        order = torch.randperm(size, generator=generator).tolist()
        lo, hi = max(start - epoch * size, 0), min(stop - epoch * size, size)
        indices += order[lo:hi]
    return indices


def run_sub_epoch(
    context: OptimizeContext,
    log_sigma: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    stream: int | str,
    sub_epoch: int,
    init: float,
) -> tuple[list[float], list[float]]:
    """The steps of one sub-epoch of Algorithm 1; returns their losses and objectives.

    ``stream`` keys the batches and the noise (the sweep uses the index of the initialization),
    so every step draws the same data and noise after a resume.
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
        context.work.add(context.step_work)
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
    """Evaluate an optimized sigma, save it as ``sigma_file`` (relative to the run folder), and make its row.

    ``fields`` are the row's remaining columns (method, init, sub_epoch, step, lr, train_loss,
    train_objective); they also go into the sigma file, with the network it goes with
    (``checkpoint``, by default the run's).
    """
    job = context.job
    sigma = Sigma(values, sigma_file.stem, {"method": fields["method"], "init": fields["init"]})
    summary = context.evaluate(
        sigma, f"evaluating {fields['method']} σ from {fields['init']:g} after step {fields['step']}"
    )
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
            chosen_on={"set": "selection", "seed": job.spec.inputs.seed, "indices": context.eval_indices},
        )
    seconds = time.perf_counter() - started
    return SweepRow.of(summary, values, **fields, seconds=seconds, sigma_file=str(sigma_file))


def save_point(
    context: OptimizeContext,
    state: RunState,
    sigma_file: Path,
    started: float,
    fields: dict[str, Any],
    resume_from: dict[str, Any],
    checkpoint: str | None = None,
) -> None:
    """Evaluate an optimized sigma (``resume_from["log_sigma"]``), keep its row, then save the state to
    resume after it: a sub-epoch of the sweep or a round of co-optimization is done."""
    row = evaluate_point(context, resume_from["log_sigma"].exp(), sigma_file, started, checkpoint, **fields)
    state.add_row(row)
    state.values.update(resume_from)
    state.save(context.job.collective)
    context.emit(PointDone(row))


def step_down(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """The learning rate just used; multiplied by ``factor`` for the next sub-epoch or round."""
    lr = optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups:
        group["lr"] *= factor
    return lr


def train_means(losses: list[float], objectives: list[float]) -> dict[str, float]:
    """A row's training columns: the means of the finite losses and objectives of its steps."""
    return {"train_loss": finite_mean(losses), "train_objective": finite_mean(objectives)}


def stack_items(dataset: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the given dataset indices as two tensors."""
    items = [dataset[i] for i in indices]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def finite_mean(values: list[float]) -> float:
    """The mean of the finite values (nan if there are none)."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else math.nan
