"""The range every run-spec field may take: generous bounds that a typo exceeds.

Types are checked when the YAML is read (:mod:`nrs_cli.io.spec_files`); these are the values of the
right type that nrs still refuses: sizes it cannot hold in memory, counts beyond its 64-bit integers,
learning rates that overflow within a few steps, sigmas outside :data:`SIGMA_BOUNDS`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from nrs_cli.errors import NrsError
from nrs_cli.io.spec_files import short

NAME_LENGTH = 100  # a run name's most characters (it names run folders)
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_LENGTH - 1}}}")
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
RANGES: dict[str, Check] = {
    "name": (
        lambda v: bool(_NAME.fullmatch(v)),
        f"up to {NAME_LENGTH} letters, digits, '.', '_' or '-' (it names run folders)",
    ),
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
    "optimize.n0": _within(1, 2**24, "a number of noise samples per input from 1 to 2^24"),
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
    "inputs.seed": _SEED,
    "inputs.tolerance": (lambda v: 0 < v < 0.5, "an accuracy difference between 0 and 0.5"),
    "inputs.bootstrap": (lambda v: 100 <= v <= 1_000_000, "from 100 to 1,000,000 resamples"),
    "inputs.refine_steps": (lambda v: 0 <= v <= 50, "from 0 to 50 evaluations"),
}


def check_ranges(spec: Any, source: str) -> None:
    """Refuse the first field of ``spec`` (a RunSpec) outside its range, naming it and the file."""
    for dotted, (test, expected) in RANGES.items():
        value = spec
        for part in dotted.split("."):
            value = getattr(value, part)
        if not test(value):
            raise NrsError(f"{source}: {dotted}: expected {expected}, got {short(value)}")
