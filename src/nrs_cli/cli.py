"""The ``nrs`` command line: parse options, load the spec, call the library, print.

No logic lives here that a test would need: every command is a thin shell
around a library function. User errors (:class:`NrsError`) print one line and
exit with code 2; so does an interrupted run, which keeps what it wrote.
"""

from __future__ import annotations

import functools
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from nrs_cli import __version__
from nrs_cli.errors import NrsError

app = typer.Typer(
    name="nrs",
    help="Certified robustness with non-uniform randomized smoothing: train a base classifier, "
    "optimise per-element noise scales, certify, and plot.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(highlight=False, soft_wrap=True, markup=False)  # text is printed as it is: "[1/4]"

DATASET_HELP = "Built-in dataset (see `nrs list datasets`) or a YAML run spec file."
DATA_ROOT_HELP = "Folder holding the datasets (default: $NRS_DATA_ROOT, then ~/.cache/nrs/data)."
SET_HELP = "Override any spec field, e.g. --set train.lr_step=30 (repeatable)."

# Options several commands share; each maps to the spec field in brackets.
DATASET = typer.Option("mnist-mini", "--dataset", "-d", help=DATASET_HELP)
DATA_ROOT = typer.Option(None, help=DATA_ROOT_HELP)
RUNS_DIR = typer.Option(Path("runs"), help="Where run folders live.")
CHECKPOINT = typer.Option(
    None, help="Base classifier (nrs, Cohen or Salman checkpoint; default RUNS_DIR/<dataset>/base/checkpoint.pt)."
)
SEED = typer.Option(None, help="Seed of the noise and of the data order [spec: seed].")
PRECISION = typer.Option(None, help="fp32 or bf16 [spec: engine.precision].")
DEVICE = typer.Option(None, help="auto, cpu, cuda or cuda:N [spec: engine.device].")
CHUNK_SIZE = typer.Option(None, help="Noisy samples per forward pass; 0 chooses [spec: engine.chunk_size].")
BATCH_ALIAS = typer.Option(None, "--batch", hidden=True, help="Old name of --chunk-size (Cohen et al.'s --batch).")
SET = typer.Option([], "--set", metavar="KEY=VALUE", help=SET_HELP)
INIT = typer.Option(None, help="First constant sigma to start from [spec: optimize.init].")
INIT_STEP = typer.Option(None, help="Step between constants [spec: optimize.init_step].")
INITS = typer.Option(None, help="Number of constants [spec: optimize.inits].")
EVAL_MAX = typer.Option(None, help="Test inputs per evaluation, -1 all [spec: optimize.eval_max].")
SIGMA = typer.Option(
    None,
    help="Noise scales: a number (isotropic, pixel units) or a sigma file from optimize-sigma "
    "(default: the best point of the dataset's latest sweep, else the spec's certify.sigma).",
)
NUM_SAMPLES = typer.Option(
    None,
    "--n",
    "--num-samples",
    help="Samples per input for the estimate [spec: certify.n]; --num-samples under torchrun.",
)
ALPHA = typer.Option(None, help="Failure probability [spec: certify.alpha].")
SPLIT = typer.Option(None, help="train or test [spec: certify.split].")
SKIP = typer.Option(None, help="Use every SKIP-th input [spec: certify.skip].")
STOP = typer.Option(
    None, "--max", "--stop", help="Stop before this input index [spec: certify.max]; --stop under torchrun."
)
OUT_TSV = typer.Option(
    None, "--out", help="Result TSV; manifest and summary JSON go beside it (default RUNS_DIR/<dataset>/<command>/...)."
)


plot_app = typer.Typer(
    help="Draw the paper's figures and tables from result files (PNG and PDF).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(plot_app, name="plot")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, batch schedulers, ``docker stop``), handled like Ctrl-C."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def command(name: str, group: typer.Typer = app) -> Callable:
    """Register a subcommand that turns every expected failure into one ``error:`` line and exit code 2.

    Expected: the user's input or environment (:class:`NrsError`), reading or
    writing files (OSError: a read-only folder, a full disk), Ctrl-C and
    SIGTERM, which keep everything written so far. Anything else is a bug: its
    traceback is shown with a request to report it.
    """

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except NrsError as err:
                message = str(err)
            except KeyboardInterrupt as err:
                how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
                message = f"{how}; everything written so far is kept (rerun the same command to resume)"
            except OSError as err:
                message = _os_error(err)
            except Exception:
                traceback.print_exc()
                print(
                    f"nrs {__version__}: unexpected error, a bug in nrs; please report it with the command "
                    "line and the traceback above",
                    file=sys.stderr,
                )
                raise typer.Exit(1) from None
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(NrsError.exit_code)

        return group.command(name)(run)

    return decorate


def _os_error(err: OSError) -> str:
    """One line for a failed read or write: what, where and why."""
    where = f" {err.filename}" if err.filename else ""
    return f"cannot access{where}: {err.strerror or err}"


def _spec(dataset: str, options: dict[str, Any], assignments: list[str]):
    """Load the spec; ``--set KEY=VALUE`` overrides the file, named options override both."""
    from nrs_cli.spec import load_spec, parse_assignments

    overrides = parse_assignments(assignments)
    overrides.update({key: value for key, value in options.items() if value is not None})
    return load_spec(dataset, overrides)


def _engine_options(chunk_size, batch, seed, precision, device) -> dict[str, Any]:
    """Spec overrides of the options every sampling command shares (``--batch`` is ``--chunk-size``'s old name)."""
    return {
        "engine.chunk_size": chunk_size if chunk_size is not None else batch,
        "seed": seed,
        "engine.precision": precision,
        "engine.device": device,
    }


def _progress(output: Console = console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=output,
        transient=True,
    )


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
    from nrs_cli.data import load_split
    from nrs_cli.devices import resolve_device
    from nrs_cli.layout import RunLayout
    from nrs_cli.models import build_model
    from nrs_cli.sigma import sigma_number
    from nrs_cli.train import TrainJob, train_base_run, training_sigma

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
    spec = _spec(dataset, options, set_)
    noise = training_sigma(spec, noise_sigma)
    target = resolve_device(spec.engine.device)
    train_set = load_split(spec.data, "train", data_root)
    test_set = load_split(spec.data, "test", data_root)
    run_dir = RunLayout(runs_dir, spec.name).train_dir(name)
    console.print(
        f"train-base: {spec.name} ({spec.model.arch}), {len(train_set)} train / {len(test_set)} test images, "
        f"{spec.train.epochs} epochs on {target}" + (f", noise sigma {noise.label}" if noise else "") + f" -> {run_dir}"
    )
    for note in (getattr(train_set, "summary", None), getattr(test_set, "summary", None)):
        if note:
            console.print(note)
    job = TrainJob(spec, build_model(spec), train_set, test_set, target, noise)
    with _progress() as progress:
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


def _smoothed_run(command_name, spec, data_root, checkpoint, runs_dir, sigma, out):
    """What certify and predict share: model, sigma (given or the default), inputs and output path."""
    from nrs_cli.certify_runs import SmoothedRun
    from nrs_cli.data import load_split
    from nrs_cli.devices import resolve_device
    from nrs_cli.layout import RunLayout, default_sigma
    from nrs_cli.models import load_checkpoint
    from nrs_cli.sigma import parse_sigma

    layout = RunLayout(runs_dir, spec.name)
    checkpoint = layout.base_checkpoint(checkpoint)
    model, _ = load_checkpoint(checkpoint, spec)
    if sigma is None:
        chosen, why = default_sigma(spec, layout)
        console.print(f"sigma: {chosen.source or chosen.label} ({why}; pass --sigma to choose)")
    else:
        chosen = parse_sigma(sigma, spec)
    inputs = load_split(spec.data, spec.certify.split, data_root)
    out = out or layout.result_tsv(command_name, chosen, spec.certify.n)
    device = resolve_device(spec.engine.device)
    return SmoothedRun(spec, model, chosen, inputs, out, device, str(checkpoint))


def _main_console(collective) -> Console:
    """Rank 0 speaks for a distributed job; the other ranks stay quiet."""
    return console if collective.is_main else Console(quiet=True)


def _row_progress(progress: Progress, label: str):
    task = progress.add_task(label, total=None)

    def on_rows(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return on_rows


def _run_smoothed(run, runner, describe: str) -> dict:
    """Run certify or predict, under torchrun when launched by it; rank 0 returns the summary."""
    import dataclasses

    from nrs_cli.distributed import distributed

    with distributed(run.device) as (collective, target):
        run = dataclasses.replace(run, device=target, collective=collective)
        say = _main_console(collective)
        processes = f" x {collective.world} processes" if collective.world > 1 else ""
        say.print(f"{describe}, {run.spec.engine.precision} on {target}{processes} -> {run.out}")
        with _progress(say) as progress:
            summary = runner(run, _row_progress(progress, "inputs"))
    return summary if collective.is_main else {}


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
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = DATA_ROOT,
    set_: list[str] = SET,
) -> None:
    """Certify the smoothed classifier on a split (CERTIFY with the ellipsoid of Theorem 3.1).

    Writes a TSV row per input (idx label predict radius correct time, then
    pA_lower pB_upper icdf log_area gm_radius), a summary JSON and a manifest.
    Rerunning the same command resumes after the last complete row.
    """
    from nrs_cli.certify_runs import certify_run

    options = {
        "certify.n0": n0,
        "certify.n": n,
        "certify.alpha": alpha,
        "certify.bound": bound,
        "certify.split": split,
        "certify.skip": skip,
        "certify.max": max_,
        **_engine_options(chunk_size, batch, seed, precision, device),
    }
    run = _smoothed_run("certify", _spec(dataset, options, set_), data_root, checkpoint, runs_dir, sigma, out)
    c = run.spec.certify
    describe = (
        f"certify: {run.spec.name} {c.split}, sigma {run.sigma.label}, n0={c.n0} n={c.n} alpha={c.alpha:g} {c.bound}"
    )
    summary = _run_smoothed(run, certify_run, describe)
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
    console.print(f"results: {run.out}")


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
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = DATA_ROOT,
    set_: list[str] = SET,
) -> None:
    """Predict with the smoothed classifier (PREDICT: binomial test, abstains when unsure)."""
    from nrs_cli.certify_runs import predict_run

    options = {
        "certify.n": n,
        "certify.alpha": alpha,
        "certify.split": split,
        "certify.skip": skip,
        "certify.max": max_,
        **_engine_options(chunk_size, batch, seed, precision, device),
    }
    run = _smoothed_run("predict", _spec(dataset, options, set_), data_root, checkpoint, runs_dir, sigma, out)
    describe = f"predict: {run.spec.name} {run.spec.certify.split}, sigma {run.sigma.label}, n={run.spec.certify.n}"
    summary = _run_smoothed(run, predict_run, describe)
    if not summary:
        return
    console.print(
        f"accuracy {summary['accuracy']:.1%} ({summary['correct']}/{summary['inputs']}), "
        f"abstained {summary['abstained']}, wrong {summary['wrong']}, {summary['samples_per_second']:,.0f} samples/s"
    )
    console.print(f"results: {run.out}")


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
        **_engine_options(chunk_size, batch, seed, precision, device),
    }
    spec = _spec(dataset, options, set_)
    _run_sweep(spec, checkpoint, runs_dir, name, data_root)


