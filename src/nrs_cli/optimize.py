"""Optimising sigma (paper Algorithm 1) and the sweep behind the paper's Fig. 2.

Algorithm 1. For a batch of training inputs x_i with labels c_i, draw n0
reparameterised samples ``x_i + sigma * z_ij`` and form the surrogate

    p_hat_i = 1/n0 sum_j softmax(f(x_i + sigma * z_ij))[c_i].

Over the inputs whose vote is right (``g(x_i) = c_i``, majority of the same
samples) maximise the certified-area objective

    O_CA = sum_k log sigma_k + D mean_i log Phi^-1(p_hat_i),

with ``p_hat`` clamped into (1/2, 1) first. With ``cap_p_hat`` the upper
clamp is instead the largest p_A lower bound the evaluation's CERTIFY can give,
``alpha^(1/n)`` (all n votes right): an input already that sure cannot certify
more, so its term stops holding sigma down. The base network is frozen; only
sigma moves. We optimise ``theta = log sigma`` with Adam: sigma stays strictly
positive without the kink of the paper's ``|sigma|`` at zero, Adam's steps
become relative changes of sigma, and the ``sum log sigma`` term is linear in
theta. After every step theta is clamped to ``log(SIGMA_BOUNDS)`` so sigma stays
finite whatever the learning rate.

The sweep re-initialises sigma to each constant ``init, init + init_step,
...``, optimises it for ``sub_epochs`` rounds of ``steps_per_sub_epoch`` steps
(learning rate times ``lr_decay`` after each round) and evaluates it after
every round with the real CERTIFY statistics on a test subset. The isotropic
baseline is the same evaluation of constant sigmas. Every round is one
clean-accuracy / certified-area point of Fig. 2.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from nrs_cli.certify import Smooth, check_options, inputs_per_group, lower_confidence_bound
from nrs_cli.collective import SINGLE_PROCESS, Collective
from nrs_cli.data import iterate_batches, selected_indices
from nrs_cli.errors import NrsError
from nrs_cli.models import model_digest
from nrs_cli.noise import GaussianNoise, block_seed
from nrs_cli.results import read_csv, write_manifest
from nrs_cli.sampling import SamplingEngine, build_engine
from nrs_cli.serialization import atomic_torch_save, atomic_write_text, load_weights_only
from nrs_cli.sigma import Sigma, constant_sigma, save_sigma
from nrs_cli.spec import OptimizeSpec, RunSpec

SIGMA_BOUNDS = (1e-6, 1e3)  # pixel units; far beyond any useful noise on [0, 1] images
P_HAT_RANGE = (0.5 + 1e-6, 1 - 1e-7)  # Phi^-1 is positive and finite inside

METRIC_COLUMNS = [
    "method",
    "init",
    "sub_epoch",
    "step",
    "lr",
    "train_loss",
    "train_objective",
    "accuracy",
    "mean_log_area",
    "median_radius",
    "median_gm_radius",
    "sigma_mean",
    "sigma_std",
    "sigma_min",
    "sigma_max",
    "gm_sigma",
    "seconds",
    "sigma_file",
]


@dataclass(frozen=True)
class StepResult:
    loss: float
    objective: float  # O_CA with the surrogate p_hat, mean over the right inputs (nan if none)
    right: int  # inputs of the global batch whose vote was right
    total: int


def algorithm1_step(
    engine: SamplingEngine,
    log_sigma: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: list[int],
    n0: int,
    noise: GaussianNoise,
    collective: Collective = SINGLE_PROCESS,
    p_hat_max: float = P_HAT_RANGE[1],
) -> StepResult:
    """One gradient step of Algorithm 1 on this process's share of a global batch.

    The loss is written as per-process sums so that all-reducing the
    gradient gives exactly the single-process gradient of the global batch:
    ``loss = -(D sum_{i right} log Phi^-1(p_hat_i)) / N_right - sum_k log sigma_k / world``.
    ``p_hat`` is clamped into ``(1/2, p_hat_max]``.
    """
    dimension = log_sigma.numel()
    p_hat, counts = engine.mean_softmax(images, labels, indices, log_sigma.exp(), n0, noise)
    right = counts.argmax(1) == labels.to(counts.device)
    tallies = collective.sum_(torch.tensor([float(right.sum()), float(len(indices))], device=counts.device))
    right_total, total = int(tallies[0]), int(tallies[1])
    optimizer.zero_grad(set_to_none=True)
    if right_total == 0:  # nothing to certify in this batch: no step
        return StepResult(math.nan, math.nan, 0, total)
    radii = torch.special.ndtri(p_hat.double().clamp(P_HAT_RANGE[0], p_hat_max))
    area_terms = dimension * radii.log()[right].sum()
    loss = -area_terms / right_total - log_sigma.double().sum() / collective.world
    loss.backward()
    collective.sum_(log_sigma.grad)
    if torch.isfinite(log_sigma.grad).all():  # a non-finite gradient (bf16 overflow) skips the step
        optimizer.step()
    with torch.no_grad():
        log_sigma.clamp_(math.log(SIGMA_BOUNDS[0]), math.log(SIGMA_BOUNDS[1]))
    loss_total = collective.sum_(loss.detach().reshape(1))
    objective = -float(loss_total)
    return StepResult(float(loss_total), objective, right_total, total)


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # fraction of inputs certified with the right class
    mean_log_area: float  # over those inputs
    median_radius: float
    median_gm_radius: float


def evaluate_sigma(
    engine: SamplingEngine,
    sigma: Sigma,
    dataset: Dataset,
    indices: list[int],
    n0: int,
    n: int,
    alpha: float,
    seed: int,
    collective: Collective = SINGLE_PROCESS,
) -> Evaluation:
    """CERTIFY the given test inputs (each process its share) and summarise."""
    mine = indices[collective.rank :: collective.world]
    smooth = Smooth(engine, sigma, seed)
    group = inputs_per_group(engine.chunk_size, n0, n)
    outcomes: list[tuple[bool, float, float, float]] = []
    for batch, images, labels in iterate_batches(dataset, mine, group):
        for cert, label in zip(smooth.certify(images, batch, n0, n, alpha), labels.tolist()):
            outcomes.append((cert.prediction == label, cert.log_area, cert.radius, cert.gm_radius))
    outcomes = collective.gather(outcomes)
    right = [o for o in outcomes if o[0]]
    if not right:
        return Evaluation(0.0, math.nan, math.nan, math.nan)
    return Evaluation(
        accuracy=len(right) / len(outcomes),
        mean_log_area=statistics.fmean(o[1] for o in right),
        median_radius=statistics.median(o[2] for o in right),
        median_gm_radius=statistics.median(o[3] for o in right),
    )


def batch_stream(size: int, batch_size: int, seed: int, init_index: int, step: int) -> list[int]:
    """Dataset indices of global batch ``step`` for sweep point ``init_index``.

    The stream is a concatenation of seeded permutations of the training
    set, one per pass, so batch ``step`` is the same whatever happened before
    (resume) and whoever computes it (every rank of a distributed run).
    """
    start, stop = step * batch_size, (step + 1) * batch_size
    indices: list[int] = []
    for epoch in range(start // size, (stop - 1) // size + 1):
        generator = torch.Generator().manual_seed(block_seed(seed, f"stream/{init_index}", 0, epoch))
        order = torch.randperm(size, generator=generator).tolist()
        lo, hi = max(start - epoch * size, 0), min(stop - epoch * size, size)
        indices += order[lo:hi]
    return indices


def sweep_constants(spec: RunSpec) -> list[float]:
    """The constants sigma is initialised to: init, init + init_step, ..."""
    o = spec.optimize
    return [round(o.init + k * o.init_step, 10) for k in range(o.inits)]


def baseline_constants(spec: RunSpec) -> list[float]:
    """Isotropic baseline constants: the sweep's range every baseline_step (default init_step)."""
    o = spec.optimize
    step = o.baseline_step or o.init_step
    last = sweep_constants(spec)[-1]
    count = int(math.floor((last - o.init) / step + 1e-9)) + 1 if step > 0 else 1
    return [round(o.init + k * step, 10) for k in range(count)]


