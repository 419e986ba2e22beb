"""Run specs: one YAML file per dataset, loaded into typed, validated objects.

A run is fully described by its spec plus command-line overrides. Built-in
specs live in the repository's ``datasets/`` folder (shipped as the package
``nrs_cli.datasets``); a user's own YAML file works the same way and may start
from a built-in one with ``extends: <name>``.

Every key is checked: an unknown key or a value of the wrong type is an
:class:`NrsError` that names the key and the file it came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from nrs_cli.errors import NrsError
from nrs_cli.io.spec_files import build, read_spec_file, set_dotted, short


@dataclass(frozen=True)
class DataSpec:
    """Where the inputs come from and what they look like (pixels in [0, 1])."""

    loader: str  # dataset registry name, see `nrs list datasets`
    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]  # per-channel normalisation, applied inside the model
    std: tuple[float, ...]
    folder: Optional[str] = None  # sub-folder of the data root, if not the loader's own
    download: bool = True  # let torchvision download when the files are missing
    train_size: Optional[int] = None  # seeded random subset of the train split
    test_size: Optional[int] = None  # seeded random subset of the test split
    test_fraction: float = 0.1  # for loaders that split one folder themselves (KITTI)
    split_seed: int = 0  # seeds subsets and splits; independent of the run seed
    resize: Optional[int] = None  # shorter side, or the square size when crop is unset
    crop: Optional[int] = None  # centre crop after resizing
    workers: int = 0  # DataLoader worker processes
    order: Literal["stored", "interleaved"] = "stored"  # interleaved: the classes in turn (ordered copies)


@dataclass(frozen=True)
class ModelSpec:
    """The base classifier f."""

    arch: str  # architecture registry name, see `nrs list archs`
    pretrained: bool = False  # torchvision weights where the architecture has them


@dataclass(frozen=True)
class TrainSpec:
    """Training of the base classifier (`nrs train-base`)."""

    epochs: int
    batch_size: int
    optimizer: Literal["adam", "sgd"]
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["step", "linear"] = "step"  # step: x lr_gamma every lr_step epochs; linear: warm up, then to 0
    lr_step: int = 0  # step schedule: multiply the learning rate by lr_gamma every lr_step epochs (0: never)
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear schedule: from 0 to lr over these epochs, then linearly down to 0
    nesterov: bool = False  # SGD with Nesterov momentum
    label_smoothing: float = 0.0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast for training steps (mixed precision)
    augment: Literal["none", "flip", "crop-flip"] = "none"
    noise_sigma: float = 0.0  # Gaussian noise augmentation; a sigma file path is a CLI option


@dataclass(frozen=True)
class OptimizeSpec:
    """Sigma optimisation (paper Algorithm 1) and the sweep of Fig. 2."""

    init: float  # first constant sigma of the sweep (pixel space)
    init_step: float  # difference between consecutive constants
    inits: int  # how many constants
    sub_epochs: int  # optimisation rounds per constant; evaluated after each
    steps_per_sub_epoch: int  # optimisation steps per round (0: one pass over the train split)
    batch_size: int  # inputs per optimisation step
    n0: int  # noise samples per input per step
    lr: float  # Adam learning rate on log(sigma)
    lr_decay: float  # learning rate factor after every sub-epoch
    eval_n0: int = 32
    eval_n: int = 256
    eval_alpha: float = 0.001
    eval_max: int = -1  # test inputs per evaluation (-1: all)
    baseline: bool = True  # also evaluate isotropic sigma over the sweep's range
    baseline_step: Optional[float] = None  # spacing of the isotropic constants (default: init_step)
    cap_p_hat: bool = False  # clamp p_hat at the largest p_A lower bound the evaluation's CERTIFY can reach


@dataclass(frozen=True)
class CertifySpec:
    """Test-time CERTIFY / PREDICT (Cohen et al., paper Theorem 3.1)."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    split: Literal["train", "test"] = "test"
    skip: int = 1  # certify every skip-th input
    max: int = -1  # stop after this many inputs (-1: all)
    bound: Literal["one-sided", "two-sided"] = "one-sided"
    sigma: Optional[float] = None  # `nrs certify` without --sigma and without a sweep to take it from