def _run_sweep(
    spec, checkpoint: Optional[Path], runs_dir: Path, name: str, data_root: Optional[Path], co=False
) -> None:
    """optimize-sigma (or co-optimize): load, describe, run (under torchrun when launched by it), report."""
    from nrs_cli.cooptimize import cooptimize_run
    from nrs_cli.data import load_split
    from nrs_cli.devices import resolve_device
    from nrs_cli.distributed import distributed
    from nrs_cli.layout import RunLayout
    from nrs_cli.models import load_checkpoint
    from nrs_cli.optimize import sweep_constants
    from nrs_cli.sweep import OptimizeJob, sweep_run

    layout = RunLayout(runs_dir, spec.name)
    checkpoint = layout.base_checkpoint(checkpoint)
    model, _ = load_checkpoint(checkpoint, spec)
    train_set = load_split(spec.data, "train", data_root)
    test_set = load_split(spec.data, "test", data_root)
    run_dir = layout.sweep_dir(name)
    o = spec.optimize
    with distributed(resolve_device(spec.engine.device)) as (collective, target):
        say = _main_console(collective)
        c = spec.cooptimize
        rounds = (
            f"{c.rounds} rounds of {c.finetune_steps} fine-tuning steps (lr {c.finetune_lr:g}) and {c.sigma_steps}"
            if co
            else f"{o.sub_epochs} sub-epochs x {o.steps_per_sub_epoch or 'a pass of'}"
        )
        say.print(
            f"{'co-optimize' if co else 'optimize-sigma'}: {spec.name}, inits "
            f"{', '.join(f'{c:g}' for c in sweep_constants(spec))}, {rounds} steps of Algorithm 1, "
            f"batch {o.batch_size} x n0 {o.n0}, lr {o.lr:g} (x{o.lr_decay:g} each)"
            + (", p_hat capped at alpha^(1/n)" if o.cap_p_hat else "")
            + f"; evaluation n0={o.eval_n0} n={o.eval_n} alpha={o.eval_alpha:g} on "
            f"{o.eval_max if o.eval_max >= 0 else len(test_set)} test inputs; {spec.engine.precision} on {target}"
            + (f" x {collective.world} processes" if collective.world > 1 else "")
            + f" -> {run_dir}"
        )
        job = OptimizeJob(spec, model, train_set, test_set, run_dir, target, str(checkpoint), collective)
        with _progress(say) as progress:
            result = (cooptimize_run if co else sweep_run)(job, _sweep_printer(say, progress))
    best = result.comparison.get("max_gain_at_equal_accuracy")
    if best is not None:
        say.print(f"largest certified-area gain over isotropic sigma at equal accuracy: {best:.1f} (log_area)")
    say.print(f"results: {run_dir}/metrics.csv, sigmas in {run_dir}/sigmas/")


