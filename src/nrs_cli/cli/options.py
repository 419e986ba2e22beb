"""The commands' options with their help panels, each mapped to the spec field it overrides, and the spec they make.

Here are the options several commands share, and those of optimize-sigma and co-optimize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from nrs_cli.cli.manual import Panel

DATASET_HELP = (
    "Built-in dataset (see `nrs list datasets`), a YAML run spec file, or an image folder DIR/<class>/<image> "
    "or DIR/train/<class>/<image> with DIR/test/<class>/<image> (no YAML needed)."
)
DATA_ROOT_HELP = (
    "Folder holding the datasets, or an image folder to use as the dataset "
    "(default: $NRS_DATA_ROOT, then ~/.cache/nrs/data)."
)
SET_HELP = "Override any spec field, e.g. --set train.lr_step=30 (repeatable)."

# Options several commands share; each maps to the spec field in brackets. Each names its help panel
# (nrs_cli.cli.manual.Panel) and, where its type says too little, the placeholder of its value.


def dataset_option(default: Any, more_help: str) -> Any:
    """``--dataset``/``-d``: what every command says of it, then ``more_help`` (its default, repeatable)."""
    return typer.Option(
        default, "--dataset", "-d", metavar="DATASET", help=f"{DATASET_HELP} {more_help}", rich_help_panel=Panel.DATA
    )


DATASET = dataset_option(None, "Default: --data-root if it is an image folder, else mnist-mini.")
DATA_ROOT = typer.Option(None, metavar="DIR", help=DATA_ROOT_HELP, rich_help_panel=Panel.DATA)
TRAIN_SIZE = typer.Option(
    None,
    metavar="N",
    help="Use a seeded subset of the train split [spec: data.train_size].",
    rich_help_panel=Panel.DATA,
)
SPLIT = typer.Option(
    None, metavar="train|test", help="Split to evaluate [spec: certify.split].", rich_help_panel=Panel.DATA
)
SKIP = typer.Option(None, metavar="N", help="Use every N-th input [spec: certify.skip].", rich_help_panel=Panel.DATA)
STOP = typer.Option(
    None,
    "--max",
    "--stop",
    metavar="N",
    help="Stop before this input index; with --inputs selection|report, how many of the set [spec: certify.max]; "
    "--stop under torchrun.",
    rich_help_panel=Panel.DATA,
)
INPUTS = typer.Option(
    None,
    metavar="split|selection|report",
    help="split (every SKIP-th input below MAX, Cohen et al.'s), or the first MAX of the selection or the report "
    "set: disjoint, class-balanced halves of the split [spec: certify.inputs].",
    rich_help_panel=Panel.DATA,
)
RESIZE = typer.Option(
    None, metavar="N", help="Resize every image to NxN (image folders) [spec: data.resize].", rich_help_panel=Panel.DATA
)
CHECKPOINT = typer.Option(
    None,
    metavar="FILE",
    help="Base classifier: torch.save(model.state_dict()) with --arch, or an nrs, Cohen or Salman checkpoint "
    "(default RUNS_DIR/<dataset>/base/checkpoint.pt).",
    rich_help_panel=Panel.MODEL,
)
ARCH = typer.Option(
    None,
    metavar="NAME",
    help="Network of the checkpoint: built-in (`nrs list archs`), torchvision:NAME (e.g. torchvision:resnet18), or "
    "your own package.module:function, called with num_classes (this runs your code) [spec: model.arch].",
    rich_help_panel=Panel.MODEL,
)
MEAN = typer.Option(
    None,
    metavar="FLOATS",
    help="Normalisation nrs puts before the network: mean per channel, comma-separated (default: the spec's; "
    "none for image folders) [spec: data.mean].",
    rich_help_panel=Panel.MODEL,
)
STD = typer.Option(
    None,
    metavar="FLOATS",
    help="Standard deviation per channel, comma-separated (see --mean) [spec: data.std].",
    rich_help_panel=Panel.MODEL,
)
SIGMA = typer.Option(
    None,
    metavar="SIGMA",
    help="Noise scales: a number (isotropic, pixel units) or a sigma file from optimize-sigma "
    "(default: the best point of the dataset's latest sweep, else the spec's certify.sigma).",
    rich_help_panel=Panel.SIGMA,
)
INIT = typer.Option(
    None, metavar="SIGMA", help="First constant sigma to start from [spec: optimize.init].", rich_help_panel=Panel.SIGMA
)
INIT_STEP = typer.Option(
    None, metavar="SIGMA", help="Step between constants [spec: optimize.init_step].", rich_help_panel=Panel.SIGMA
)
INITS = typer.Option(None, metavar="N", help="Number of constants [spec: optimize.inits].", rich_help_panel=Panel.SIGMA)
EVAL_MAX = typer.Option(
    None,
    metavar="N",
    help="Test inputs per evaluation, -1 all [spec: optimize.eval_max].",
    rich_help_panel=Panel.EVALUATION,
)
NUM_SAMPLES = typer.Option(
    None,
    "--n",
    "--num-samples",
    metavar="N",
    help="Samples per input for the estimate [spec: certify.n]; --num-samples under torchrun.",
    rich_help_panel=Panel.SAMPLING,
)
ALPHA = typer.Option(
    None, metavar="FLOAT", help="Failure probability [spec: certify.alpha].", rich_help_panel=Panel.SAMPLING
)
RUNS_DIR = typer.Option(
    Path("runs"),
    metavar="DIR",
    help="Where run folders live (finished runs are resumed).",
    rich_help_panel=Panel.OUTPUT,
)
OUT_TSV = typer.Option(
    None,
    "--out",
    metavar="FILE",
    help="Result TSV; manifest and summary JSON go beside it (default RUNS_DIR/<dataset>/<command>/...).",
    rich_help_panel=Panel.OUTPUT,
)
SEED = typer.Option(
    None, metavar="N", help="Seed of the noise and of the data order [spec: seed].", rich_help_panel=Panel.RUN
)
PRECISION = typer.Option(
    None, metavar="fp32|bf16", help="Precision [spec: engine.precision].", rich_help_panel=Panel.RUN
)
TRAIN_PRECISION = typer.Option(
    None,
    "--precision",
    metavar="fp32|bf16",
    help="Training precision [spec: train.precision].",
    rich_help_panel=Panel.RUN,
)
DEVICE = typer.Option(
    None, metavar="DEVICE", help="auto, cpu, cuda or cuda:N [spec: engine.device].", rich_help_panel=Panel.RUN
)
CHUNK_SIZE = typer.Option(
    None,
    metavar="N",
    help="Noisy samples per forward pass; 0 chooses [spec: engine.chunk_size].",
    rich_help_panel=Panel.RUN,
)
BATCH_ALIAS = typer.Option(None, "--batch", hidden=True, help="Old name of --chunk-size (Cohen et al.'s --batch).")
SET = typer.Option([], "--set", metavar="KEY=VALUE", help=SET_HELP, rich_help_panel=Panel.RUN)


# Options of optimize-sigma and co-optimize.
SUB_EPOCHS = typer.Option(
    None,
    help="Sub-epochs per constant, evaluated after each [spec: optimize.sub_epochs].",
    rich_help_panel=Panel.OPTIMIZATION,
)
OPTIMIZE_STEPS = typer.Option(
    None,
    help="Steps per sub-epoch; 0 is one pass over the train split [spec: optimize.steps_per_sub_epoch].",
    rich_help_panel=Panel.OPTIMIZATION,
)
OPTIMIZE_BATCH_SIZE = typer.Option(
    None, help="Inputs per step [spec: optimize.batch_size].", rich_help_panel=Panel.OPTIMIZATION
)
OPTIMIZE_N0 = typer.Option(
    None, help="Noise samples per input per step [spec: optimize.n0].", rich_help_panel=Panel.OPTIMIZATION
)
OPTIMIZE_LR = typer.Option(
    None, help="Adam learning rate on log(sigma) [spec: optimize.lr].", rich_help_panel=Panel.OPTIMIZATION
)
LR_DECAY = typer.Option(
    None, help="Learning-rate factor per sub-epoch [spec: optimize.lr_decay].", rich_help_panel=Panel.OPTIMIZATION
)
CAP_P_HAT = typer.Option(
    None,
    "--cap-p-hat/--no-cap-p-hat",
    help="Clamp p_hat at alpha^(1/n) of the evaluation, beyond which CERTIFY's bound cannot grow "
    "[spec: optimize.cap_p_hat].",
    rich_help_panel=Panel.OPTIMIZATION,
)
EVAL_N0 = typer.Option(
    None, help="CERTIFY n0 of the evaluations [spec: optimize.eval_n0].", rich_help_panel=Panel.EVALUATION
)
EVAL_N = typer.Option(
    None, help="CERTIFY n of the evaluations [spec: optimize.eval_n].", rich_help_panel=Panel.EVALUATION
)
EVAL_ALPHA = typer.Option(
    None, help="CERTIFY alpha of the evaluations [spec: optimize.eval_alpha].", rich_help_panel=Panel.EVALUATION
)
BASELINE = typer.Option(
    None,
    "--baseline/--no-baseline",
    help="Also evaluate isotropic sigma at every constant [spec: optimize.baseline].",
    rich_help_panel=Panel.EVALUATION,
)
BASELINE_STEP = typer.Option(
    None,
    metavar="SIGMA",
    help="Spacing of the isotropic baseline constants (default: init step) [spec: optimize.baseline_step].",
    rich_help_panel=Panel.EVALUATION,
)
ROUNDS = typer.Option(
    None,
    help="Rounds per constant, evaluated after each [spec: cooptimize.rounds].",
    rich_help_panel=Panel.OPTIMIZATION,
)
FINETUNE_STEPS = typer.Option(
    None,
    help="Training steps under the current sigma per round [spec: cooptimize.finetune_steps].",
    rich_help_panel=Panel.OPTIMIZATION,
)
FINETUNE_LR = typer.Option(
    None,
    help="Adam learning rate of the network [spec: cooptimize.finetune_lr].",
    rich_help_panel=Panel.OPTIMIZATION,
)
SIGMA_STEPS = typer.Option(
    None, help="Algorithm 1 steps per round [spec: cooptimize.sigma_steps].", rich_help_panel=Panel.OPTIMIZATION
)
FORCE = typer.Option(
    False,
    "--force",
    help="Start --out over whatever it holds (another file, rows made otherwise) instead of refusing or resuming.",
    rich_help_panel=Panel.OUTPUT,
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