def p_hat_ceiling(o: OptimizeSpec) -> float:
    """Upper clamp of p_hat: with ``cap_p_hat`` the evaluation's largest p_A bound ``alpha^(1/n)``, else below 1."""
    return lower_confidence_bound(o.eval_n, o.eval_n, o.eval_alpha) if o.cap_p_hat else P_HAT_RANGE[1]


def _check(spec: RunSpec) -> None:
    o = spec.optimize
    check_options(o.eval_n0, o.eval_n, o.eval_alpha)
    if o.inits < 1 or o.sub_epochs < 1 or o.batch_size < 1 or o.n0 < 1:
        raise NrsError("optimize: inits, sub_epochs, batch_size and n0 must be at least 1")
    if o.init <= 0 or o.init + (o.inits - 1) * o.init_step <= 0:
        raise NrsError(f"optimize: every initial sigma must be positive (init {o.init}, step {o.init_step})")
    if o.baseline_step is not None and o.baseline_step <= 0:
        raise NrsError(f"optimize: baseline_step must be positive (got {o.baseline_step})")
    if p_hat_ceiling(o) <= P_HAT_RANGE[0]:  # only a cap can be this low
        raise NrsError(
            f"optimize: cap_p_hat needs an evaluation that can certify: alpha^(1/n) = "
            f"{o.eval_alpha}^(1/{o.eval_n}) is not above 1/2 (raise eval_n)"
        )
    if o.lr <= 0 or o.lr_decay <= 0 or o.steps_per_sub_epoch < 0:
        raise NrsError("optimize: lr and lr_decay must be positive and steps_per_sub_epoch >= 0")


