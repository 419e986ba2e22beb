"""The commands that run the method: train-base, certify, predict, optimize-sigma, co-optimize."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from nrs_cli.cli.app import command, console
from nrs_cli.cli.options import (
    ALPHA,
    BATCH_ALIAS,
    CHECKPOINT,
    CHUNK_SIZE,
    DATA_ROOT,
    DATASET,
    DEVICE,
    EVAL_MAX,
    FORCE,
    INIT,
    INIT_STEP,
    INITS,
    NUM_SAMPLES,
    OUT_TSV,
    PRECISION,
    RUNS_DIR,
    SEED,
    SET,
    SIGMA,
    SKIP,
    SPLIT,
    STOP,
    engine_options,
    spec_from,
)
from nrs_cli.cli.progress import main_console, progress_bar, row_progress, sweep_printer


@command("train-base")
def train_base_command(
    dataset: str = DATASET,
    data_root: Optional[Path] = DATA_ROOT,
    name: str = typer.Option("base", help="Run name: files go to RUNS_DIR/<dataset>/<name>/."),
    runs_dir: Path = RUNS_DIR,
    epochs: Optional[int] = typer.Option(None, help="Training epochs [spec: train.epochs]."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step [spec: train.batch_size]."),
    lr: Optional[float] = typer.Option(None, help="Learning rate [spec: train.lr]."),
    optimizer: Optional[str] = typer.Option(None, help="adam or sgd [spec: train.optimizer]."),
    noise_sigma: Optional[str] = typer.Option(
        None,
        help="Gaussian noise augmentation: a number, or a sigma file for per-element noise [spec: train.noise_sigma].",
    ),
    arch: Optional[str] = typer.Option(None, help="Architecture (see `nrs list archs`) [spec: model.arch]."),
    pretrained: Optional[bool] = typer.Option(
        None, "--pretrained/--no-pretrained", help="Start from torchvision weights [spec: model.pretrained]."
    ),
    train_size: Optional[int] = typer.Option(
        None, help="Use a seeded subset of the train split [spec: data.train_size]."
    ),
    download: Optional[bool] = typer.Option(
        None, "--download/--no-download", help="Let torchvision download missing data [spec: data.download]."
    ),
    seed: Optional[int] = SEED,
    device: Optional[str] = DEVICE,
    set_: list[str] = SET,
) -> None:
    """Train the base classifier f and save checkpoint, metrics and manifest."""
    from nrs_cli.method.sigma import sigma_number
    from nrs_cli.runs.jobs import train_job
    from nrs_cli.runs.train import train_base_run

    options = {
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.optimizer": optimizer,
        "train.noise_sigma": sigma_number(noise_sigma) if noise_sigma is not None else None,
        "model.arch": arch,
        "model.pretrained": pretrained,
        "data.train_size": train_size,
        "data.download": download,
        "seed": seed,
        "engine.device": device,
    }
    spec = spec_from(dataset, options, set_)
    job, run_dir = train_job(spec, data_root, runs_dir, name, noise_sigma)
    noise = job.noise_sigma
    console.print(
        f"train-base: {spec.name} ({spec.model.arch}), {len(job.train_set)} train / {len(job.test_set)} test images, "
        f"{spec.train.epochs} epochs on {job.device}"
        + (f", noise sigma {noise.label}" if noise else "")
        + f" -> {run_dir}"
    )
    for note in (getattr(job.train_set, "summary", None), getattr(job.test_set, "summary", None)):
        if note:
            console.print(note)
    with progress_bar() as progress:
        task = progress.add_task("epoch 1", total=None)

        def on_batch(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def on_epoch(metrics) -> None:
            progress.update(task, description=f"epoch {metrics.epoch + 1}", completed=0)
            console.print(
                f"epoch {metrics.epoch}/{spec.train.epochs}  loss {metrics.train_loss:.4f}  "
                f"train {metrics.train_accuracy:.1%}  test {metrics.test_accuracy:.1%}  {metrics.seconds:.1f} s"
            )

        result = train_base_run(job, run_dir, on_batch, on_epoch)
    if result.epochs_run < len(result.history):
        console.print(f"resumed after epoch {len(result.history) - result.epochs_run} of {spec.train.epochs}")
    console.print(f"checkpoint: {result.checkpoint}")
    console.print(f"test accuracy: {result.test_accuracy:.1%}")


def _run_table(job, runner, describe: str) -> dict:
    """Run certify or predict, under torchrun when launched by it; rank 0 returns the summary."""
    from nrs_cli.runs.jobs import as_launched

    with as_launched(job) as job:
        say = main_console(job.collective)
        world = job.collective.world
        processes = f" x {world} processes" if world > 1 else ""
        say.print(f"{describe}, {job.spec.engine.precision} on {job.device}{processes} -> {job.out}")
        with progress_bar(say) as progress:
            summary = runner(job, row_progress(progress, "inputs"))
    return summary if job.collective.is_main else {}


@command("certify")
def certify_command(
    sigma: Optional[str] = SIGMA,
    dataset: str = DATASET,
    checkpoint: Optional[Path] = CHECKPOINT,
    n0: Optional[int] = typer.Option(None, help="Selection samples per input [spec: certify.n0]."),
    n: Optional[int] = NUM_SAMPLES,
    alpha: Optional[float] = ALPHA,
    bound: Optional[str] = typer.Option(
        None, help="one-sided (Cohen et al.) or two-sided (also bounds the runner-up) [spec: certify.bound]."
    ),
    chunk_size: Optional[int] = CHUNK_SIZE,
    batch: Optional[int] = BATCH_ALIAS,
    split: Optional[str] = SPLIT,
    skip: Optional[int] = SKIP,
    max_: Optional[int] = STOP,
    seed: Optional[int] = SEED,
    precision: Optional[str] = PRECISION,
    device: Optional[str] = DEVICE,
    out: Optional[Path] = OUT_TSV,
    force: bool = FORCE,
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = DATA_ROOT,
    set_: list[str] = SET,
) -> None:
    """Certify the smoothed classifier on a split (CERTIFY with the ellipsoid of Theorem 3.1).

    Writes a TSV row per input (idx label predict radius correct time, then
    pA_lower pB_upper icdf log_area gm_radius), a summary JSON and a manifest.
    Rerunning the same command resumes after the last complete row.
    """
    from nrs_cli.runs.certification import certify_table
    from nrs_cli.runs.jobs import smoothed_job

    options = {
        "certify.n0": n0,
        "certify.n": n,
        "certify.alpha": alpha,
        "certify.bound": bound,
        "certify.split": split,
        "certify.skip": skip,
        "certify.max": max_,
        **engine_options(chunk_size, batch, seed, precision, device),
    }
    spec = spec_from(dataset, options, set_)
    job, note = smoothed_job("certify", spec, data_root, checkpoint, runs_dir, sigma, out, force)
    if note:
        console.print(note)
    c = job.spec.certify
    describe = (
        f"certify: {job.spec.name} {c.split}, sigma {job.sigma.label}, n0={c.n0} n={c.n} alpha={c.alpha:g} {c.bound}"
    )
    summary = _run_table(job, certify_table, describe)
    if not summary:
        return
    table = Table("certify summary", "", box=None)
    rows = {
        "certified accuracy": f"{summary['certified_accuracy']:.1%} ({summary['correct']}/{summary['inputs']})",
        "abstained": str(summary["abstained"]),
        "wrong": str(summary["wrong"]),
        "mean log_area (certified)": f"{summary['mean_log_area']:.1f}",
        "median l2 radius": f"{summary['median_radius']:.3f}",
        "median gm_radius": f"{summary['median_gm_radius']:.3f}",
        "throughput": f"{summary['samples_per_second']:,.0f} samples/s",
    }
    for name, value in rows.items():
        table.add_row(name, value)
    console.print(table)
    console.print(f"results: {job.out}")


@command("predict")
def predict_command(
    sigma: Optional[str] = SIGMA,
    dataset: str = DATASET,
    checkpoint: Optional[Path] = CHECKPOINT,
    n: Optional[int] = NUM_SAMPLES,
    alpha: Optional[float] = ALPHA,
    chunk_size: Optional[int] = CHUNK_SIZE,
    batch: Optional[int] = BATCH_ALIAS,
    split: Optional[str] = SPLIT,
    skip: Optional[int] = SKIP,
    max_: Optional[int] = STOP,
    seed: Optional[int] = SEED,
    precision: Optional[str] = PRECISION,
    device: Optional[str] = DEVICE,
    out: Optional[Path] = OUT_TSV,
    force: bool = FORCE,
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = DATA_ROOT,
    set_: list[str] = SET,
) -> None:
    """Predict with the smoothed classifier (PREDICT: binomial test, abstains when unsure)."""
    from nrs_cli.runs.certification import predict_table
    from nrs_cli.runs.jobs import smoothed_job

    options = {
        "certify.n": n,
        "certify.alpha": alpha,
        "certify.split": split,
        "certify.skip": skip,
        "certify.max": max_,
        **engine_options(chunk_size, batch, seed, precision, device),
    }
    spec = spec_from(dataset, options, set_)
    job, note = smoothed_job("predict", spec, data_root, checkpoint, runs_dir, sigma, out, force)
    if note:
        console.print(note)
    describe = f"predict: {job.spec.name} {job.spec.certify.split}, sigma {job.sigma.label}, n={job.spec.certify.n}"
    summary = _run_table(job, predict_table, describe)
    if not summary:
        return
    console.print(
        f"accuracy {summary['accuracy']:.1%} ({summary['correct']}/{summary['inputs']}), "
        f"abstained {summary['abstained']}, wrong {summary['wrong']}, {summary['samples_per_second']:,.0f} samples/s"
    )
    console.print(f"results: {job.out}")


@command("optimize-sigma")
def optimize_sigma_command(
    dataset: str = DATASET,
    checkpoint: Optional[Path] = CHECKPOINT,
    name: str = typer.Option("sweep", help="Run name: files go to RUNS_DIR/<dataset>/optimize/<name>/."),
    init: Optional[float] = INIT,
    init_step: Optional[float] = INIT_STEP,
    inits: Optional[int] = INITS,
    sub_epochs: Optional[int] = typer.Option(
        None, help="Sub-epochs per constant, evaluated after each [spec: optimize.sub_epochs]."
    ),
    steps: Optional[int] = typer.Option(
        None, help="Steps per sub-epoch; 0 is one pass over the train split [spec: optimize.steps_per_sub_epoch]."
    ),
    batch_size: Optional[int] = typer.Option(None, help="Inputs per step [spec: optimize.batch_size]."),
    n0: Optional[int] = typer.Option(None, help="Noise samples per input per step [spec: optimize.n0]."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate on log(sigma) [spec: optimize.lr]."),
    lr_decay: Optional[float] = typer.Option(
        None, help="Learning-rate factor per sub-epoch [spec: optimize.lr_decay]."
    ),
    cap_p_hat: Optional[bool] = typer.Option(
        None,
        "--cap-p-hat/--no-cap-p-hat",
        help="Clamp p_hat at alpha^(1/n) of the evaluation, beyond which CERTIFY's bound cannot grow "
        "[spec: optimize.cap_p_hat].",
    ),
    eval_n0: Optional[int] = typer.Option(None, help="CERTIFY n0 of the evaluations [spec: optimize.eval_n0]."),
    eval_n: Optional[int] = typer.Option(None, help="CERTIFY n of the evaluations [spec: optimize.eval_n]."),
    eval_alpha: Optional[float] = typer.Option(
        None, help="CERTIFY alpha of the evaluations [spec: optimize.eval_alpha]."
    ),
    eval_max: Optional[int] = EVAL_MAX,
    baseline: Optional[bool] = typer.Option(
        None,
        "--baseline/--no-baseline",
        help="Also evaluate isotropic sigma at every constant [spec: optimize.baseline].",
    ),
    baseline_step: Optional[float] = typer.Option(
        None, help="Spacing of the isotropic baseline constants (default: init step) [spec: optimize.baseline_step]."
    ),
    train_size: Optional[int] = typer.Option(
        None, help="Use a seeded subset of the train split [spec: data.train_size]."
    ),
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
    }
    spec = spec_from(dataset, options, set_)
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
    spec, o, c = job.spec, job.spec.optimize, job.spec.cooptimize
    rounds = (
        f"{c.rounds} rounds of {c.finetune_steps} fine-tuning steps (lr {c.finetune_lr:g}) and {c.sigma_steps}"
        if co
        else f"{o.sub_epochs} sub-epochs x {o.steps_per_sub_epoch or 'a pass of'}"
    )
    inputs = o.eval_max if o.eval_max >= 0 else len(job.test_set)
    world = job.collective.world
    return (
        f"{'co-optimize' if co else 'optimize-sigma'}: {spec.name}, inits {', '.join(f'{k:g}' for k in constants)}, "
        f"{rounds} steps of Algorithm 1, batch {o.batch_size} x n0 {o.n0}, lr {o.lr:g} (x{o.lr_decay:g} each)"
        + (", p_hat capped at alpha^(1/n)" if o.cap_p_hat else "")
        + f"; evaluation n0={o.eval_n0} n={o.eval_n} alpha={o.eval_alpha:g} on {inputs} test inputs; "
        f"{spec.engine.precision} on {job.device}"
        + (f" x {world} processes" if world > 1 else "")
        + f" -> {job.run_dir}"
    )


@command("co-optimize")
def co_optimize_command(
    dataset: str = DATASET,
    checkpoint: Optional[Path] = CHECKPOINT,
    name: str = typer.Option("co", help="Run name: files go to RUNS_DIR/<dataset>/optimize/<name>/."),
    init: Optional[float] = INIT,
    init_step: Optional[float] = INIT_STEP,
    inits: Optional[int] = INITS,
    rounds: Optional[int] = typer.Option(
        None, help="Rounds per constant, evaluated after each [spec: cooptimize.rounds]."
    ),
    finetune_steps: Optional[int] = typer.Option(
        None, help="Training steps under the current sigma per round [spec: cooptimize.finetune_steps]."
    ),
    finetune_lr: Optional[float] = typer.Option(
        None, help="Adam learning rate of the network [spec: cooptimize.finetune_lr]."
    ),
    sigma_steps: Optional[int] = typer.Option(None, help="Algorithm 1 steps per round [spec: cooptimize.sigma_steps]."),
    eval_max: Optional[int] = EVAL_MAX,
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
        **engine_options(chunk_size, batch, seed, precision, device),
    }
    _run_optimization(spec_from(dataset, options, set_), checkpoint, runs_dir, name, data_root, co=True)
