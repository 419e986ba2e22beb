"""The ``nrs`` application: the Typer app, how every command fails, and the entry point.

No logic lives in the commands that a test would need: each is a thin shell around a library
call (:mod:`nrs_cli.runs.jobs` and the runs and experiments it starts). User errors
(:class:`NrsError`) print one line and exit with code 2; so does an interrupted run, which keeps
what it wrote.
"""

from __future__ import annotations

import functools
import re
import signal
import sys
import traceback
from typing import Any, Callable

import typer
from rich.console import Console

from nrs_cli.cli.manual import ManualCommand, ManualGroup
from nrs_cli.errors import NrsError
from nrs_cli.version import __version__

app = typer.Typer(
    name="nrs",
    help="Certified robustness with non-uniform randomized smoothing: train a base classifier, "
    "optimise per-element noise scales, certify, and plot.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=ManualGroup,
)
console = Console(highlight=False, soft_wrap=True, markup=False)  # text is printed as it is: "[1/4]"

plot_app = typer.Typer(
    help="Draw the paper's figures and tables from result files (PNG and PDF).",
    no_args_is_help=True,
    rich_markup_mode=None,
    cls=ManualGroup,
)
app.add_typer(plot_app, name="plot")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, batch schedulers, ``docker stop``), handled like Ctrl-C."""


def _stop(signum: int, frame: Any) -> None:
    """The first Ctrl-C or SIGTERM ends the run; later ones are ignored, so the cleanup it starts (locks
    released, temporary files removed, exit handlers) finishes instead of ending in a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


# What to lower when memory runs out, by command (the options that size the largest allocations).
_MEMORY_OPTIONS = {
    "certify": "--chunk-size",
    "predict": "--chunk-size",
    "optimize-sigma": "--chunk-size, --batch-size or --n0",
    "co-optimize": "--chunk-size or --set optimize.batch_size / cooptimize.finetune_batch_size",
    "train-base": "--batch-size",
    "compare": "--set engine.chunk_size",
    "figures": "--set engine.chunk_size",
}


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
            except (MemoryError, RuntimeError) as err:
                if not _out_of_memory(err):
                    _report_bug()
                    raise typer.Exit(1) from None
                message = _memory_message(name, err)
            except Exception:
                _report_bug()
                raise typer.Exit(1) from None
            print_error(message)
            raise typer.Exit(NrsError.exit_code)

        return group.command(name, cls=ManualCommand)(run)

    return decorate


def print_error(message: str) -> None:
    """``error: <message>`` on one line, whatever a path in it holds: control characters (a newline, a tab,
    ESC) are written as Python writes them in a string literal (``\\n``, ``\\t``, ``\\x1b``)."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    print(f"error: {shown}", file=sys.stderr)


def _report_bug() -> None:
    traceback.print_exc()
    print(
        f"nrs {__version__}: unexpected error, a bug in nrs; please report it with the command "
        "line and the traceback above",
        file=sys.stderr,
    )


_ALLOCATION_FAILURES = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")


def _out_of_memory(err: BaseException) -> bool:
    """A failed allocation: MemoryError, or PyTorch's allocators saying so (CPU and CUDA)."""
    text = str(err).lower()
    return isinstance(err, MemoryError) or any(phrase in text for phrase in _ALLOCATION_FAILURES)


def _memory_message(command_name: str, err: BaseException) -> str:
    text = str(err)
    device = "GPU" if "cuda" in text.lower() or type(err).__name__ == "OutOfMemoryError" else "CPU"
    size = _allocation_size(text)
    lower = _MEMORY_OPTIONS.get(command_name)
    hint = f"lower {lower}" if lower else "use smaller inputs or batches"
    return (
        f"{device} memory ran out{f' (allocating {size})' if size else ''}: {hint}; "
        "everything written so far is kept (rerun to resume)"
    )


def _allocation_size(text: str) -> str:
    """The size an allocator failed to allocate, from its message (CPU: bytes; CUDA: a number with a unit)."""
    in_bytes = re.search(r"allocate (\d+) bytes", text)
    if in_bytes:
        return f"{int(in_bytes.group(1)) / 2**30:.2f} GiB"
    with_unit = re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
    return with_unit.group(1) if with_unit else ""


def _os_error(err: OSError) -> str:
    """One line for a failed read or write: what, where and why."""
    name = str(err.filename) if err.filename else ""
    where = f" {name if len(name) <= 300 else name[:150] + '...' + name[-100:]}" if name else ""
    return f"cannot access{where}: {err.strerror or err}"


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
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored (`nohup`)
        signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit (`ulimit -f`): the write fails, one line
    try:
        code = app(args=argv, prog_name="nrs", standalone_mode=False)
    except typer.Abort:
        print_error("interrupted")
        code = NrsError.exit_code
    except Exception as err:
        if not hasattr(err, "format_message"):  # Click's usage errors (Click ships inside newer Typer)
            raise
        message, context = err.format_message(), getattr(err, "ctx", None)
        if message.startswith("Usage:"):  # no command given: the help is the answer
            print(message, file=sys.stderr)
        else:
            where = f" (see {context.command_path} --help)" if context is not None else ""
            print_error(f"{message}{where}")
        code = getattr(err, "exit_code", NrsError.exit_code)
    if code:
        sys.exit(code)
