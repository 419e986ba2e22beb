"""The commands about run specs: `nrs spec new` writes a commented YAML to start from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from nrs_cli.cli.app import app, command, console
from nrs_cli.cli.manual import Panel
from nrs_cli.cli.options import ARCH, DATA_ROOT, DATASET, MEAN, RESIZE, SET, STD, model_options, spec_from
from nrs_cli.errors import NrsError

spec_app = typer.Typer(
    help="Run specs: every setting of a run in one YAML file (`nrs spec new` writes one to start from).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(spec_app, name="spec")


@command("new", spec_app)
def spec_new_command(
    dataset: Optional[str] = DATASET,
    data_root: Optional[Path] = DATA_ROOT,
    out: Optional[Path] = typer.Option(
        None, help="YAML file to write (default: <name>.yaml in this folder).", rich_help_panel=Panel.OUTPUT
    ),
    arch: Optional[str] = ARCH,
    resize: Optional[int] = RESIZE,
    mean: Optional[str] = MEAN,
    std: Optional[str] = STD,
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists.", rich_help_panel=Panel.OUTPUT),
    set_: list[str] = SET,
) -> None:
    """Write a run spec as commented YAML: every section and field with its value and what it means.

    Start from an image folder (its classes, channels and size are read from the images), a
    built-in dataset or another spec; edit the file and pass it as --dataset FILE.
    """
    from nrs_cli.io.serialization import atomic_write_text
    from nrs_cli.io.spec_template import commented_yaml
    from nrs_cli.version import __version__

    spec = spec_from(dataset, model_options(arch, resize, mean, std), set_, data_root)
    out = out or Path(f"{spec.name}.yaml")
    if out.exists() and not force:
        raise NrsError(f"{out} exists: choose another --out, or pass --force to overwrite it")
    header = (
        f"nrs run spec '{spec.name}', written by `nrs spec new` (nrs {__version__}) from {spec.source}.\n"
        "Every field is here with its value; change what you need (a left-out field takes its default).\n"
        f"Use it as: nrs certify --dataset {out} --checkpoint FILE --sigma 0.25"
    )
    atomic_write_text(commented_yaml(spec, header), out)
    shape = "x".join(map(str, spec.data.input_shape))
    console.print(f"wrote {out}: {spec.name}, {spec.data.num_classes} classes of {shape} inputs")
