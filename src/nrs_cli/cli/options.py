"""Options several commands share, each mapped to the spec field it overrides, and the spec they make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

DATASET_HELP = (
    "Built-in dataset (see `nrs list datasets`), a YAML run spec file, or an image folder DIR/<class>/<image> "
    "or DIR/{train,test}/<class>/<image> (no YAML needed)."
)
DATA_ROOT_HELP = (
    "Folder holding the datasets, or an image folder to use as the dataset "
    "(default: $NRS_DATA_ROOT, then ~/.cache/nrs/data)."
)
SET_HELP = "Override any spec field, e.g. --set train.lr_step=30 (repeatable)."

# Options several commands share; each maps to the spec field in brackets.
DATASET = typer.Option(
    None, "--dataset", "-d", help=DATASET_HELP + " Default: --data-root if it is an image folder, else mnist-mini."
)
DATA_ROOT = typer.Option(None, help=DATA_ROOT_HELP)
RUNS_DIR = typer.Option(Path("runs"), help="Where run folders live.")
CHECKPOINT = typer.Option(
    None,
    help="Base classifier: torch.save(model.state_dict()) with --arch, or an nrs, Cohen or Salman checkpoint "
    "(default RUNS_DIR/<dataset>/base/checkpoint.pt).",
)
ARCH = typer.Option(
    None,
    help="Network of the checkpoint: built-in (`nrs list archs`), torchvision:NAME (e.g. torchvision:resnet18), or "
    "your own package.module:function, called with num_classes (this runs your code) [spec: model.arch].",
)
RESIZE = typer.Option(None, help="Resize every image to NxN (image folders) [spec: data.resize].")
MEAN = typer.Option(
    None,
    help="Normalisation nrs puts before the network: mean per channel, comma-separated (default: the spec's; "
    "none for image folders) [spec: data.mean].",
)
STD = typer.Option(None, help="Standard deviation per channel, comma-separated (see --mean) [spec: data.std].")
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
INPUTS = typer.Option(
    None,
    help="split (every SKIP-th input below MAX, Cohen et al.'s), or the first MAX of the selection or the report "
    "set: disjoint, class-balanced halves of the split [spec: certify.inputs].",
)
OUT_TSV = typer.Option(
    None, "--out", help="Result TSV; manifest and summary JSON go beside it (default RUNS_DIR/<dataset>/<command>/...)."
)


def spec_from(dataset: str | None, options: dict[str, Any], assignments: list[str], data_root: Path | None = None):
    """Load the spec (a built-in name, a YAML file or an image folder; none: ``data_root`` if it is an
    image folder, else mnist-mini); ``--set KEY=VALUE`` overrides the file, named options override both."""
    from nrs_cli.io.folders import load_dataset_spec
    from nrs_cli.io.spec_files import parse_assignments

    overrides = parse_assignments(assignments)
    overrides.update({key: value for key, value in options.items() if value is not None})
    return load_dataset_spec(dataset, overrides, data_root)


def model_options(arch: str | None, resize: int | None, mean: str | None, std: str | None) -> dict[str, Any]:
    """Spec overrides of ``--arch``, ``--resize``, ``--mean`` and ``--std``."""
    return {
        "model.arch": arch,
        "data.resize": resize,
        "data.mean": _numbers("--mean", mean),
        "data.std": _numbers("--std", std),
    }


def _numbers(option: str, text: str | None) -> list[float] | None:
    """Comma-separated numbers, one per channel."""
    from nrs_cli.errors import NrsError

    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise NrsError(f"{option}: expected numbers separated by commas, one per channel, got {text!r}") from None


def engine_options(chunk_size, batch, seed, precision, device) -> dict[str, Any]:
    """Spec overrides of the options every sampling command shares (``--batch`` is ``--chunk-size``'s old name)."""
    return {
        "engine.chunk_size": chunk_size if chunk_size is not None else batch,
        "seed": seed,
        "engine.precision": precision,
        "engine.device": device,
    }