def _sigma_stats(values: torch.Tensor) -> dict[str, float]:
    values = values.double()
    return {
        "sigma_mean": float(values.mean()),
        "sigma_std": float(values.std()) if values.numel() > 1 else 0.0,
        "sigma_min": float(values.min()),
        "sigma_max": float(values.max()),
        "gm_sigma": float(values.log().mean().exp()),
    }


@dataclass(frozen=True)
class SweepResult:
    run_dir: Path
    rows: list[dict[str, Any]]


def sweep_run(
    spec: RunSpec,
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    run_dir: str | Path,
    device: torch.device,
    checkpoint: str = "",
    collective: Collective = SINGLE_PROCESS,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """The whole sweep with its isotropic baseline, resumable, into ``run_dir``.

    Writes ``metrics.csv`` (a row per evaluation), ``sigmas/*.pt`` (sigma after
    every sub-epoch), ``state.pt`` (where to resume) and ``manifest.json``.
    Rerunning the same command continues after the last finished sub-epoch;
    a run made with another spec, model or data is refused.
    """
    _check(spec)
    o = spec.optimize
    run_dir = Path(run_dir)
    engine = build_engine(model, spec, device)
    eval_indices = selected_indices(len(test_set), 1, o.eval_max)
    steps = o.steps_per_sub_epoch or math.ceil(len(train_set) / o.batch_size)
    p_hat_max = p_hat_ceiling(o)
    fingerprint = {
        "spec_sha256": spec.digest("data", "optimize", "seed"),
        "precision": spec.engine.precision,
        "device_type": device.type,
        "model_sha256": model_digest(model),
        "train_size": len(train_set),
        "test_size": len(test_set),
    }
    state = _load_state(run_dir, fingerprint)
    emit = on_event or (lambda event: None)

    def save(state: dict[str, Any]) -> None:
        if collective.is_main:
            atomic_torch_save(state, run_dir / "state.pt")
            _write_metrics(run_dir / "metrics.csv", state["rows"])
        collective.barrier()

    if collective.is_main and state["position"] == [0, 0] and not state["rows"]:
        write_manifest(
            run_dir / "manifest.json",
            "optimize-sigma",
            spec,
            fingerprint=fingerprint,
            checkpoint=checkpoint,
            device=str(device),
            chunk_size=engine.chunk_size,
            world_size=collective.world,
        )

    def evaluate(sigma: Sigma) -> Evaluation:
        return evaluate_sigma(
            engine, sigma, test_set, eval_indices, o.eval_n0, o.eval_n, o.eval_alpha, spec.seed, collective
        )

    if o.baseline and not state["baseline_done"]:
        for constant in baseline_constants(spec):
            if any(r["method"] == "isotropic" and r["init"] == constant for r in state["rows"]):
                continue
            started = time.perf_counter()
            sigma = constant_sigma(constant, spec.data.input_shape)
            result = evaluate(sigma)
            row = _row("isotropic", constant, 0, 0, math.nan, None, result, sigma.values, started, "")
            state["rows"].append(row)
            save(state)
            emit({"kind": "evaluation", **row})
        state["baseline_done"] = True
        save(state)

    constants = sweep_constants(spec)
    init_index, done_rounds = state["position"]
    while init_index < len(constants):
        constant = constants[init_index]
        log_sigma = torch.full(spec.data.input_shape, math.log(constant), device=device, dtype=torch.float32)
        if done_rounds:
            log_sigma.copy_(state["log_sigma"].to(device))
        log_sigma.requires_grad_(True)
        optimizer = torch.optim.Adam([log_sigma], lr=o.lr * o.lr_decay**done_rounds)
        if done_rounds:
            optimizer.load_state_dict(state["optimizer"])
        for round_ in range(done_rounds + 1, o.sub_epochs + 1):
            started = time.perf_counter()
            losses, objectives = [], []
            for step in range((round_ - 1) * steps, round_ * steps):
                indices = batch_stream(len(train_set), o.batch_size, spec.seed, init_index, step)
                mine = indices[collective.rank :: collective.world]
                images, labels = _stack(train_set, mine)
                noise = GaussianNoise(spec.seed, f"optimize/{init_index}/{step}")
                result = algorithm1_step(
                    engine, log_sigma, optimizer, images, labels, mine, o.n0, noise, collective, p_hat_max
                )
                losses.append(result.loss)
                objectives.append(result.objective)
                emit(
                    {
                        "kind": "step",
                        "init": constant,
                        "sub_epoch": round_,
                        "step": step + 1,
                        "steps": o.sub_epochs * steps,
                        "loss": result.loss,
                        "right": result.right / result.total,
                        **_sigma_stats(log_sigma.detach().exp()),
                    }
                )
            lr = optimizer.param_groups[0]["lr"]
            for group in optimizer.param_groups:
                group["lr"] *= o.lr_decay
            values = log_sigma.detach().exp().cpu()
            sigma_file = Path("sigmas") / f"init{init_index:02d}-{constant:g}_sub{round_:02d}.pt"
            sigma = Sigma(values, sigma_file.stem, {"method": "anisotropic", "init": constant})
            evaluation = evaluate(sigma)
            train = [v for v in losses if math.isfinite(v)], [v for v in objectives if math.isfinite(v)]
            row = _row(
                "anisotropic", constant, round_, round_ * steps, lr, train, evaluation, values, started, str(sigma_file)
            )
            if collective.is_main:
                save_sigma(
                    run_dir / sigma_file,
                    values,
                    spec,
                    method="anisotropic",
                    init=constant,
                    sub_epoch=round_,
                    step=round_ * steps,
                    accuracy=evaluation.accuracy,
                    mean_log_area=evaluation.mean_log_area,
                    checkpoint=checkpoint,
                )
            state["rows"].append(row)
            state.update(
                position=[init_index, round_],
                log_sigma=log_sigma.detach().cpu().clone(),
                optimizer=optimizer.state_dict(),
            )
            save(state)
            emit({"kind": "evaluation", **row})
        init_index, done_rounds = init_index + 1, 0
        state.update(position=[init_index, 0], log_sigma=None, optimizer=None)
        save(state)
    if collective.is_main:
        atomic_write_text(json.dumps(compare_to_isotropic(state["rows"]), indent=2) + "\n", run_dir / "summary.json")
    return SweepResult(run_dir, state["rows"])


def _stack(dataset: Dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def _row(method, constant, round_, step, lr, train, evaluation: Evaluation, values, started, sigma_file) -> dict:
    losses, objectives = train if train else ([], [])
    return {
        "method": method,
        "init": constant,
        "sub_epoch": round_,
        "step": step,
        "lr": lr,
        "train_loss": statistics.fmean(losses) if losses else math.nan,
        "train_objective": statistics.fmean(objectives) if objectives else math.nan,
        "accuracy": evaluation.accuracy,
        "mean_log_area": evaluation.mean_log_area,
        "median_radius": evaluation.median_radius,
        "median_gm_radius": evaluation.median_gm_radius,
        **_sigma_stats(values),
        "seconds": time.perf_counter() - started,
        "sigma_file": sigma_file,
    }


def _load_state(run_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    path = run_dir / "state.pt"
    if not path.is_file():
        return {
            "fingerprint": fingerprint,
            "position": [0, 0],
            "baseline_done": False,
            "rows": [],
            "log_sigma": None,
            "optimizer": None,
        }
    state = load_weights_only(path, "sweep state")
    old = state.get("fingerprint", {})
    differ = sorted(key for key in set(old) | set(fingerprint) if old.get(key) != fingerprint.get(key))
    if differ:
        raise NrsError(
            f"refusing to resume {run_dir}: it was made with a different {', '.join(differ)} "
            "(delete it or choose another --name)"
        )
    return state


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(METRIC_COLUMNS)]
    for row in rows:
        lines.append(",".join(_csv_cell(row[column]) for column in METRIC_COLUMNS))
    atomic_write_text("\n".join(lines) + "\n", path)


def _csv_cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return str(value)


def compare_to_isotropic(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Certified-area gain of every anisotropic point over the isotropic curve at equal accuracy.

    The isotropic curve is mean log_area as a function of accuracy, linear
    between the points of its Pareto front: on a fine grid two isotropic sigmas
    can share an accuracy (the smaller certifying less), and a large sigma can
    lose both accuracy and area to a smaller one; neither is "the isotropic
    sigma with that accuracy". A point outside the front's accuracy range gets
    no interpolated gain. ``nearest_isotropic`` is the closest front point
    within one accuracy point, if any, with its own gain.
    """
    measured = [
        (float(r["accuracy"]), float(r["mean_log_area"]))
        for r in rows
        if r["method"] == "isotropic" and _finite(r["mean_log_area"])
    ]
    iso = [measured[i] for i in reversed(pareto_front(measured))]  # by increasing accuracy
    points = []
    for r in rows:
        if r["method"] != "anisotropic" or not _finite(r["mean_log_area"]):
            continue
        accuracy, area = float(r["accuracy"]), float(r["mean_log_area"])
        interpolated = _interpolate(iso, accuracy)
        near = [p for p in iso if abs(p[0] - accuracy) <= 0.01 + 1e-9]  # one point, whatever the float error
        nearest = min(near, key=lambda p: abs(p[0] - accuracy)) if near else None
        points.append(
            {
                "init": r["init"],
                "sub_epoch": r["sub_epoch"],
                "accuracy": accuracy,
                "mean_log_area": area,
                "gain_at_equal_accuracy": area - interpolated if interpolated is not None else None,
                "nearest_isotropic": None
                if nearest is None
                else {"accuracy": nearest[0], "mean_log_area": nearest[1], "gain": area - nearest[1]},
                "sigma_file": r["sigma_file"],
            }
        )
    gains = [p["gain_at_equal_accuracy"] for p in points if p["gain_at_equal_accuracy"] is not None]
    return {
        "isotropic": [{"accuracy": a, "mean_log_area": m} for a, m in iso],
        "anisotropic": points,
        "max_gain_at_equal_accuracy": max(gains) if gains else None,
    }


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (accuracy, mean log_area) points no other point matches or beats on both.

    Most accurate first, so the areas increase along the list; identical
    points are all kept.
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front: list[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1] or points[i] == points[front[-1]]:
            front.append(i)
    return front


def _interpolate(curve: list[tuple[float, float]], x: float) -> float | None:
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if curve and curve[0][0] == x:
        return curve[0][1]
    return None


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a sweep's metrics.csv, numbers as floats (empty cells as nan)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise NrsError(f"{run_dir} is not an optimize-sigma run (no metrics.csv)")
    rows = []
    for raw in read_csv(path):
        row: dict[str, Any] = dict(raw)
        for column in METRIC_COLUMNS:
            if column not in ("method", "sigma_file"):
                row[column] = float(raw[column]) if raw[column] != "" else math.nan
        row["sub_epoch"], row["step"] = int(row["sub_epoch"]), int(row["step"])
        rows.append(row)
    return rows
