"""What commands print while they run: progress bars, a line per evaluated sigma, and where a run resumes.

On a terminal a progress bar shows the done fraction, the work done of the total, the time
elapsed and the time left; when the output goes elsewhere (a pipe, a log file), where a bar
would show nothing, the same facts are a plain line every :data:`LINE_INTERVAL` seconds, one
as soon as the total is known and one when it is reached. The time left is the average pace since the bar started
applied to the work left, estimated at every report and counting down in between: it is there
from the first report and does not swing with the cost of the current step.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from nrs_cli.cli.app import console

LINE_INTERVAL = 10.0  # seconds between progress lines when the output is not a terminal


def amount(value: float) -> str:
    """A count to three significant digits: 987, 12.3k, 4.56M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def remaining(done: float, total: float | None, first: float, elapsed: float | None) -> float | None:
    """Seconds left at the average pace since the bar started at ``first`` (None until there is a pace)."""
    if total is None or elapsed is None or elapsed <= 0 or done <= first:
        return None
    return elapsed * (total - done) / (done - first)


def _counts(task: Task) -> str:
    total = "?" if task.total is None else amount(task.total)
    return f"{amount(task.completed)}/{total} {task.fields.get('unit', '')}".rstrip()


class _CountsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(_counts(task))


class _EtaColumn(ProgressColumn):
    """The time left: estimated whenever the count moves, counting down in between."""

    def __init__(self):
        super().__init__()
        self.estimates: dict[int, tuple[float, float | None, float]] = {}  # task: (count, seconds left, when)

    def render(self, task: Task) -> Text:
        now, seen = task.get_time(), self.estimates.get(task.id)
        if seen is None or seen[0] != task.completed:
            left = remaining(task.completed, task.total, task.fields.get("first", 0), task.elapsed)
            seen = self.estimates[task.id] = (task.completed, left, now)
        left = None if seen[1] is None else max(0.0, seen[1] - (now - seen[2]))
        return Text("ETA " + ("?" if left is None else clock(left)))


class LineProgress:
    """The part of :class:`rich.progress.Progress` the commands use, as a plain line at most every ``interval``
    seconds per task, one as soon as its total is known and one when it is reached: for output that is not a
    terminal."""

    def __init__(self, output: Console, interval: float = LINE_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.output, self.interval, self.clock = output, interval, clock
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "completed": completed, "fields": fields}
        self.reset(task, total=total, completed=completed)
        return task

    def reset(self, task: int, **changes: Any) -> None:
        """Start the task's clock and count again (from ``completed``, default 0)."""
        changes.setdefault("completed", 0)
        self.tasks[task].update(started=self.clock(), printed=None, finished=False, first=changes["completed"])
        self.update(task, **changes)

    def update(self, task: int, **changes: Any) -> None:
        state = self.tasks[task]
        changes.pop("refresh", None)  # a line is printed when due
        for key in ("description", "total", "completed"):
            value = changes.pop(key, None)
            state[key] = state[key] if value is None else value
        state["fields"].update(changes)
        now, total = self.clock(), state["total"]
        due = state["printed"] is None or now - state["printed"] >= self.interval
        finished = total is not None and state["completed"] >= total and not state.get("finished")
        if total is not None and (due or finished):
            state.update(printed=now, finished=state["completed"] >= total)
            self.output.print(self.line(task, now))

    def line(self, task: int, now: float) -> str:
        """``12% 1.23M/9.87M samples, 0:00:12 elapsed, ETA 0:01:30: <description>``."""
        state = self.tasks[task]
        done, total, elapsed = state["completed"], state["total"], now - state["started"]
        unit = state["fields"].get("unit", "")
        left = remaining(done, total, state["first"], elapsed)
        percent = f"{100 * done / total:.0f}%" if total else "100%"
        return (
            f"{percent} {amount(done)}/{amount(total)} {unit}".rstrip()
            + f", {clock(elapsed)} elapsed, ETA {'?' if left is None else clock(left)}: {state['description']}"
        )


def progress_bar(output: Console = console) -> Progress | LineProgress:
    """A progress bar on a terminal, else progress lines (tasks take ``unit=`` to name what they count)."""
    if not output.is_terminal or output.is_dumb_terminal:  # where rich's bar would not move
        return LineProgress(output)
    return Progress(
        BarColumn(bar_width=24),
        TaskProgressColumn(),
        _CountsColumn(),
        TimeElapsedColumn(),
        _EtaColumn(),
        TextColumn("{task.description}"),
        console=output,
        transient=True,
    )


def main_console(collective) -> Console:
    """Rank 0 speaks for a distributed job; the other ranks stay quiet."""
    return console if collective.is_main else Console(quiet=True)


def row_progress(say: Console, progress: Progress | LineProgress, label: str) -> Callable[[int, int], None]:
    """Progress of certify or predict rows; the first report (rows already there, rows in all) says where it resumes."""
    task = None

    def on_rows(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            if done:
                say.print(f"resuming after row {done} of {total}" + (": nothing left to do" if done >= total else ""))
            task = progress.add_task(label, total=total, completed=done, first=done, unit="inputs")
        progress.update(task, completed=done, total=total)

    return on_rows


def sweep_printer(say: Console, progress: Progress | LineProgress):
    """The bar of a whole optimize-sigma or co-optimize run, a line per evaluated sigma, and where it resumes."""
    from nrs_cli.runs.optimization import StepDone
    from nrs_cli.runs.work import Progress as Advanced
    from nrs_cli.runs.work import Started

    task = None

    def on_event(event) -> None:
        nonlocal task
        if isinstance(event, Started):
            if event.resumed:
                left = ": nothing left to do" if event.done >= event.total else ""
                say.print(f"resuming {event.resumed}{left}")
            task = progress.add_task("sweep", total=event.total, completed=event.done, first=event.done, unit="samples")
        elif isinstance(event, Advanced):
            # drawn now, not at the next tick of the bar's clock: what a terminal shows does not depend on speed
            progress.update(task, completed=event.done, description=event.what or None, refresh=True)
        elif isinstance(event, StepDone):
            step = f"sigma {event.init:g} sub-epoch {event.sub_epoch}: step {event.step}/{event.steps}"
            progress.update(
                task,
                description=f"{step}, loss {event.loss:.1f}, right {event.right:.0%}, "
                f"sigma mean {event.sigma.mean:.3g} std {event.sigma.std:.3g}",
            )
        else:
            say.print(point_line(event.row))

    return on_event


def point_line(row) -> str:
    """The line printed for an evaluated sigma (a row of metrics.csv)."""
    return (
        f"{row.method:>11} sigma {row.init:g}"
        + (f" sub-epoch {row.sub_epoch}" if row.sub_epoch else "")
        + f": accuracy {row.accuracy:.1%}, mean log_area {row.mean_log_area:.1f}, "
        f"sigma mean {row.sigma_mean:.3g} [{row.sigma_min:.3g}, {row.sigma_max:.3g}] ({row.seconds:.0f} s)"
    )