def _sweep_printer(say: Console, progress: Progress):
    """A progress bar for the optimisation steps and a line per evaluated sigma."""
    from nrs_cli.sweep import StepDone

    task = progress.add_task("sweep", total=None)

    def on_event(event) -> None:
        if isinstance(event, StepDone):
            progress.update(
                task,
                completed=event.step,
                total=event.steps,
                description=f"sigma {event.init:g} sub-epoch {event.sub_epoch}: loss {event.loss:.1f}, "
                f"right {event.right:.0%}, sigma mean {event.sigma.mean:.3g} std {event.sigma.std:.3g}",
            )
            return
        row = event.row
        say.print(
            f"{row.method:>11} sigma {row.init:g}"
            + (f" sub-epoch {row.sub_epoch}" if row.sub_epoch else "")
            + f": accuracy {row.accuracy:.1%}, mean log_area {row.mean_log_area:.1f}, "
            f"sigma mean {row.sigma_mean:.3g} [{row.sigma_min:.3g}, {row.sigma_max:.3g}] ({row.seconds:.0f} s)"
        )

    return on_event


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
        **_engine_options(chunk_size, batch, seed, precision, device),
    }
    _run_sweep(_spec(dataset, options, set_), checkpoint, runs_dir, name, data_root, co=True)


