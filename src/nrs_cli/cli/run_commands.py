"""The commands that run the method on given sigmas: train-base, certify, predict."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from nrs_cli.cli.app import command, console
from nrs_cli.cli.manual import Panel
from nrs_cli.cli.options import (
    ALPHA,
    ARCH,
    BATCH_ALIAS,
    CHECKPOINT,
    CHUNK_SIZE,
    DATA_ROOT,
    DATASET,
    DEVICE,
    FORCE,
    INPUTS,
    MEAN,
    NUM_SAMPLES,
    OUT_TSV,
    PRECISION,
    RESIZE,
    RUNS_DIR,
    SEED,
    SET,
    SIGMA,
    SKIP,
    SPLIT,
    STD,
    STOP,
    TRAIN_PRECISION,
    TRAIN_SIZE,
    engine_options,
    model_options,
    spec_from,
)
from nrs_cli.cli.progress import main_console, progress_bar, row_progress


@command("train-base")
def train_base_command(
    dataset: Optional[str] = DATASET,
    data_root: Optional[Path] = DATA_ROOT,
    name: str = typer.Option(
        "base", metavar="NAME", help="Run name: files go to RUNS_DIR/<dataset>/<name>/.", rich_help_panel=Panel.OUTPUT
    ),
    runs_dir: Path = RUNS_DIR,
    epochs: Optional[int] = typer.Option(
        None, help="Training epochs [spec: train.epochs].", rich_help_panel=Panel.TRAINING
    ),
    batch_size: Optional[int] = typer.Option(
        None, help="Images per step [spec: train.batch_size].", rich_help_panel=Panel.TRAINING
    ),
    lr: Optional[float] = typer.Option(None, help="Learning rate [spec: train.lr].", rich_help_panel=Panel.TRAINING),
    optimizer: Optional[str] = typer.Option(
        None, metavar="adam|sgd", help="Optimizer [spec: train.optimizer].", rich_help_panel=Panel.TRAINING
    ),
    noise_sigma: Optional[str] = typer.Option(
        None,
        metavar="SIGMA",
        help="Gaussian noise augmentation: a number, or a sigma file for per-element noise [spec: train.noise_sigma].",
        rich_help_panel=Panel.TRAINING,
    ),
    arch: Optional[str] = ARCH,
    resize: Optional[int] = RESIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    pretrained: Optional[bool] = typer.Option(
        None,
        "--pretrained/--no-pretrained",
        help="Start from torchvision weights [spec: model.pretrained].",
        rich_help_panel=Panel.MODEL,
    ),
    train_size: Optional[int] = TRAIN_SIZE,
    download: Optional[bool] = typer.Option(
        None,
        "--download/--no-download",
        help="Let torchvision download missing data [spec: data.download].",
        rich_help_panel=Panel.DATA,
    ),
    seed: Optional[int] = SEED,
    precision: Optional[str] = TRAIN_PRECISION,
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
        **model_options(arch, resize, mean, std),
        "model.pretrained": pretrained,
        "data.train_size": train_size,
        "data.download": download,
        "seed": seed,
        "train.precision": precision,
        "engine.device": device,
    }
    spec = spec_from(dataset, options, set_, data_root)
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
        task = progress.add_task("epoch 1", total=None, unit="batches")

        def on_batch(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def on_epoch(metrics) -> None:
            console.print(
                f"epoch {metrics.epoch}/{spec.train.epochs}  loss {metrics.train_loss:.4f}  "
                f"train {metrics.train_accuracy:.1%}  test {metrics.test_accuracy:.1%}  {metrics.seconds:.1f} s"
            )
            if metrics.epoch < spec.train.epochs:
                progress.reset(task, description=f"epoch {metrics.epoch + 1}", total=None)

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
            summary = runner(job, row_progress(say, progress, describe.partition(":")[0]))
    if summary.get("answered_from_rows"):
        say.print(
            f"answered from the first {summary['inputs']} of the {summary['answered_from_rows']} rows already in "
            f"{job.out} (no file changed)"
        )
    return summary if job.collective.is_main else {}


@command("certify")
def certify_command(
    sigma: Optional[str] = SIGMA,
    dataset: Optional[str] = DATASET,
    checkpoint: Optional[Path] = CHECKPOINT,
    arch: Optional[str] = ARCH,
    resize: Optional[int] = RESIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    n0: Optional[int] = typer.Option(
        None, help="Selection samples per input [spec: certify.n0].", rich_help_panel=Panel.SAMPLING
    ),
    n: Optional[int] = NUM_SAMPLES,
    alpha: Optional[float] = ALPHA,
    bound: Optional[str] = typer.Option(
        None,
        metavar="one-sided|two-sided",
        help="Cohen et al.'s bound, or one that also bounds the runner-up [spec: certify.bound].",
        rich_help_panel=Panel.SAMPLING,
    ),
    chunk_size: Optional[int] = CHUNK_SIZE,
    batch: Optional[int] = BATCH_ALIAS,
    split: Optional[str] = SPLIT,
    skip: Optional[int] = SKIP,
    max_: Optional[int] = STOP,
    inputs: Optional[str] = INPUTS,
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
        "certify.inputs": inputs,
        **engine_options(chunk_size, batch, seed, precision, device),
        **model_options(arch, resize, mean, std),
    }
    spec = spec_from(dataset, options, set_, data_root)
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
    dataset: Optional[str] = DATASET,
    checkpoint: Optional[Path] = CHECKPOINT,
    arch: Optional[str] = ARCH,
    resize: Optional[int] = RESIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    n: Optional[int] = NUM_SAMPLES,
    alpha: Optional[float] = ALPHA,
    chunk_size: Optional[int] = CHUNK_SIZE,
    batch: Optional[int] = BATCH_ALIAS,
    split: Optional[str] = SPLIT,
    skip: Optional[int] = SKIP,
    max_: Optional[int] = STOP,
    inputs: Optional[str] = INPUTS,
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
        "certify.inputs": inputs,
        **engine_options(chunk_size, batch, seed, precision, device),
        **model_options(arch, resize, mean, std),
    }
    spec = spec_from(dataset, options, set_, data_root)
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
