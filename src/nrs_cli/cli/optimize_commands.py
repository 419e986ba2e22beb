"""The commands that optimise sigma: optimize-sigma (Algorithm 1 over a sweep) and co-optimize."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nrs_cli.cli.app import command
from nrs_cli.cli.manual import Panel
from nrs_cli.cli.options import (
    ARCH,
    BASELINE,
    BASELINE_STEP,
    BATCH_ALIAS,
    CAP_P_HAT,
    CHECKPOINT,
    CHUNK_SIZE,
    DATA_ROOT,
    DATASET,
    DEVICE,
    EVAL_ALPHA,
    EVAL_MAX,
    EVAL_N,
    EVAL_N0,
    FINETUNE_LR,
    FINETUNE_STEPS,
    INIT,
    INIT_STEP,
    INITS,
    LR_DECAY,
    MEAN,
    OPTIMIZE_BATCH_SIZE,
    OPTIMIZE_LR,
    OPTIMIZE_N0,
    OPTIMIZE_STEPS,
    PRECISION,
    RESIZE,
    ROUNDS,
    RUNS_DIR,
    SEED,
    SET,
    SIGMA_STEPS,
    STD,
    SUB_EPOCHS,
    TRAIN_SIZE,
    engine_options,
    model_options,
    spec_from,
)
from nrs_cli.cli.progress import main_console, progress_bar, sweep_printer


@command("optimize-sigma")
def optimize_sigma_command(
    dataset: Optional[str] = DATASET,
    checkpoint: Optional[Path] = CHECKPOINT,
    arch: Optional[str] = ARCH,
    resize: Optional[int] = RESIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    name: str = typer.Option(
        "sweep",
        metavar="NAME",
        help="Run name: files go to RUNS_DIR/<dataset>/optimize/<name>/.",
        rich_help_panel=Panel.OUTPUT,
    ),
    init: Optional[float] = INIT,
    init_step: Optional[float] = INIT_STEP,
    inits: Optional[int] = INITS,
    sub_epochs: Optional[int] = SUB_EPOCHS,
    steps: Optional[int] = OPTIMIZE_STEPS,
    batch_size: Optional[int] = OPTIMIZE_BATCH_SIZE,
    n0: Optional[int] = OPTIMIZE_N0,
    lr: Optional[float] = OPTIMIZE_LR,
    lr_decay: Optional[float] = LR_DECAY,
    cap_p_hat: Optional[bool] = CAP_P_HAT,
    eval_n0: Optional[int] = EVAL_N0,
    eval_n: Optional[int] = EVAL_N,
    eval_alpha: Optional[float] = EVAL_ALPHA,
    eval_max: Optional[int] = EVAL_MAX,
    baseline: Optional[bool] = BASELINE,
    baseline_step: Optional[float] = BASELINE_STEP,
    train_size: Optional[int] = TRAIN_SIZE,
    chunk_size: Optional[int] = CHUNK_SIZE,
    batch: Optional[int] = BATCH_ALIAS,
    seed: Optional[int] = SEED,
    precision: Optional[str] = PRECISION,
    device: Optional[str] = DEVICE,
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = DATA_ROOT,
    set_: list[str] = SET,
) -> None:
    """Optimise per-element sigma (Algorithm 1) over a sweep of initial constants.

    Writes metrics.csv (clean accuracy and mean certified area after every
    sub-epoch, and of the isotropic baseline), sigma files and a summary with
    the certified-area gain at equal accuracy. Rerunning resumes.
    """
    options = {
        "optimize.init": init,
        "optimize.init_step": init_step,
        "optimize.inits": inits,
        "optimize.sub_epochs": sub_epochs,
        "optimize.steps_per_sub_epoch": steps,
        "optimize.batch_size": batch_size,
        "optimize.n0": n0,
        "optimize.lr": lr,
        "optimize.lr_decay": lr_decay,
        "optimize.cap_p_hat": cap_p_hat,
        "optimize.eval_n0": eval_n0,
        "optimize.eval_n": eval_n,
        "optimize.eval_alpha": eval_alpha,
        "optimize.eval_max": eval_max,
        "optimize.baseline": baseline,
        "optimize.baseline_step": baseline_step,
        "data.train_size": train_size,
        **engine_options(chunk_size, batch, seed, precision, device),
        **model_options(arch, resize, mean, std),
    }
    spec = spec_from(dataset, options, set_, data_root)
    _run_optimization(spec, checkpoint, runs_dir, name, data_root)


def _run_optimization(
    spec, checkpoint: Optional[Path], runs_dir: Path, name: str, data_root: Optional[Path], co=False
) -> None:
    """optimize-sigma (or co-optimize): load, describe, run (under torchrun when launched by it), report."""
    from nrs_cli.runs.cooptimize import cooptimize_run
    from nrs_cli.runs.jobs import as_launched, optimize_job
    from nrs_cli.runs.sweep import run_sweep, sweep_constants

    job = optimize_job(spec, data_root, checkpoint, runs_dir, name)
    with as_launched(job) as job:
        say = main_console(job.collective)
        say.print(_describe_optimization(job, sweep_constants(spec.optimize), co))
        with progress_bar(say) as progress:
            result = (cooptimize_run if co else run_sweep)(job, sweep_printer(say, progress))
    best = result.comparison.get("max_gain_at_equal_accuracy")
    if best is not None:
        say.print(f"largest certified-area gain over isotropic sigma at equal accuracy: {best:.1f} (log_area)")
    say.print(f"results: {job.run_dir}/metrics.csv, sigmas in {job.run_dir}/sigmas/")


def _describe_optimization(job, constants: list[float], co: bool) -> str:
    from nrs_cli.io.data import input_set

    spec, o, c = job.spec, job.spec.optimize, job.spec.cooptimize
    rounds = (
        f"{c.rounds} rounds of {c.finetune_steps} fine-tuning steps (lr {c.finetune_lr:g}) and {c.sigma_steps}"
        if co
        else f"{o.sub_epochs} sub-epochs x {o.steps_per_sub_epoch or 'a pass of'}"
    )
    inputs = len(input_set(job.test_set, "selection", o.eval_max, spec.inputs.seed))
    world = job.collective.world
    return (
        f"{'co-optimize' if co else 'optimize-sigma'}: {spec.name}, inits {', '.join(f'{k:g}' for k in constants)}, "
        f"{rounds} steps of Algorithm 1, batch {o.batch_size} x n0 {o.n0}, lr {o.lr:g} (x{o.lr_decay:g} each)"
        + (", p_hat capped at alpha^(1/n)" if o.cap_p_hat else "")
        + f"; evaluation n0={o.eval_n0} n={o.eval_n} alpha={o.eval_alpha:g} on {inputs} selection inputs; "
        f"{spec.engine.precision} on {job.device}"
        + (f" x {world} processes" if world > 1 else "")
        + f" -> {job.run_dir}"
    )


@command("co-optimize")
def co_optimize_command(
    dataset: Optional[str] = DATASET,
    checkpoint: Optional[Path] = CHECKPOINT,
    arch: Optional[str] = ARCH,
    resize: Optional[int] = RESIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    name: str = typer.Option(
        "co",
        metavar="NAME",
        help="Run name: files go to RUNS_DIR/<dataset>/optimize/<name>/.",
        rich_help_panel=Panel.OUTPUT,
    ),
    init: Optional[float] = INIT,
    init_step: Optional[float] = INIT_STEP,
    inits: Optional[int] = INITS,
    rounds: Optional[int] = ROUNDS,
    finetune_steps: Optional[int] = FINETUNE_STEPS,
    finetune_lr: Optional[float] = FINETUNE_LR,
    sigma_steps: Optional[int] = SIGMA_STEPS,
    eval_max: Optional[int] = EVAL_MAX,
    train_size: Optional[int] = TRAIN_SIZE,
    chunk_size: Optional[int] = CHUNK_SIZE,
    batch: Optional[int] = BATCH_ALIAS,
    seed: Optional[int] = SEED,
    precision: Optional[str] = PRECISION,
    device: Optional[str] = DEVICE,
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = DATA_ROOT,
    set_: list[str] = SET,
) -> None:
    """Co-optimise the network and a per-element sigma: rounds of fine-tuning under the current sigma and
    Algorithm 1 on the frozen network, from each constant sigma (beyond the paper).

    Writes metrics.csv (a row per round), sigmas/ and checkpoints/ (the network of each round) and a
    summary. Rerunning resumes after the last finished round.
    """
    options = {
        "optimize.init": init,
        "optimize.init_step": init_step,
        "optimize.inits": inits,
        "cooptimize.rounds": rounds,
        "cooptimize.finetune_steps": finetune_steps,
        "cooptimize.finetune_lr": finetune_lr,
        "cooptimize.sigma_steps": sigma_steps,
        "optimize.eval_max": eval_max,
        "data.train_size": train_size,
        **engine_options(chunk_size, batch, seed, precision, device),
        **model_options(arch, resize, mean, std),
    }
    _run_optimization(spec_from(dataset, options, set_, data_root), checkpoint, runs_dir, name, data_root, co=True)