@dataclass(frozen=True)
class EngineSpec:
    """How the Monte Carlo engine runs (never what it computes)."""

    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    precision: Literal["fp32", "bf16"] = "fp32"
    chunk_size: int = 0  # noisy samples per forward pass (0: chosen per device)
    channels_last: bool = True


@dataclass(frozen=True)
class CoOptimizeSpec:
    """Co-optimisation (`nrs co-optimize`): rounds of fine-tuning the network under the current
    per-element sigma, then Algorithm 1 on the frozen network (the optimize section's batch, n0,
    learning rate and evaluation; the decay per round is this section's), evaluated after every round."""

    rounds: int = 6
    finetune_steps: int = 100  # training steps under noise per round
    finetune_batch_size: int = 128
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

    init: Optional[float] = None
    init_step: Optional[float] = None
    inits: Optional[int] = None
    sub_epochs: Optional[int] = None
    steps_per_sub_epoch: Optional[int] = None
    eval_max: Optional[int] = None
    baseline_step: Optional[float] = None
    certify_max: Optional[int] = None  # Fig. 1 certifies the test inputs below this index
    sigmas: int = 2  # optimised sigmas in Fig. 1, each with the isotropic sigma of its mean
    radius_thresholds: Optional[tuple[float, ...]] = None  # the l2-radius table's columns (null: chosen from the data)
    area_thresholds: Optional[tuple[float, ...]] = None  # the log-area table's columns (null: chosen from the data)


@dataclass(frozen=True)
class RunSpec:
    name: str
    data: DataSpec
    model: ModelSpec
    train: TrainSpec
    optimize: OptimizeSpec
    certify: CertifySpec = CertifySpec()
    engine: EngineSpec = EngineSpec()
    figures: FiguresSpec = FiguresSpec()
    cooptimize: CoOptimizeSpec = CoOptimizeSpec()
    compare: CompareSpec = CompareSpec()
    description: str = ""
    seed: int = 0
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
            f"unknown dataset '{name_or_path}' (built-in: {', '.join(builtin_specs())}; or pass a YAML run spec file)"
        )
    return Path(str(builtin))


def load_spec(name_or_path: str = "mnist-mini", overrides: dict[str, Any] | None = None) -> RunSpec:
    """Load a run spec and apply overrides given as ``{"train.epochs": 3}``.

    An override of None sets the key to null (YAML's ``~``), as ``--set key=null`` does.
    """
    path = resolve_spec_path(name_or_path)
    raw = read_spec_file(path, resolve_spec_path)
    spec = _checked(build(RunSpec, raw, "", str(path)), str(path))  # errors here are the file's
    if overrides:
        for dotted, value in overrides.items():
            set_dotted(raw, dotted, value, "command line")
        spec = _checked(build(RunSpec, raw, "", "command line"), "command line")  # errors here are the overrides'
    return dataclasses.replace(spec, source=str(path))


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Every sigma nrs uses lies here (pixel units, images in [0, 1]): far beyond any useful noise at both ends.
SIGMA_BOUNDS = (1e-6, 1e3)
Check = tuple[Callable[[Any], bool], str]


def _within(low: float, high: float, expected: str, optional: bool = False) -> Check:
    """A number from ``low`` to ``high``: not NaN, and no integer too large for a float (None too when
    ``optional``). Comparisons only, so an integer of any size is refused rather than overflowing."""
    return (lambda v: (optional and v is None) or (v is not None and low <= v <= high)), expected


def _above(low: float, high: float, expected: str, optional: bool = False) -> Check:
    """A finite number above ``low``, at most ``high`` (None too when ``optional``)."""
    return (lambda v: (optional and v is None) or (v is not None and low < v <= high)), expected


def _each(test: Callable[[Any], bool], expected: str, least: int = 0, optional: bool = False) -> Check:
    """A list of at least ``least`` values, each passing ``test`` (None too when ``optional``)."""
    return (lambda v: (optional and v is None) or (v is not None and len(v) >= least and all(map(test, v)))), expected


