"""Co-optimizing the network and sigma (beyond the paper): fine-tuning under the sigma, then Algorithm 1.

Co-optimising the network and sigma (beyond the paper): a base classifier trained under the very
per-element noise that is being optimised for it.

From a base classifier and each constant sigma of the optimize section, ``cooptimize.rounds`` rounds of

1. fine-tuning: ``finetune_steps`` Adam steps of the cross-entropy of ``f(x + sigma * z)`` with
   the current per-element sigma (z standard normal), the network's weights trainable;
2. Algorithm 1: ``sigma_steps`` steps on log(sigma) with the network frozen (the sweep's
   :func:`~nrs_cli.runs.optimization.run_sub_epoch`: batch, n0 and learning rate from the optimize section,
   multiplied by ``cooptimize.lr_decay`` after every round);

each round evaluated with CERTIFY like a sweep point. A round is a row of ``metrics.csv``
(method ``co-optimized``), a sigma file ``sigmas/<name>.pt`` and the network it goes with,
``checkpoints/<name>.pt``. The run folder, its lock, resume and state are the sweep's.

The two halves alternate rather than share one loss (cross-entropy plus a weighted area
objective): each half is then a loop that is already tested (training under noise, Algorithm 1),
no weight between two losses of different scales has to be tuned, and the frozen half of each
round is exactly the certified one. Every draw (batches, noise) is keyed by the round
and step, so a resumed run ends with the same network and sigma as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from nrs_cli.io.devices import autocast
from nrs_cli.io.models import save_checkpoint
from nrs_cli.io.serialization import write_json
from nrs_cli.method.noise import GaussianNoise
from nrs_cli.runs.optimization import (
    OptimizeContext,
    OptimizeJob,
    RunState,
    SweepEvent,
    batch_stream,
    fingerprint,
    run_output,
    run_sub_epoch,
    save_point,
    stack_items,
    step_down,
    train_means,
)
from nrs_cli.runs.sweep import SweepResult, check_optimize_options, sweep_constants
from nrs_cli.runs.work import BACKWARD_COST, work_plan

METHOD = "co-optimized"


def cooptimize_run(job: OptimizeJob, on_event: Callable[[SweepEvent], None] | None = None) -> SweepResult:
    """Co-optimise from every constant of the optimize section into ``job.run_dir``, resumably."""
    spec = job.spec
    check_optimize_options(spec.optimize)
    context = OptimizeContext.build(job, on_event, steps=spec.cooptimize.sigma_steps)
    initial = {key: value.detach().clone() for key, value in job.model.state_dict().items()}
    fresh = {"position": [0, 0], "log_sigma": None, "optimizer": None, "model": None, "model_optimizer": None}
    with run_output(job) as output:
        state = RunState.load(output, fingerprint(job, context.eval_indices, ("cooptimize",)), fresh)
        if job.collective.is_main and state.values["position"] == [0, 0] and not state.rows:
            context.write_manifest("co-optimize", state.values["fingerprint"])
        constants = sweep_constants(spec.optimize)
        co = spec.cooptimize
        round_work = co.finetune_steps * co.finetune_batch_size * BACKWARD_COST + context.steps * context.step_work
        plan = work_plan(context.evaluation_work, constants, co.rounds, round_work, state.values["position"], "round")
        context.work.start(plan)
        for init_index in range(state.values["position"][0], len(constants)):
            cooptimize_from_constant(context, state, (init_index, constants[init_index]), initial)
        points = [r for r in state.rows if r["method"] == METHOD]
        summary = {"points": points, "best": max(points, key=_area, default=None)}
        if job.collective.is_main:
            write_json(summary, job.run_dir / "summary.json")
    return SweepResult(job.run_dir, state.rows, summary)


def _area(row: dict[str, Any]) -> float:
    area = float(row["mean_log_area"])
    return area if math.isfinite(area) else -math.inf


def cooptimize_from_constant(
    context: OptimizeContext, state: RunState, start: tuple[int, float], initial: dict[str, torch.Tensor]
) -> None:
    """The rounds of one starting constant ``(index, sigma)``, from the base network, resumed where they stopped."""
    job, o, rounds = context.job, context.job.spec.optimize, context.job.spec.cooptimize.rounds
    init_index, constant = start
    done = state.values["position"][1]
    model = job.model
    log_sigma = torch.full(job.spec.data.input_shape, math.log(constant), device=job.device, dtype=torch.float32)
    sigma_optimizer = torch.optim.Adam([log_sigma], lr=o.lr)
    model_optimizer = torch.optim.Adam(list(model.parameters()), lr=job.spec.cooptimize.finetune_lr)
    model.load_state_dict(state.values["model"] if done else initial)
    if done:
        with torch.no_grad():
            log_sigma.copy_(state.values["log_sigma"].to(job.device))
        sigma_optimizer.load_state_dict(state.values["optimizer"])
        model_optimizer.load_state_dict(state.values["model_optimizer"])
    log_sigma.requires_grad_(True)
    for round_ in range(done + 1, rounds + 1):
        started = time.perf_counter()
        finetune_under_noise(context, model_optimizer, log_sigma.detach().exp(), f"co{init_index}", round_)
        losses, objectives = run_sub_epoch(context, log_sigma, sigma_optimizer, f"co{init_index}", round_, constant)
        name = f"init{init_index:02d}-{constant:g}_round{round_:02d}.pt"
        network = str(job.run_dir / "checkpoints" / name)
        if job.collective.is_main:
            save_checkpoint(network, model, job.spec, job.spec.model.arch, cooptimized_from=job.checkpoint)
        fields = dict(method=METHOD, init=constant, sub_epoch=round_, step=round_ * context.steps)
        fields.update(lr=step_down(sigma_optimizer, job.spec.cooptimize.lr_decay), **train_means(losses, objectives))
        resume_from = dict(
            position=[init_index, round_],
            log_sigma=log_sigma.detach().cpu().clone(),
            optimizer=sigma_optimizer.state_dict(),
            model={key: value.detach().cpu().clone() for key, value in model.state_dict().items()},
            model_optimizer=model_optimizer.state_dict(),
        )
        save_point(context, state, Path("sigmas") / name, started, fields, resume_from, network)
    state.values.update(position=[init_index + 1, 0], log_sigma=None, optimizer=None, model=None, model_optimizer=None)
    state.save(job.collective)


def finetune_under_noise(
    context: OptimizeContext, optimizer: torch.optim.Optimizer, sigma: torch.Tensor, stream: str, round_: int
) -> float:
    """One round's fine-tuning of the network on ``x + sigma * z``; returns the mean loss.

    Batches and noise are keyed by ``(stream, step)``. Under torchrun each rank takes its share of
    every batch and the gradients are summed, as for Algorithm 1. The network stays in eval mode
    (dropout off, BatchNorm statistics frozen): a rank's dropout masks and batch statistics would
    depend on how the batch is split, so two processes would fine-tune a different network than one.
    """
    job, co = context.job, context.job.spec.cooptimize
    model, device, collective, seed = job.model, job.device, job.collective, job.spec.seed
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.eval()
    losses = []
    for step in range((round_ - 1) * co.finetune_steps, round_ * co.finetune_steps):
        indices = batch_stream(len(job.train_set), co.finetune_batch_size, seed, f"finetune/{stream}", step)
        mine = indices[collective.rank :: collective.world]
        images, labels = stack_items(job.train_set, mine)
        z = torch.empty(images.shape, device=device)
        GaussianNoise(seed, f"finetune/{stream}/{step}", counter=True).inputs(mine, 1, device).fill(z, 0)
        with autocast(device, job.spec.engine.precision):
            logits = model(images.to(device) + sigma * z)
        loss = F.cross_entropy(logits.float(), labels.to(device), reduction="sum") / len(indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for parameter in model.parameters():
            if parameter.grad is not None:
                collective.sum_(parameter.grad)
        optimizer.step()
        losses.append(float(collective.sum_(loss.detach().reshape(1))))
        context.work.add(co.finetune_batch_size * BACKWARD_COST, f"fine-tuning the network, round {round_}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return sum(losses) / len(losses) if losses else math.nan
