"""The ``nrs`` command line (Typer): parse, call the library, print."""

from nrs_cli.cli import optimize_commands, report_commands, run_commands, spec_commands  # noqa: F401 - registers the commands
from nrs_cli.cli.app import main

__all__ = ["main"]