def _evenly_spaced(values: tuple[float, ...]) -> bool:
    steps = [b - a for a, b in zip(values, values[1:])]
    return all(math.isclose(step, steps[0], rel_tol=1e-9, abs_tol=1e-12) for step in steps)


def _sigma_value(v: float) -> bool:
    return SIGMA_BOUNDS[0] <= v <= SIGMA_BOUNDS[1]


def _image_shape(v: tuple[int, ...]) -> bool:
    return len(v) == 3 and all(1 <= side <= 2**16 for side in v) and math.prod(v) <= 2**28


# Sizes nrs can hold in memory, counts that fit the 64-bit integers they are computed in, and learning
# rates and factors that do not overflow within a few steps: generous bounds that a typo exceeds.
_SEED = _within(0, 2**63 - 1, "an integer from 0 to 2^63 - 1")
_SAMPLES = _within(1, 10**12, "a number of samples from 1 to 10^12")
_BATCH = _within(1, 2**24, "a batch size from 1 to 2^24")
_STEPS = _within(0, 10**9, "a number of steps from 0 to 10^9")
_ROUNDS = _within(1, 10**6, "a count from 1 to 10^6")
_ALL_OR_COUNT = _within(-1, 2**62, "-1 (all) or a count up to 2^62")
_SIZE = _within(1, 2**62, "null or a count from 1 to 2^62", optional=True)
_SIDE = _within(1, 2**16, "null or a size from 1 to 65536 pixels", optional=True)
_LR = _above(0, 10, "a positive learning rate, at most 10")
_FACTOR = _above(0, 10, "a positive factor, at most 10")
_FRACTION = _within(0, 1 - 1e-12, "a number from 0 to below 1")
_SIGMA = _within(*SIGMA_BOUNDS, f"a sigma from {SIGMA_BOUNDS[0]:g} to {SIGMA_BOUNDS[1]:g} (pixel units)")
_STEP = _within(-SIGMA_BOUNDS[1], SIGMA_BOUNDS[1], "a step of sigma (finite, pixel units)")
_THRESHOLDS = _each(lambda x: -1e15 <= x <= 1e15, "null or a list of finite numbers", optional=True)
# Ranges checked after the types: dotted key -> (test, what is expected).
_RANGES: dict[str, Check] = {
    "name": (lambda v: bool(_NAME.fullmatch(v)), "up to 100 letters, digits, '.', '_' or '-' (it names run folders)"),
    "seed": _SEED,
    "data.split_seed": _SEED,
    "data.input_shape": (_image_shape, "[channels, height, width], each 1 to 65536, at most 2^28 elements"),
    "data.num_classes": _within(2, 10**6, "from 2 to 10^6 classes"),
    "data.mean": _each(lambda m: -1e6 <= m <= 1e6, "finite numbers from -1e6 to 1e6"),
    "data.std": _each(lambda x: 1e-6 <= x <= 1e6, "numbers from 1e-6 to 1e6 (pixel units)"),
    "data.train_size": _SIZE,
    "data.test_size": _SIZE,
    "data.test_fraction": (lambda v: 0 < v < 1, "a fraction between 0 and 1"),
    "data.resize": _SIDE,
    "data.crop": _SIDE,
    "data.workers": _within(0, 1024, "0 to 1024 worker processes"),
    "train.epochs": _within(0, 10**6, "0 or more, at most 10^6"),
    "train.batch_size": _BATCH,
    "train.lr": _LR,
    "train.momentum": _FRACTION,
    "train.weight_decay": _within(0, 10, "0 or more, at most 10"),
    "train.lr_step": _within(0, 10**6, "0 or more, at most 10^6"),
    "train.lr_gamma": _FACTOR,
    "train.noise_sigma": (lambda v: v == 0 or _sigma_value(v), f"0 or {_SIGMA[1]}"),
    "train.warmup_epochs": _within(0, 10**6, "0 or more, at most 10^6"),
    "train.label_smoothing": _FRACTION,
    "optimize.init": _SIGMA,
    "optimize.init_step": _STEP,
    "optimize.inits": _within(1, 10**4, "from 1 to 10^4 constants"),
    "optimize.sub_epochs": _ROUNDS,
    "optimize.steps_per_sub_epoch": _STEPS,
    "optimize.batch_size": _BATCH,
    "optimize.n0": _BATCH,
    "optimize.lr": _LR,
    "optimize.lr_decay": _FACTOR,
    "optimize.eval_n0": _SAMPLES,
    "optimize.eval_n": _SAMPLES,
    "optimize.eval_alpha": (lambda v: 0 < v < 1, "a number strictly between 0 and 1"),
    "optimize.eval_max": _ALL_OR_COUNT,
    "optimize.baseline_step": _above(0, SIGMA_BOUNDS[1], "null or a positive step of sigma", optional=True),
    "certify.n0": _SAMPLES,
    "certify.n": _SAMPLES,
    "certify.alpha": (lambda v: 0 < v < 1, "a number strictly between 0 and 1"),
    "certify.skip": _within(1, 2**62, "a count from 1 to 2^62"),
    "certify.max": _ALL_OR_COUNT,
    "certify.sigma": (lambda v: v is None or _sigma_value(v), f"null or {_SIGMA[1]}"),
    "engine.chunk_size": _within(0, 2**31, "0 (chosen per device) or a number of samples up to 2^31"),
    "figures.init": (lambda v: v is None or _sigma_value(v), f"null or {_SIGMA[1]}"),
    "figures.init_step": (lambda v: v is None or _STEP[0](v), "null or " + _STEP[1]),
    "figures.inits": _within(1, 10**4, "null or from 1 to 10^4 constants", optional=True),
    "figures.sub_epochs": _within(1, 10**6, "null or a count from 1 to 10^6", optional=True),
    "figures.steps_per_sub_epoch": _within(0, 10**9, "null or a number of steps from 0 to 10^9", optional=True),
    "figures.eval_max": _within(-1, 2**62, "null, -1 (all) or a count", optional=True),
    "figures.baseline_step": _above(0, SIGMA_BOUNDS[1], "null or a positive step of sigma", optional=True),
    "figures.certify_max": _within(-1, 2**62, "null, -1 (all) or a count", optional=True),
    "figures.sigmas": _within(1, 100, "from 1 to 100 sigmas"),
    "figures.radius_thresholds": _THRESHOLDS,
    "figures.area_thresholds": _THRESHOLDS,
    "cooptimize.rounds": _ROUNDS,
    "cooptimize.finetune_steps": _STEPS,
    "cooptimize.finetune_batch_size": _BATCH,
    "cooptimize.finetune_lr": _LR,
    "cooptimize.sigma_steps": _STEPS,
    "cooptimize.lr_decay": _FACTOR,
    "compare.noise_sigmas": _each(_sigma_value, f"a list of {_SIGMA[1]}", least=1),
    "compare.sweep_factors": (
        lambda v: len(v) >= 2 and all(0 < x <= 1e3 for x in v) and _evenly_spaced(v),
        "two or more equally spaced positive factors",
    ),
    "compare.cooptimize_inits": (
        lambda v: len(v) >= 1 and all(map(_sigma_value, v)) and _evenly_spaced(v),
        f"equally spaced constants, each {_SIGMA[1]} (co-optimisation starts from init, init + step, ...)",
    ),
    "compare.certify_max": _ALL_OR_COUNT,
    "compare.radii": _each(lambda r: 0 <= r <= 1e6, "a list of l2 radii, 0 or more"),
}


def _checked(spec: RunSpec, source: str) -> RunSpec:
    """Refuse values of the right type but outside their range, and means and stds that do not fit the channels."""
    for dotted, (test, expected) in _RANGES.items():
        value = spec
        for part in dotted.split("."):
            value = getattr(value, part)
        if not test(value):
            raise NrsError(f"{source}: {dotted}: expected {expected}, got {short(value)}")
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