@command("compare")
def compare_command(
    datasets: list[str] = typer.Option(["mnist-mini"], "--dataset", "-d", help=DATASET_HELP + " Repeatable."),
    out: Path = typer.Option(Path("figures"), help="Folder for the figures (one sub-folder per dataset)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders live (finished steps are reused)."),
    data_root: Optional[Path] = DATA_ROOT,
    device: Optional[str] = DEVICE,
    precision: Optional[str] = PRECISION,
    set_: list[str] = SET,
) -> None:
    """Five ways to pick network and sigma on the same axes: clean or noise-trained network, isotropic or
    optimised sigma, and both co-optimised (beyond the paper). Resumes finished steps."""
    import time

    from nrs_cli.devices import resolve_device
    from nrs_cli.methods import compare_run

    for name in datasets:
        started = time.perf_counter()
        spec = _spec(name, {"engine.device": device, "engine.precision": precision}, set_)
        console.print(f"compare: {spec.name} -> {out / spec.name}")
        summary = compare_run(spec, data_root, runs_dir, out, resolve_device(spec.engine.device), console.print)
        table = Table("method", "best point: accuracy", "mean log_area", box=None)
        for method, point in summary["best"].items():
            table.add_row(method, f"{point['accuracy']:.1%}", f"{point['mean_log_area']:.1f}")
        console.print(table)
        for pair, gain in summary["gains"].items():
            value = gain["max_gain_at_equal_accuracy"]
            console.print(f"{pair}: largest gain at equal accuracy {'-' if value is None else f'{value:+.1f}'}")
        console.print(f"{spec.name}: done in {time.perf_counter() - started:.0f} s")


