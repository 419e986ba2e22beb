"""What commands print while they run: progress bars, and a line per evaluated sigma."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nrs_cli.cli.app import console


def progress_bar(output: Console = console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=output,
        transient=True,
    )


def main_console(collective) -> Console:
    """Rank 0 speaks for a distributed job; the other ranks stay quiet."""
    return console if collective.is_main else Console(quiet=True)


def row_progress(progress: Progress, label: str):
    task = progress.add_task(label, total=None)

    def on_rows(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return on_rows


def sweep_printer(say: Console, progress: Progress):
    """A progress bar for the optimization steps and a line per evaluated sigma."""
    from nrs_cli.runs.optimization import StepDone

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
