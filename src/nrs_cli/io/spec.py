"""Run specs: one YAML file per dataset, loaded into typed, validated objects.

A run is fully described by its spec plus command-line overrides. Built-in
specs live in the repository's ``datasets/`` folder (shipped as the package
``nrs_cli.datasets``); a user's own YAML file works the same way and may start
from a built-in one with ``extends: <name>``.

Every key is checked: an unknown key or a value of the wrong type is an
:class:`NrsError` that names the key and the file it came from.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal, Optional

from nrs_cli.errors import NrsError
from nrs_cli.io.spec_files import build, read_spec_file, set_dotted, short
from nrs_cli.io.spec_ranges import check_ranges


@dataclass(frozen=True)
class DataSpec:
    """Where the inputs come from and what they look like (pixels in [0, 1])."""

    loader: str  # dataset registry name, see `nrs list datasets`
    input_shape: tuple[int, ...]  # [channels, height, width] of one input
    num_classes: int  # how many classes (the network's outputs)
    mean: tuple[float, ...]  # per-channel normalisation, applied inside the model: (x - mean) / std
    std: tuple[float, ...]  # per channel; mean 0 and std 1 leave the pixels as they are
    folder: Optional[str] = None  # sub-folder of the data root, if not the loader's own
    download: bool = True  # let torchvision download when the files are missing
    train_size: Optional[int] = None  # seeded random subset of the train split
    test_size: Optional[int] = None  # seeded random subset of the test split
    test_fraction: float = 0.1  # for loaders that split one folder themselves (KITTI, an image folder)
    split_seed: int = 0  # seeds subsets and splits; independent of the run seed
    resize: Optional[int] = None  # shorter side, or the square size when crop is unset
    crop: Optional[int] = None  # centre crop after resizing
    workers: int = 0  # DataLoader worker processes
    order: Literal["stored", "interleaved"] = "stored"  # interleaved: the classes in turn (ordered copies)


@dataclass(frozen=True)
class ModelSpec:
    """The base classifier f."""

    arch: Optional[str] = None  # a built-in name or torchvision:NAME (see `nrs list archs`); null: --arch
    pretrained: bool = False  # torchvision weights where the architecture has them


@dataclass(frozen=True)
class TrainSpec:
    """Training of the base classifier (`nrs train-base`)."""

    epochs: int = 10  # passes over the train split
    batch_size: int = 64  # images per step
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 0.001  # learning rate at its peak
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty on the weights
    schedule: Literal["step", "linear"] = "step"  # step: x lr_gamma every lr_step epochs; linear: warm up, then to 0
    lr_step: int = 0  # step schedule: multiply the learning rate by lr_gamma every lr_step epochs (0: never)
    lr_gamma: float = 0.1  # step schedule's factor
    warmup_epochs: float = 0.0  # linear schedule: from 0 to lr over these epochs, then linearly down to 0
    nesterov: bool = False  # SGD with Nesterov momentum
    label_smoothing: float = 0.0  # share of the target spread over the other classes
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast for training steps (mixed precision)
    augment: Literal["none", "flip", "crop-flip"] = "none"  # random flips, and 4-pixel padded crops
    noise_sigma: float = 0.0  # Gaussian noise augmentation; a sigma file path is a CLI option


@dataclass(frozen=True)
class OptimizeSpec:
    """Sigma optimisation (paper Algorithm 1) and the sweep of Fig. 2."""

    init: float = 0.125  # first constant sigma of the sweep (pixel space)
    init_step: float = 0.125  # difference between consecutive constants
    inits: int = 4  # how many constants
    sub_epochs: int = 3  # optimisation rounds per constant; evaluated after each
    steps_per_sub_epoch: int = 20  # optimisation steps per round (0: one pass over the train split)
    batch_size: int = 32  # inputs per optimisation step
    n0: int = 16  # noise samples per input per step
    lr: float = 0.01  # Adam learning rate on log(sigma)
    lr_decay: float = 0.8  # learning rate factor after every sub-epoch
    eval_n0: int = 32  # CERTIFY n0 of every evaluation
    eval_n: int = 256  # CERTIFY n of every evaluation
    eval_alpha: float = 0.001  # CERTIFY alpha of every evaluation
    eval_max: int = -1  # test inputs per evaluation: the first eval_max of the selection set (-1: all of it)
    baseline: bool = True  # also evaluate isotropic sigma over the sweep's range
    baseline_step: Optional[float] = None  # spacing of the isotropic constants (default: init_step)
    cap_p_hat: bool = False  # clamp p_hat at the largest p_A lower bound the evaluation's CERTIFY can reach


@dataclass(frozen=True)
class CertifySpec:
    """Test-time CERTIFY / PREDICT (Cohen et al., paper Theorem 3.1)."""

    n0: int = 100  # samples that choose the top class
    n: int = 100_000  # samples that bound its probability
    alpha: float = 0.001  # failure probability of the certificate
    split: Literal["train", "test"] = "test"  # the split certify and predict run on
    skip: int = 1  # certify every skip-th input
    max: int = -1  # stop after this many inputs (-1: all); with a selection or report set, its first max inputs
    bound: Literal["one-sided", "two-sided"] = "one-sided"  # two-sided also bounds the runner-up
    inputs: Literal["split", "selection", "report"] = "split"  # split: every skip-th input in the split's order
    sigma: Optional[float] = None  # `nrs certify` without --sigma and without a sweep to take it from


@dataclass(frozen=True)
class InputsSpec:
    """Which test inputs choose and which report: two seeded, class-balanced, disjoint sets of the test split.

    Every choice (the sweep's evaluations, a method's best point, the sigmas a figure shows) is made on
    the selection set (its first ``optimize.eval_max`` inputs); every published number (Fig. 1, the
    tables, gains at equal accuracy) is measured on the report set (its first ``certify_max``).
    """

    seed: int = 0  # seeds both sets; independent of the run seed
    tolerance: float = 0.005  # a gain at equal accuracy needs reference points this close in accuracy (each side)
    bootstrap: int = 2000  # paired bootstrap resamples behind every 95% interval
    refine_steps: int = 8  # most evaluations spent refining a reference around one accuracy


@dataclass(frozen=True)
class EngineSpec:
    """How the Monte Carlo engine runs (never what it computes)."""

    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: the base classifier is the bf16 network
    chunk_size: int = 0  # noisy samples per forward pass (0: chosen per device)
    channels_last: bool = True  # run the network in channels_last memory format


@dataclass(frozen=True)
class CoOptimizeSpec:
    """Co-optimisation (`nrs co-optimize`): rounds of fine-tuning the network under the current
    per-element sigma, then Algorithm 1 on the frozen network (the optimize section's batch, n0,
    learning rate and evaluation; the decay per round is this section's), evaluated after every round."""

    rounds: int = 6  # fine-tuning and Algorithm 1 rounds per constant, evaluated after each
    finetune_steps: int = 100  # training steps under noise per round
    finetune_batch_size: int = 128  # images per fine-tuning step
    finetune_lr: float = 0.0005  # Adam on the network's weights
    sigma_steps: int = 60  # Algorithm 1 steps per round
    lr_decay: float = 0.8  # Algorithm 1's learning rate factor per round (from optimize.lr)


@dataclass(frozen=True)
class CompareSpec:
    """`nrs compare`: five ways to pick the network and sigma, on the same axes (see docs/results.md).

    A and B come from the clean base classifier and its figures sweep; C and C' from base
    classifiers trained under each noise level (their isotropic baseline and their sweep); D from
    co-optimising from the clean and from one noise-trained classifier.
    """

    noise_sigmas: tuple[float, ...] = (0.12, 0.25, 0.5)  # C: train-base --noise-sigma for each
    sweep_factors: tuple[float, ...] = (0.5, 1.0, 1.5)  # C': sweeps from each noise level times these
    cooptimize_from: float = 0.25  # D: co-optimise from the network trained at this noise level too
    cooptimize_inits: tuple[float, ...] = (0.25, 0.5)  # D: constant sigmas co-optimisation starts from
    certify_max: int = 500  # Fig. 1 and the l2 table: the first test inputs
    radii: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # the table's l2 radii (Cohen's axis)


@dataclass(frozen=True)
class FiguresSpec:
    """What `nrs figures` (`make figures`) runs: smaller stand-ins where the paper's settings take hours.

    Unset (null) fields keep the optimize / certify sections' values.
    """

    init: Optional[float] = None  # null: optimize.init
    init_step: Optional[float] = None  # null: optimize.init_step
    inits: Optional[int] = None  # null: optimize.inits
    sub_epochs: Optional[int] = None  # null: optimize.sub_epochs
    steps_per_sub_epoch: Optional[int] = None  # null: optimize.steps_per_sub_epoch
    eval_max: Optional[int] = None  # null: optimize.eval_max
    baseline_step: Optional[float] = None  # null: optimize.baseline_step
    certify_max: Optional[int] = None  # Fig. 1 certifies the test inputs below this index
    sigmas: int = 2  # optimised sigmas in Fig. 1, each with the isotropic sigma of its mean
    radius_thresholds: Optional[tuple[float, ...]] = None  # the l2-radius table's columns (null: chosen from the data)
    area_thresholds: Optional[tuple[float, ...]] = None  # the log-area table's columns (null: chosen from the data)


@dataclass(frozen=True)
class RunSpec:
    """A run: the data, the base classifier, and the settings of every command (sections a command
    does not use may be left out)."""

    name: str  # names the run folders: RUNS_DIR/<name>/...
    data: DataSpec
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    optimize: OptimizeSpec = OptimizeSpec()
    certify: CertifySpec = CertifySpec()
    inputs: InputsSpec = InputsSpec()
    engine: EngineSpec = EngineSpec()
    figures: FiguresSpec = FiguresSpec()
    cooptimize: CoOptimizeSpec = CoOptimizeSpec()
    compare: CompareSpec = CompareSpec()
    description: str = ""  # one line for `nrs list datasets`
    seed: int = 0  # seeds the noise, the batches and the initial weights
    source: str = ""  # the file the spec was read from (not a YAML key)

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (for manifests)."""
        raw = dataclasses.asdict(self)
        raw.pop("source")
        return _plain(raw)

    def digest(self, *sections: str) -> str:
        """sha256 of the resolved spec, or of the named sections only."""
        raw = self.to_dict()
        if sections:
            raw = {key: raw[key] for key in sections}
        return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def _builtin_folder():
    """Where the built-in specs are: the installed package ``nrs_cli.datasets``, or, run from a checkout
    with only ``src`` on the path, the repository's ``datasets/`` folder."""
    try:
        return files("nrs_cli.datasets")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[3] / "datasets"


def builtin_specs() -> list[str]:
    """Names of the run specs that ship with nrs."""
    folder = _builtin_folder()
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_spec_path(name_or_path: str) -> Path:
    """A built-in spec name (``mnist``) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise NrsError(f"spec file not found: {name_or_path}")
        return candidate
    builtin = _builtin_folder() / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise NrsError(
            f"unknown dataset '{name_or_path}' (built-in: {', '.join(builtin_specs())}; or pass a YAML run spec "
            "file, or an image folder <class>/<image>)"
        )
    return Path(str(builtin))


def load_spec(name_or_path: str = "mnist-mini", overrides: dict[str, Any] | None = None) -> RunSpec:
    """Load a run spec and apply overrides given as ``{"train.epochs": 3}``.

    An override of None sets the key to null (YAML's ``~``), as ``--set key=null`` does. A file
    may not name an architecture factory (``package.module:function``): that would run code the
    file chose; only the caller's overrides may (``--arch`` on the command line).
    """
    path = resolve_spec_path(name_or_path)
    raw = read_spec_file(path, resolve_spec_path)
    arch = raw.get("model", {}).get("arch") if isinstance(raw.get("model"), dict) else None
    if isinstance(arch, str) and is_factory(arch):
        raise NrsError(
            f"{path}: model.arch {short(arch)} names Python code to run, and nrs never runs code named in a "
            f"file: pass it on the command line instead (--arch {arch[:60]}), which runs it"
        )
    return build_spec(raw, str(path), overrides)


def build_spec(raw: dict[str, Any], source: str, overrides: dict[str, Any] | None = None) -> RunSpec:
    """A spec from its YAML mapping (errors name ``source``) with overrides applied (errors name the command line)."""
    spec = _checked(build(RunSpec, raw, "", source), source)
    if overrides:
        raw = copy.deepcopy(raw)
        for dotted, value in overrides.items():
            set_dotted(raw, dotted, value, "command line")
        spec = _checked(build(RunSpec, raw, "", "command line"), "command line")
    return dataclasses.replace(spec, source=source)


TORCHVISION_PREFIX = "torchvision:"


def is_factory(arch: str) -> bool:
    """Whether an architecture name is a factory ``package.module:function`` (code to import and run)
    rather than a built-in name or ``torchvision:NAME``."""
    return ":" in arch and not arch.startswith(TORCHVISION_PREFIX)


def _checked(spec: RunSpec, source: str) -> RunSpec:
    """Refuse values of the right type but outside their range, and means and stds that do not fit the channels."""
    check_ranges(spec, source)
    channels = spec.data.input_shape[0]
    if len(spec.data.mean) != channels or len(spec.data.std) != channels:
        raise NrsError(f"{source}: data.mean and data.std need one value per channel ({channels})")
    if spec.compare.cooptimize_from not in spec.compare.noise_sigmas:
        raise NrsError(
            f"{source}: compare.cooptimize_from: expected one of compare.noise_sigmas "
            f"({', '.join(f'{s:g}' for s in spec.compare.noise_sigmas)}), got {short(spec.compare.cooptimize_from)}"
        )
    return spec


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