def _metrics(axis: str) -> list:
    from nrs_cli.metrics import METRICS, metric_from_option

    return list(METRICS.values()) if axis == "all" else [metric_from_option(axis)]


@command("certified-accuracy", plot_app)
def plot_certified_accuracy_command(
    results: list[Path] = typer.Argument(..., help="certify TSV files, one line each"),
    out: Path = typer.Option(Path("figures/certified-accuracy"), help="Output path without extension."),
    axis: str = typer.Option("all", help="area (log_area), radius (l2), gm-radius, or all (one file each)."),
    title: str = typer.Option("", help="Figure title."),
) -> None:
    """Certified accuracy against certified area, l2 radius or equal-volume radius (paper Fig 1)."""
    from nrs_cli.plots import load_result, plot_certified_accuracy

    loaded = [load_result(path) for path in results]
    for metric in _metrics(axis):
        stem = out.with_name(f"{out.name}-{metric.option}") if axis == "all" else out
        for path in plot_certified_accuracy(loaded, metric.column, stem, title):
            console.print(f"wrote {path}")


@command("clean-accuracy", plot_app)
def plot_clean_accuracy_command(
    runs: list[Path] = typer.Argument(..., help="optimize-sigma run folders (with metrics.csv)"),
    out: Path = typer.Option(Path("figures/clean-accuracy"), help="Output path without extension."),
    unfiltered: bool = typer.Option(False, help="Also show every optimised point, not only the blanket-filtered ones."),
    title: str = typer.Option("", help="Figure title."),
) -> None:
    """Clean accuracy against mean certified area over a sigma sweep (paper Figs 2 and 4).

    Optimised points are blanket-filtered as in the paper: by decreasing
    accuracy, a point is kept only if its certified area lies outside the range
    of the points kept so far.
    """
    from nrs_cli.plots import load_sweep, plot_clean_accuracy

    for path in plot_clean_accuracy([load_sweep(run) for run in runs], out, unfiltered, title):
        console.print(f"wrote {path}")


@command("table", plot_app)
def plot_table_command(
    results: list[Path] = typer.Argument(..., help="certify TSV files, one row each"),
    axis: str = typer.Option("area", help="area (log_area), radius (l2) or gm-radius."),
    at: Optional[str] = typer.Option(None, help="Comma-separated thresholds (default: round values over the range)."),
    out: Optional[Path] = typer.Option(None, help="Write OUT.md and OUT.tex too (path without extension)."),
) -> None:
    """Certified accuracy at chosen thresholds, as Markdown and LaTeX tables."""
    from nrs_cli.metrics import metric_from_option
    from nrs_cli.plots import load_result
    from nrs_cli.tables import default_thresholds, markdown_table, parse_thresholds, write_tables

    column = metric_from_option(axis).column
    loaded = [load_result(path) for path in results]
    thresholds = parse_thresholds(at) if at else default_thresholds(loaded, column)
    console.print(markdown_table(loaded, column, thresholds))
    if out:
        written = write_tables(loaded, column, thresholds, out)
        console.print("wrote " + " and ".join(map(str, written)))


