"""The sweep behind the paper's Fig. 2 (``nrs optimize-sigma``).

The sweep re-initializes sigma to each constant ``init, init + init_step, ...``, optimizes it for
``sub_epochs`` sub-epochs of ``steps_per_sub_epoch`` steps of Algorithm 1 (learning rate times
``lr_decay`` after each sub-epoch) and evaluates it after every sub-epoch with the real CERTIFY
statistics on a test subset. The isotropic baseline is the same evaluation of constant sigmas.
``summary.json`` holds every optimized point's gain over the isotropic front at equal clean
accuracy (:func:`~nrs_cli.method.fronts.compare_to_front`). The parts it is made of are shared
with co-optimization (:mod:`nrs_cli.runs.optimization`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from nrs_cli.errors import NrsError
from nrs_cli.io.serialization import write_json
from nrs_cli.io.spec import OptimizeSpec
from nrs_cli.method.algorithm1 import P_HAT_RANGE, p_hat_ceiling
from nrs_cli.method.certificate import check_options
from nrs_cli.method.fronts import compare_to_front
from nrs_cli.method.sigma import constant_sigma
from nrs_cli.runs.optimization import (
    OptimizeContext,
    OptimizeJob,
    PointDone,
    RunState,
    SweepEvent,
    SweepRow,
    fingerprint,
    run_output,
    run_sub_epoch,
    save_point,
    step_down,
    train_means,
)
from nrs_cli.runs.work import Started, work_plan


@dataclass(frozen=True)
class SweepResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    comparison: dict[str, Any]  # the run's summary.json


def run_sweep(job: OptimizeJob, on_event: Callable[[SweepEvent], None] | None = None) -> SweepResult:
    """The whole sweep with its isotropic baseline, resumable, into ``job.run_dir``.

    Writes ``metrics.csv`` (a row per evaluation), ``sigmas/*.pt`` (sigma after every
    sub-epoch), ``state.pt`` (where to resume), ``manifest.json`` and ``summary.json`` (the
    comparison with the isotropic baseline). Rerunning the same command continues after the
    last finished sub-epoch; a run made with another spec, model or data is refused.
    """
    spec = job.spec
    check_optimize_options(spec.optimize)
    context = OptimizeContext.build(job, on_event)
    fresh = {"position": [0, 0], "baseline_done": False, "log_sigma": None, "optimizer": None}
    with run_output(job) as output:
        state = RunState.load(output, fingerprint(job, context.eval_indices), fresh)
        if job.collective.is_main and state.values["position"] == [0, 0] and not state.rows:
            context.write_manifest("optimize-sigma", state.values["fingerprint"])
        context.work.start(sweep_plan(context, state))
        if spec.optimize.baseline and not state.values["baseline_done"]:
            run_isotropic_baseline(context, state)
        constants = sweep_constants(spec.optimize)
        for init_index in range(state.values["position"][0], len(constants)):
            optimize_from_constant(context, state, init_index, constants[init_index])
        summary = sweep_summary(state.rows)
        if job.collective.is_main:
            write_json(summary, job.run_dir / "summary.json")
    return SweepResult(job.run_dir, state.rows, summary)


def sweep_constants(o: OptimizeSpec) -> list[float]:
    """The constants sigma is initialized to: init, init + init_step, ..."""
    return [round(o.init + k * o.init_step, 10) for k in range(o.inits)]


def baseline_constants(o: OptimizeSpec) -> list[float]:
    """Isotropic baseline constants: the sweep's range every baseline_step (default init_step)."""
    step = o.baseline_step or o.init_step
    last = sweep_constants(o)[-1]
    count = int(math.floor((last - o.init) / step + 1e-9)) + 1 if step > 0 else 1
    return [round(o.init + k * step, 10) for k in range(count)]


def sweep_plan(context: OptimizeContext, state: RunState) -> Started:
    """The work of the whole sweep, the isotropic baseline included, and how much of it the state says is done."""
    o = context.job.spec.optimize
    baseline = baseline_constants(o) if o.baseline else []
    evaluated = {row["init"] for row in state.rows if row["method"] == "isotropic"}
    return work_plan(
        context.evaluation_work,
        sweep_constants(o),
        o.sub_epochs,
        context.steps * context.step_work,
        state.values["position"],
        "sub-epoch",
        (len(baseline), sum(constant in evaluated for constant in baseline)),
    )


def check_optimize_options(o: OptimizeSpec) -> None:
    """Refuse settings under which the sweep cannot run or cannot certify."""
    check_options(o.eval_n0, o.eval_n, o.eval_alpha)
    if o.inits < 1 or o.sub_epochs < 1 or o.batch_size < 1 or o.n0 < 1:
        raise NrsError("optimize: inits, sub_epochs, batch_size and n0 must be at least 1")
    if o.init <= 0 or o.init + (o.inits - 1) * o.init_step <= 0:
        raise NrsError(f"optimize: every initial sigma must be positive (init {o.init}, step {o.init_step})")
    if o.baseline_step is not None and o.baseline_step <= 0:
        raise NrsError(f"optimize: baseline_step must be positive (got {o.baseline_step})")
    if p_hat_ceiling(o) <= P_HAT_RANGE[0]:  # only a cap can be this low
        raise NrsError(
            f"optimize: cap_p_hat needs an evaluation that can certify: alpha^(1/n) = "
            f"{o.eval_alpha}^(1/{o.eval_n}) is not above 1/2 (raise eval_n)"
        )
    if o.lr <= 0 or o.lr_decay <= 0 or o.steps_per_sub_epoch < 0:
        raise NrsError("optimize: lr and lr_decay must be positive and steps_per_sub_epoch >= 0")


def run_isotropic_baseline(context: OptimizeContext, state: RunState) -> None:
    """Evaluate every baseline constant not evaluated yet, saving after each."""
    for constant in baseline_constants(context.job.spec.optimize):
        if any(r["method"] == "isotropic" and r["init"] == constant for r in state.rows):
            continue
        started = time.perf_counter()
        sigma = constant_sigma(constant, context.job.spec.data.input_shape)
        row = SweepRow.of(
            context.evaluate(sigma, f"evaluating isotropic σ = {constant:g}"),
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


def optimize_from_constant(context: OptimizeContext, state: RunState, init_index: int, constant: float) -> None:
    """One initialization of the sweep: its remaining sub-epochs, evaluated and saved after each."""
    job, o = context.job, context.job.spec.optimize
    done = state.values["position"][1]  # sub-epochs of this initialization already finished
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


def sweep_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``summary.json``: the isotropic front and every optimized point's gain over it at equal accuracy.

    A point outside the front's accuracy range gets no gain at equal accuracy; ``nearest_isotropic``
    is the closest front point within one accuracy point, if any, with its own gain.
    """
    optimized = [r for r in rows if r["method"] == "anisotropic"]
    comparison = compare_to_front(optimized, [r for r in rows if r["method"] == "isotropic"])
    points = [
        {
            "init": p["init"],
            "sub_epoch": p["sub_epoch"],
            "accuracy": p["accuracy"],
            "mean_log_area": p["mean_log_area"],
            "gain_at_equal_accuracy": p["gain_at_equal_accuracy"],
            "nearest_isotropic": p["nearest_reference"],
            "sigma_file": p["sigma_file"],
        }
        for p in comparison["points"]
    ]
    return {
        "isotropic": comparison["reference"],
        "anisotropic": points,
        "max_gain_at_equal_accuracy": comparison["max_gain_at_equal_accuracy"],
    }
