"""The commands that report: figures, compare, plot, visualize-sigma, list."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from nrs_cli.cli.app import command, console, plot_app
from nrs_cli.cli.manual import Panel
from nrs_cli.cli.options import (
    ARCH,
    CHECKPOINT,
    DATA_ROOT,
    DEVICE,
    MEAN,
    PRECISION,
    RESIZE,
    RUNS_DIR,
    SEED,
    SET,
    STD,
    dataset_option,
    model_options,
    spec_from,
)
from nrs_cli.cli.progress import progress_bar, sweep_printer
from nrs_cli.errors import NrsError

DATASETS = dataset_option([], "Repeatable; default: --data-root if it is an image folder, else mnist-mini.")
SIGMA_DATASET = dataset_option(None, "Default: mnist-mini. Its input shape is the one the sigma files must have.")
FIGURES_DIR = typer.Option(
    Path("figures"),
    metavar="DIR",
    help="Folder for the figures (one sub-folder per dataset).",
    rich_help_panel=Panel.OUTPUT,
)
TITLE = typer.Option("", metavar="TEXT", help="Figure title.", rich_help_panel=Panel.FIGURE)


def _out_stem(default: str) -> Any:
    return typer.Option(
        Path(default), metavar="PATH", help="Output path without extension (.png and .pdf are added).",
        rich_help_panel=Panel.OUTPUT,
    )  # fmt: skip


@command("compare")
def compare_command(
    datasets: list[str] = DATASETS,
    arch: Optional[str] = ARCH,
    resize: Optional[int] = RESIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    out: Path = FIGURES_DIR,
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = DATA_ROOT,
    seed: Optional[int] = SEED,
    device: Optional[str] = DEVICE,
    precision: Optional[str] = PRECISION,
    set_: list[str] = SET,
) -> None:
    """Five ways to pick network and sigma on the same axes: clean or noise-trained network, isotropic or
    optimised sigma, and both co-optimised (beyond the paper). Resumes finished steps."""
    import time

    from nrs_cli.experiments.compare import compare_run
    from nrs_cli.io.devices import resolve_device

    options = {"engine.device": device, "engine.precision": precision, **model_options(arch, resize, mean, std)}
    for name in datasets or [None]:
        started = time.perf_counter()
        spec = spec_from(name, {"seed": seed, **options}, set_, data_root)
        console.print(f"compare: {spec.name} -> {out / spec.name}")
        on = resolve_device(spec.engine.device)
        with progress_bar(console) as progress:
            summary = compare_run(spec, data_root, runs_dir, out, on, console.print, sweep_printer(console, progress))
        table = Table("method", "best point: accuracy", "mean log_area", box=None)
        for method, point in summary["best"].items():
            table.add_row(method, f"{point['accuracy']:.1%}", f"{point['mean_log_area']:.1f}")
        console.print(table)
        for pair, gain in summary["gains"].items():
            value = gain["max_gain_at_equal_accuracy"]
            console.print(f"{pair}: largest gain at equal accuracy {'-' if value is None else f'{value:+.1f}'}")
        console.print(f"{spec.name}: done in {time.perf_counter() - started:.0f} s")


def _metrics(axis: str) -> list:
    from nrs_cli.reports.metrics import METRICS, metric_from_option

    return list(METRICS.values()) if axis == "all" else [metric_from_option(axis)]


@command("certified-accuracy", plot_app)
def plot_certified_accuracy_command(
    results: list[Path] = typer.Argument(..., metavar="TSV", help="certify TSV files, one line each"),
    out: Path = _out_stem("figures/certified-accuracy"),
    axis: str = typer.Option(
        "all",
        metavar="area|radius|gm-radius|all",
        help="Certified area (log_area), l2 radius, equal-volume radius, or all (one file each).",
        rich_help_panel=Panel.FIGURE,
    ),
    title: str = TITLE,
) -> None:
    """Certified accuracy against certified area, l2 radius or equal-volume radius (paper Fig 1)."""
    from nrs_cli.reports.plots import plot_certified_accuracy
    from nrs_cli.reports.result_files import load_result

    loaded = [load_result(path) for path in results]
    for metric in _metrics(axis):
        stem = out.with_name(f"{out.name}-{metric.option}") if axis == "all" else out
        for path in plot_certified_accuracy(loaded, metric.column, stem, title):
            console.print(f"wrote {path}")


@command("clean-accuracy", plot_app)
def plot_clean_accuracy_command(
    runs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="optimize-sigma run folders (with metrics.csv)"),
    out: Path = _out_stem("figures/clean-accuracy"),
    unfiltered: bool = typer.Option(
        False, help="Also show every optimised point, not only the blanket-filtered ones.", rich_help_panel=Panel.FIGURE
    ),
    title: str = TITLE,
) -> None:
    """Clean accuracy against mean certified area over a sigma sweep (paper Figs 2 and 4).

    Optimised points are blanket-filtered as in the paper: by decreasing
    accuracy, a point is kept only if its certified area lies outside the range
    of the points kept so far.
    """
    from nrs_cli.reports.plots import load_sweep, plot_clean_accuracy

    for path in plot_clean_accuracy([load_sweep(run) for run in runs], out, unfiltered, title):
        console.print(f"wrote {path}")


@command("table", plot_app)
def plot_table_command(
    results: list[Path] = typer.Argument(..., metavar="TSV", help="certify TSV files, one row each"),
    axis: str = typer.Option(
        "area",
        metavar="area|radius|gm-radius",
        help="Certified area (log_area), l2 radius or equal-volume radius.",
        rich_help_panel=Panel.FIGURE,
    ),
    at: Optional[str] = typer.Option(
        None,
        metavar="X,Y,...",
        help="Comma-separated thresholds (default: round values over the range).",
        rich_help_panel=Panel.FIGURE,
    ),
    out: Optional[Path] = typer.Option(
        None,
        metavar="PATH",
        help="Write PATH.md and PATH.tex too (path without extension).",
        rich_help_panel=Panel.OUTPUT,
    ),
) -> None:
    """Certified accuracy at chosen thresholds, as Markdown and LaTeX tables."""
    from nrs_cli.reports.metrics import metric_from_option
    from nrs_cli.reports.result_files import load_result
    from nrs_cli.reports.tables import default_thresholds, markdown_table, parse_thresholds, write_tables

    column = metric_from_option(axis).column
    loaded = [load_result(path) for path in results]
    thresholds = parse_thresholds(at) if at else default_thresholds(loaded, column)
    console.print(markdown_table(loaded, column, thresholds))
    if out:
        written = write_tables(loaded, column, thresholds, out)
        console.print("wrote " + " and ".join(map(str, written)))


@command("visualize-sigma")
def visualize_sigma_command(
    sigmas: list[Path] = typer.Argument(..., metavar="SIGMA_FILE", help="sigma files (from optimize-sigma)"),
    dataset: Optional[str] = SIGMA_DATASET,
    resize: Optional[int] = RESIZE,
    out: Path = _out_stem("figures/sigma"),
    colorbar: bool = typer.Option(
        True, help="Show the sigma scale, one for all images, on a colour bar.", rich_help_panel=Panel.FIGURE
    ),
    columns: Optional[int] = typer.Option(
        None, min=1, help="Images per row of the grid.", rich_help_panel=Panel.FIGURE
    ),
    clip: float = typer.Option(
        0.01,
        min=0.0,
        max=0.49,
        help="Fraction of elements saturated at each end of the grey scale (0: min to max).",
        rich_help_panel=Panel.FIGURE,
    ),
    report: bool = typer.Option(
        True,
        help="Also write PATH-report.md: where the model tolerates noise and where not.",
        rich_help_panel=Panel.OUTPUT,
    ),
) -> None:
    """Draw sigma files as images on one linear scale, across all channels and all files (paper Fig 3)."""
    from nrs_cli.io.serialization import atomic_write_text
    from nrs_cli.method.sigma import load_sigma
    from nrs_cli.reports.sigma_images import plot_sigmas, robustness_report

    spec = spec_from(dataset, {"data.resize": resize}, [])
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
    datasets: list[str] = DATASETS,
    checkpoint: Optional[Path] = CHECKPOINT,
    arch: Optional[str] = ARCH,
    resize: Optional[int] = RESIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    out: Path = FIGURES_DIR,
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = DATA_ROOT,
    seed: Optional[int] = SEED,
    device: Optional[str] = DEVICE,
    precision: Optional[str] = PRECISION,
    set_: list[str] = SET,
) -> None:
    """Everything for the paper's figures: train, sweep, certify, draw (resumes finished steps)."""
    import time

    from nrs_cli.experiments.figures import figures_run
    from nrs_cli.io.devices import resolve_device

    options = {"engine.device": device, "engine.precision": precision, **model_options(arch, resize, mean, std)}
    for name in datasets or [None]:
        started = time.perf_counter()
        spec = spec_from(name, {"seed": seed, **options}, set_, data_root)
        console.print(f"figures: {spec.name} -> {out / spec.name}")
        on = resolve_device(spec.engine.device)
        with progress_bar(console) as progress:
            on_sweep = sweep_printer(console, progress)
            written = figures_run(spec, data_root, runs_dir, out, on, console.print, checkpoint, on_sweep)
        console.print(f"{spec.name}: {len(written)} files in {out / spec.name} ({time.perf_counter() - started:.0f} s)")


@command("list")
def list_command(
    what: str = typer.Argument("datasets", metavar="datasets|loaders|archs", help="What to list."),
) -> None:
    """List the built-in datasets (run specs), data loaders or architectures."""
    from nrs_cli.io import loaders  # noqa: F401 - registers the loaders
    from nrs_cli.io.architectures import list_archs
    from nrs_cli.io.data import list_loaders
    from nrs_cli.io.spec import builtin_specs, load_spec

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