@command("visualize-sigma")
def visualize_sigma_command(
    sigmas: list[Path] = typer.Argument(..., help="sigma files (from optimize-sigma)"),
    dataset: str = DATASET,
    out: Path = typer.Option(Path("figures/sigma"), help="Output path without extension."),
    colorbar: bool = typer.Option(True, help="Show each image's sigma range on a colour bar."),
    columns: Optional[int] = typer.Option(None, min=1, help="Images per row of the grid."),
    clip: float = typer.Option(
        0.01, min=0.0, max=0.49, help="Fraction of elements saturated at each end of the grey scale (0: min to max)."
    ),
    report: bool = typer.Option(True, help="Also write OUT-report.md: where the model tolerates noise and where not."),
) -> None:
    """Draw sigma files as images, scaled linearly across all channels (paper Fig 3)."""
    from nrs_cli.serialization import atomic_write_text
    from nrs_cli.sigma import load_sigma
    from nrs_cli.sigma_images import plot_sigmas, robustness_report

    spec = _spec(dataset, {}, [])
    loaded = [load_sigma(path, spec) for path in sigmas]
    for path in plot_sigmas(loaded, out, colorbar, columns, clip=clip):
        console.print(f"wrote {path}")
    if report:
        text = "\n".join(robustness_report(sigma) for sigma in loaded)
        console.print(text)
        atomic_write_text(text, out.with_name(out.name + "-report.md"))
        console.print(f"wrote {out}-report.md")


@command("figures")
def figures_command(
    datasets: list[str] = typer.Option(["mnist-mini"], "--dataset", "-d", help=DATASET_HELP + " Repeatable."),
    out: Path = typer.Option(Path("figures"), help="Folder for the figures (one sub-folder per dataset)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders live (finished steps are reused)."),
    data_root: Optional[Path] = DATA_ROOT,
    device: Optional[str] = DEVICE,
    precision: Optional[str] = PRECISION,
    set_: list[str] = SET,
) -> None:
    """Everything for the paper's figures: train, sweep, certify, draw (resumes finished steps)."""
    import time

    from nrs_cli.devices import resolve_device
    from nrs_cli.figures import figures_run

    for name in datasets:
        started = time.perf_counter()
        spec = _spec(name, {"engine.device": device, "engine.precision": precision}, set_)
        console.print(f"figures: {spec.name} -> {out / spec.name}")
        written = figures_run(spec, data_root, runs_dir, out, resolve_device(spec.engine.device), console.print)
        console.print(f"{spec.name}: {len(written)} files in {out / spec.name} ({time.perf_counter() - started:.0f} s)")


@command("list")
def list_command(
    what: str = typer.Argument("datasets", help="datasets, loaders or archs"),
) -> None:
    """List the built-in datasets (run specs), data loaders or architectures."""
    from nrs_cli.data import list_loaders
    from nrs_cli.models import list_archs
    from nrs_cli.spec import builtin_specs, load_spec

    if what == "datasets":
        table = Table("dataset", "input", "classes", "arch", "description", box=None)
        for name in builtin_specs():
            spec = load_spec(name)
            shape = "x".join(map(str, spec.data.input_shape))
            table.add_row(name, shape, str(spec.data.num_classes), spec.model.arch, spec.description)
    elif what in ("loaders", "archs"):
        entries = list_loaders() if what == "loaders" else list_archs()
        table = Table(what[:-1], "description", box=None)
        for name, description in entries.items():
            table.add_row(name, description)
    else:
        raise NrsError(f"nrs list: expected datasets, loaders or archs, got '{what}'")
    console.print(table)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"nrs {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """Certified robustness with non-uniform randomized smoothing."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nrs`` console script and ``python -m nrs_cli``.

    Usage errors (an unknown option, a value out of range) are one ``error:`` line and exit code 2 too.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(args=argv, prog_name="nrs", standalone_mode=False)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        code = NrsError.exit_code
    except Exception as err:
        if not hasattr(err, "format_message"):  # Click's usage errors (Click ships inside newer Typer)
            raise
        message, context = err.format_message(), getattr(err, "ctx", None)
        if message.startswith("Usage:"):  # no command given: the help is the answer
            print(message, file=sys.stderr)
        else:
            where = f" (see {context.command_path} --help)" if context is not None else ""
            print(f"error: {message}{where}", file=sys.stderr)
        code = getattr(err, "exit_code", NrsError.exit_code)
    if code:
        sys.exit(code)
