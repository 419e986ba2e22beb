"""Options several commands share, each mapped to the spec field it overrides, and the spec they make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

DATASET_HELP = "Built-in dataset (see `nrs list datasets`) or a YAML run spec file."
DATA_ROOT_HELP = "Folder holding the datasets (default: $NRS_DATA_ROOT, then ~/.cache/nrs/data)."
SET_HELP = "Override any spec field, e.g. --set train.lr_step=30 (repeatable)."

# Options several commands share; each maps to the spec field in brackets.
DATASET = typer.Option("mnist-mini", "--dataset", "-d", help=DATASET_HELP)
DATA_ROOT = typer.Option(None, help=DATA_ROOT_HELP)
RUNS_DIR = typer.Option(Path("runs"), help="Where run folders live.")
CHECKPOINT = typer.Option(
    None, help="Base classifier (nrs, Cohen or Salman checkpoint; default RUNS_DIR/<dataset>/base/checkpoint.pt)."
)
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
OUT_TSV = typer.Option(
    None, "--out", help="Result TSV; manifest and summary JSON go beside it (default RUNS_DIR/<dataset>/<command>/...)."
)
FORCE = typer.Option(
    False,
    "--force",
    help="Start --out over whatever it holds (another file, rows made otherwise) instead of refusing or resuming.",
)


def spec_from(dataset: str, options: dict[str, Any], assignments: list[str]):
    """Load the spec; ``--set KEY=VALUE`` overrides the file, named options override both."""
    from nrs_cli.io.spec import load_spec
    from nrs_cli.io.spec_files import parse_assignments

    overrides = parse_assignments(assignments)
    overrides.update({key: value for key, value in options.items() if value is not None})
    return load_spec(dataset, overrides)


def engine_options(chunk_size, batch, seed, precision, device) -> dict[str, Any]:
    """Spec overrides of the options every sampling command shares (``--batch`` is ``--chunk-size``'s old name)."""
    return {
        "engine.chunk_size": chunk_size if chunk_size is not None else batch,
        "seed": seed,
        "engine.precision": precision,
        "engine.device": device,
    }
