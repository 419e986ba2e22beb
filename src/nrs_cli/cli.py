"""The ``nrs`` command line: parse options, load the spec, call the library, print.

No logic lives here that a test would need: every command is a thin shell
around a library function. User errors (:class:`NrsError`) print one line and
exit with code 2; so does an interrupted run, which keeps what it wrote.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import yaml
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
console = Console(highlight=False, soft_wrap=True)

DATASET_HELP = "Built-in dataset (see `nrs list datasets`) or a YAML run spec file."
DATA_ROOT_HELP = "Folder holding the datasets (default: $NRS_DATA_ROOT, then ~/.cache/nrs/data)."
SET_HELP = "Override any spec field, e.g. --set train.lr_step=30 (repeatable)."


def command(name: str) -> Callable:
    """Register a subcommand whose user errors and interrupts end with one line and exit code 2."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except NrsError as err:
                message = str(err)
            except KeyboardInterrupt:
                message = "interrupted; everything written so far is kept (rerun the same command to resume)"
            print(f"error: {message}", file=sys.stderr)
            raise typer.Exit(NrsError.exit_code)

        return app.command(name)(run)

    return decorate


def _spec(dataset: str, options: dict[str, Any], assignments: list[str]):
    """Load the spec; ``--set KEY=VALUE`` overrides the file, named options override both."""
    from nrs_cli.spec import load_spec

    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise NrsError(f"--set expects KEY=VALUE, got '{assignment}'")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise NrsError(f"--set {key}: cannot read the value '{value}'") from None
    overrides.update({key: value for key, value in options.items() if value is not None})
    return load_spec(dataset, overrides)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


@command("train-base")
def train_base_command(
    dataset: str = typer.Option("mnist-mini", "--dataset", "-d", help=DATASET_HELP),
    data_root: Optional[Path] = typer.Option(None, help=DATA_ROOT_HELP),
    name: str = typer.Option("base", help="Run name: files go to RUNS_DIR/<dataset>/<name>/."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders are created."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs [spec: train.epochs]."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step [spec: train.batch_size]."),
    lr: Optional[float] = typer.Option(None, help="Learning rate [spec: train.lr]."),
    optimizer: Optional[str] = typer.Option(None, help="adam or sgd [spec: train.optimizer]."),
    noise_sigma: Optional[str] = typer.Option(
        None, help="Gaussian noise augmentation: a number, or a sigma file for per-element noise [spec: train.noise_sigma]."
    ),
    arch: Optional[str] = typer.Option(None, help="Architecture (see `nrs list archs`) [spec: model.arch]."),
    pretrained: Optional[bool] = typer.Option(
        None, "--pretrained/--no-pretrained", help="Start from torchvision weights [spec: model.pretrained]."
    ),
    train_size: Optional[int] = typer.Option(None, help="Use a seeded subset of the train split [spec: data.train_size]."),
    download: Optional[bool] = typer.Option(
        None, "--download/--no-download", help="Let torchvision download missing data [spec: data.download]."
    ),
    seed: Optional[int] = typer.Option(None, help="Random seed [spec: seed]."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N [spec: engine.device]."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Train the base classifier f and save checkpoint, metrics and manifest."""
    from nrs_cli.data import load_split
    from nrs_cli.devices import resolve_device
    from nrs_cli.models import build_model
    from nrs_cli.sigma import parse_sigma
    from nrs_cli.train import train_base_run

    scalar_noise = _as_float(noise_sigma)
    spec = _spec(
        dataset,
        {
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.optimizer": optimizer,
            "train.noise_sigma": scalar_noise,
            "model.arch": arch,
            "model.pretrained": pretrained,
            "data.train_size": train_size,
            "data.download": download,
            "seed": seed,
            "engine.device": device,
        },
        set_,
    )
    noise = None
    if noise_sigma is not None and scalar_noise is None:
        noise = parse_sigma(noise_sigma, spec)
    elif spec.train.noise_sigma > 0:
        noise = parse_sigma(spec.train.noise_sigma, spec)
    target = resolve_device(spec.engine.device)
    train_set = load_split(spec.data, "train", data_root)
    test_set = load_split(spec.data, "test", data_root)
    model = build_model(spec)
    run_dir = runs_dir / spec.name / name
    console.print(
        f"train-base: {spec.name} ({spec.model.arch}), {len(train_set)} train / {len(test_set)} test images, "
        f"{spec.train.epochs} epochs on {target}"
        + (f", noise sigma {noise.label}" if noise else "")
        + f" -> {run_dir}"
    )
    for note in (getattr(train_set, "summary", None), getattr(test_set, "summary", None)):
        if note:
            console.print(note)
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

        result = train_base_run(spec, model, train_set, test_set, run_dir, target, noise, on_batch, on_epoch)
    console.print(f"checkpoint: {result.checkpoint}")
    console.print(f"test accuracy: {result.test_accuracy:.1%}")


@command("list")
def list_command(
    what: str = typer.Argument("datasets", help="datasets, loaders or archs"),
) -> None:
    """List the built-in datasets (run specs), data loaders or architectures."""
    from nrs_cli.data import list_loaders
    from nrs_cli.models import list_archs
    from nrs_cli.spec import builtin_specs, load_spec

    if what == "datasets":
        table = Table("dataset", "loader", "input", "classes", "arch", "description", box=None)
        for name in builtin_specs():
            spec = load_spec(name)
            shape = "x".join(map(str, spec.data.input_shape))
            table.add_row(name, spec.data.loader, shape, str(spec.data.num_classes), spec.model.arch, spec.description)
    elif what in ("loaders", "archs"):
        entries = list_loaders() if what == "loaders" else list_archs()
        table = Table(what[:-1], "description", box=None)
        for name, description in entries.items():
            table.add_row(name, description)
    else:
        raise NrsError(f"nrs list: expected datasets, loaders or archs, got '{what}'")
    console.print(table)


def _as_float(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"nrs {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Show the version."),
) -> None:
    """Certified robustness with non-uniform randomized smoothing."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``nrs`` console script and ``python -m nrs_cli``."""
    app(args=argv, prog_name="nrs")
