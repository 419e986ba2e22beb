"""The ``nrs`` application: the Typer app, how every command fails, and the entry point.

No logic lives in the commands that a test would need: each is a thin shell around a library
call (:mod:`nrs_cli.runs.jobs` and the runs and experiments it starts). User errors
(:class:`NrsError`) print one line and exit with code 2; so does an interrupted run, which keeps
what it wrote.
"""

from __future__ import annotations

import functools
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

        return group.command(name, cls=ManualCommand)(run)

    return decorate


def _os_error(err: OSError) -> str:
    """One line for a failed read or write: what, where and why."""
    where = f" {err.filename}" if err.filename else ""
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
