"""How ``nrs --help`` reads: options in named panels, readable placeholders, whole command summaries in order.

The app renders help with Click's plain formatter (``rich_markup_mode=None``: a pipe and a
terminal show the same text), which on its own lists every option in one "Options" section,
shows Typer's type placeholders (``<int>``, ``<list[Path]>``, ``{sigmas}...``) and cuts command
summaries at the terminal width with "...". Here:

- :class:`ManualCommand` puts each option in the section named by its ``rich_help_panel``
  (Typer's own field, set on the option objects), sections in :data:`PANELS` order, and shows
  each value's placeholder: the option's ``metavar``, else one by type (:func:`placeholder`);
- :class:`ManualGroup` lists its commands in :data:`COMMAND_ORDER` with their whole summary
  (the first paragraph of the docstring), wrapped rather than cut.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, get_args, get_origin

from typer.core import TyperArgument, TyperCommand, TyperGroup


class Panel:
    """The help sections options are grouped into (an option's ``rich_help_panel``)."""

    DATA = "Data"  # which inputs: dataset, folder, split, subset
    MODEL = "Model"  # the base classifier
    SIGMA = "Sigma"  # the noise scales used or started from
    TRAINING = "Training"  # of the base classifier
    OPTIMIZATION = "Optimization"  # Algorithm 1 (and fine-tuning, when co-optimizing)
    EVALUATION = "Evaluation"  # CERTIFY of every optimized sigma
    SAMPLING = "Sampling"  # the Monte Carlo estimate of certify and predict
    FIGURE = "Figure"  # what a figure shows
    OUTPUT = "Output"  # where results go
    RUN = "Run"  # how it runs: seed, precision, device, spec overrides


# Help sections in the order a command's help shows them; options without a panel come last.
PANELS = tuple(value for name, value in vars(Panel).items() if name.isupper())
OTHER = "Other options"
# `nrs --help` lists the commands in the order of the work: train, optimise, certify, draw.
COMMAND_ORDER = (
    "train-base",
    "optimize-sigma",
    "co-optimize",
    "certify",
    "predict",
    "figures",
    "compare",
    "visualize-sigma",
    "plot",
    "list",
    "spec",
)
_BY_TYPE = {int: "N", float: "FLOAT", Path: "PATH", str: "TEXT"}


def placeholder(annotation: Any) -> str:
    """The placeholder of a value of this type in help: N, FLOAT, PATH or TEXT (a list: its items')."""
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    return _BY_TYPE.get(annotation, "VALUE")


def summary(command) -> str:
    """A command's whole one-line summary: its short help, else the first paragraph of its help."""
    text = command.short_help or (command.help or "").partition("\f")[0]
    return " ".join(inspect.cleandoc(text).split("\n\n")[0].split())


def _aligned(sections: list[tuple[str, list[tuple[str, str]]]], formatter) -> None:
    """Write definition-list sections with one first-column width for all (Click measures each alone)."""
    width = max((len(term) for _, rows in sections for term, _ in rows), default=0)
    width = min(width, 34)
    for title, rows in sections:
        with formatter.section(title):
            formatter.write_dl([(term.ljust(width), text) for term, text in rows], col_max=width)


class ManualCommand(TyperCommand):
    """A command whose help groups its options into panels and shows readable placeholders."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.metavar is None and not getattr(param, "is_flag", False):
                param.metavar = placeholder(param.type_descriptor.annotation)

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx, formatter) -> None:
        arguments, panels = [], {}
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                arguments.append((name, (param.help or "") + ("  [required]" if param.required else "")))
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                panels.setdefault(getattr(param, "rich_help_panel", None) or OTHER, []).append(record)
        unknown = [title for title in panels if title not in (*PANELS, OTHER)]  # named nowhere yet: before OTHER
        order = [title for title in PANELS if title in panels] + unknown + ([OTHER] if OTHER in panels else [])
        sections = [("Arguments", arguments)] if arguments else []
        _aligned(sections + [(title, panels[title]) for title in order], formatter)


class ManualGroup(TyperGroup):
    """A command group whose help lists its commands in :data:`COMMAND_ORDER` with whole summaries."""

    def list_commands(self, ctx) -> list[str]:
        known = [name for name in COMMAND_ORDER if name in self.commands]
        return known + [name for name in self.commands if name not in known]

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, summary(command)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
