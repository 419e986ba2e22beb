"""The smoothed classifier and its certificate (paper Theorem 3.1).

``g(x) = argmax_c P(f(x + sigma * z) = c)``, ``z ~ N(0, I)``, with one noise
scale ``sigma_i`` per input element. If ``pA_lower <= P(f(x + eps) = cA)`` and
``pB_upper >= max_{c != cA} P(f(x + eps) = c)`` then ``g(x + delta) = cA`` for
every ``delta`` with

    || delta / sigma ||_2 < R,   R = (Phi^-1(pA_lower) - Phi^-1(pB_upper)) / 2,

and with ``pB_upper = 1 - pA_lower`` simply ``R = Phi^-1(pA_lower)``. The
certified region is the axis-aligned ellipsoid with semi-axes ``sigma_i * R``.
Each certificate reports:

- ``icdf`` = R, the radius in sigma units;
- ``radius`` = ``min_i sigma_i * R``, the largest l2 ball inside the ellipsoid
  (Cohen et al.'s radius when sigma is constant);
- ``log_area`` = ``sum_i log sigma_i + D log R``, the paper's certified-area
  objective O_CA (natural log, the volume constant dropped);
- ``gm_radius`` = ``exp(mean_i log sigma_i) * R``, the radius of the ball with
  the same volume as the ellipsoid.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from scipy.stats import beta, binomtest, norm
from torch import nn
from torch.utils.data import Dataset

from nrs_cli.collective import SINGLE_PROCESS, Collective
from nrs_cli.data import iterate_batches, selected_indices
from nrs_cli.errors import NrsError
from nrs_cli.models import model_digest
from nrs_cli.noise import GaussianNoise
from nrs_cli.results import (
    CERTIFY_COLUMNS,
    PREDICT_COLUMNS,
    ResultTable,
    read_table,
    shard_path,
    sidecar,
    summarize_certify,
    summarize_predict,
    write_manifest,
    write_table,
)
from nrs_cli.sampling import SamplingEngine, build_engine
from nrs_cli.serialization import atomic_write_text
from nrs_cli.sigma import Sigma
from nrs_cli.spec import RunSpec

ABSTAIN = -1
BOUNDS = ("one-sided", "two-sided")


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if successes <= 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def upper_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial proportion."""
    if successes >= trials:
        return 1.0
    return float(beta.ppf(1 - alpha, successes + 1, trials - successes))


def class_bounds(counts: torch.Tensor, top: int, alpha: float, bound: str) -> tuple[float, float | None]:
    """``(pA_lower, pB_upper)`` for class ``top`` from estimation counts, jointly valid w.p. >= 1 - alpha.

    One-sided (Cohen et al.): ``pA_lower`` at level alpha; ``pB_upper`` is None,
    meaning ``1 - pA_lower``. Two-sided: ``pA_lower`` at alpha / 2 and an upper
    bound for every other class at alpha / (2 (C - 1)) (Bonferroni);
    ``pB_upper`` is the largest of those, and never more than ``1 - pA_lower``.
    """
    trials = int(counts.sum())
    if bound == "one-sided":
        return lower_confidence_bound(int(counts[top]), trials, alpha), None
    lower = lower_confidence_bound(int(counts[top]), trials, alpha / 2)
    others = [int(c) for i, c in enumerate(counts.tolist()) if i != top]
    level = alpha / (2 * max(1, len(others)))
    upper = max(upper_confidence_bound(c, trials, level) for c in others)
    return lower, min(upper, 1.0 - lower)


@dataclass(frozen=True)
class Certificate:
    """The outcome of CERTIFY for one input."""

    prediction: int  # cA, or ABSTAIN
    pA_lower: float
    pB_upper: float
    icdf: float  # R in sigma units; 0 when abstaining
    radius: float  # min_i sigma_i * R
    log_area: float  # sum_i log sigma_i + D log R; -inf when abstaining
    gm_radius: float  # exp(mean_i log sigma_i) * R

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


def certificate(prediction: int, pA_lower: float, pB_upper: float | None, sigma: Sigma) -> Certificate:
    """Theorem 3.1 for given probability bounds; abstains when R <= 0.

    ``pB_upper`` None is the one-sided case ``pB_upper = 1 - pA_lower``, where
    ``R = Phi^-1(pA_lower)`` exactly as in Cohen et al.
    """
    if pB_upper is None:
        R, pB_upper = float(norm.ppf(pA_lower)), 1.0 - pA_lower
    else:
        R = (float(norm.ppf(pA_lower)) - float(norm.ppf(pB_upper))) / 2
    if not R > 0:
        return Certificate(ABSTAIN, pA_lower, pB_upper, 0.0, 0.0, -math.inf, 0.0)
    dimension = sigma.values.numel()
    return Certificate(
        prediction=prediction,
        pA_lower=pA_lower,
        pB_upper=pB_upper,
        icdf=R,
        radius=sigma.min * R,
        log_area=sigma.log_sum + dimension * math.log(R),
        gm_radius=math.exp(sigma.log_mean) * R,
    )


def inputs_per_group(chunk_size: int, n0: int, n: int) -> int:
    """How many inputs to certify together: enough for the n0 selection samples to fill a
    forward pass, few enough that results are flushed every few passes of n samples."""
    return max(1, min(chunk_size // n0, 8 * chunk_size // n))


def check_options(n0: int, n: int, alpha: float, bound: str = "one-sided") -> None:
    if n0 < 1 or n < 1:
        raise NrsError(f"n0 and n must be at least 1 (got n0={n0}, n={n})")
    if not 0 < alpha < 1:
        raise NrsError(f"alpha must lie strictly between 0 and 1 (got {alpha})")
    if bound not in BOUNDS:
        raise NrsError(f"unknown bound '{bound}' (use {' or '.join(BOUNDS)})")


class Smooth:
    """A smoothed classifier g with per-element noise scales sigma.

    :param engine: runs the base classifier f on noisy inputs
    :param sigma: noise scales, one per input element (pixel units)
    :param seed: seeds the noise; with the inputs' dataset indices it fixes every draw
    """

    ABSTAIN = ABSTAIN

    def __init__(self, engine: SamplingEngine, sigma: Sigma, seed: int = 0):
        self.engine = engine
        self.sigma = sigma
        self.seed = seed

    def certify(
        self, x: torch.Tensor, indices: list[int], n0: int, n: int, alpha: float, bound: str = "one-sided"
    ) -> list[Certificate]:
        """CERTIFY (Cohen et al., with Theorem 3.1's ellipsoid) for a batch of inputs.

        Draw n0 samples and take the most frequent class cA; draw n fresh
        samples and bound ``P(f(x + eps) = cA)`` from below (and, two-sided,
        the runner-up from above). With probability at least 1 - alpha over the
        samples, a returned class equals g(x) and g is constant on the ellipsoid
        ``|| delta / sigma || < R``; otherwise the certificate abstains.
        """
        check_options(n0, n, alpha, bound)
        selection = self.sample(x, indices, n0, "selection")
        estimation = self.sample(x, indices, n, "estimation")
        certificates = []
        for counts_selection, counts_estimation in zip(selection, estimation):
            top = int(counts_selection.argmax())
            pA_lower, pB_upper = class_bounds(counts_estimation, top, alpha, bound)
            certificates.append(certificate(top, pA_lower, pB_upper, self.sigma))
        return certificates

    def predict(self, x: torch.Tensor, indices: list[int], n: int, alpha: float) -> list[int]:
        """PREDICT (Cohen et al.): the top class if a two-sided binomial test against the
        runner-up rejects equality at level alpha, else ABSTAIN. With probability at
        least 1 - alpha a returned class equals g(x)."""
        check_options(1, n, alpha)
        predictions = []
        for counts in self.sample(x, indices, n, "predict"):
            top2 = counts.argsort(descending=True, stable=True)[:2].tolist()
            count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
            significant = binomtest(count1, count1 + count2, p=0.5).pvalue <= alpha
            predictions.append(top2[0] if significant else ABSTAIN)
        return predictions

    def sample(self, x: torch.Tensor, indices: list[int], num: int, phase: str) -> torch.Tensor:
        """Class counts ``(B, C)`` of ``f(x + sigma * z)`` over ``num`` samples per input."""
        return self.engine.count(x, indices, self.sigma.values, num, GaussianNoise(self.seed, phase))


def _fingerprint(spec: RunSpec, model: nn.Module, sigma: Sigma, device: torch.device, **options) -> dict:
    """Everything a result row depends on (and nothing it does not, like chunk sizes)."""
    return {
        "data_sha256": spec.digest("data"),
        "model_sha256": model_digest(model),
        "sigma_sha256": sigma.digest,
        "seed": spec.seed,
        "precision": spec.engine.precision,
        "device_type": device.type,
        "split": spec.certify.split,
        "skip": spec.certify.skip,
        **options,
    }


def _run_table(
    kind: str,
    columns: list[str],
    spec: RunSpec,
    model: nn.Module,
    sigma: Sigma,
    dataset: Dataset,
    out: str | Path,
    device: torch.device,
    fingerprint_options: dict,
    selection_samples: int,
    samples_per_input: int,
    evaluate: Callable[[Smooth, torch.Tensor, list[int]], list[dict]],
    manifest: dict,
    on_rows: Callable[[int, int], None] | None,
    collective: Collective,
) -> tuple[list[dict], float]:
    """The loop shared by certify and predict: resume, evaluate in groups, flush rows.

    In a distributed run rank r takes every world-th selected input, starting
    at the r-th, into its own resumable shard file; rank 0 then merges the
    shards in index order into ``out``, the file a single process writes.
    """
    wanted = selected_indices(len(dataset), spec.certify.skip, spec.certify.max)
    fingerprint = _fingerprint(spec, model, sigma, device, **fingerprint_options)
    engine = build_engine(model, spec, device)
    manifest = {
        "sigma": {
            "label": sigma.label,
            "file": sigma.source,
            "sha256": sigma.digest,
            **_plain_metadata(sigma.metadata),
        },
        "device": str(device),
        "chunk_size": engine.chunk_size,
        "world_size": collective.world,
        **manifest,
    }
    rank, world = collective.rank, collective.world
    mine = wanted[rank::world]
    table = ResultTable(out if world == 1 else shard_path(out, rank, world), columns)
    done = table.open({**fingerprint, **({"shard": f"{rank} of {world}"} if world > 1 else {})}, manifest, spec, kind)
    if [int(row["idx"]) for row in done] != mine[: len(done)]:
        raise NrsError(f"{table.path}: its rows are not the first inputs of this selection (delete it to start over)")
    smooth = Smooth(engine, sigma, spec.seed)
    group = inputs_per_group(engine.chunk_size, selection_samples, samples_per_input)
    started, processed = time.perf_counter(), 0
    for indices, images, labels in iterate_batches(dataset, mine[len(done) :], group, spec.data.workers):
        tick = time.perf_counter()
        rows = evaluate(smooth, images, indices)
        per_input = (time.perf_counter() - tick) / len(indices)
        for row, index, label in zip(rows, indices, labels.tolist()):
            row.update(idx=index, label=label, correct=int(row["predict"] == label), time=f"{per_input:.4f}")
        table.append(rows)
        processed += len(indices)
        if on_rows:
            on_rows(len(done) + processed, len(mine))
    work = collective.gather([(processed * samples_per_input, time.perf_counter() - started)])
    samples, elapsed = sum(s for s, _ in work), max(seconds for _, seconds in work)
    throughput = samples / elapsed if samples and elapsed > 0 else math.nan
    if world > 1:
        collective.barrier()  # every shard is complete
        if collective.is_main:
            position = {index: k for k, index in enumerate(wanted)}
            merged = [
                row
                for r in range(world)
                for row in read_table(shard_path(out, r, world))
                if int(row["idx"]) in position
            ]
            write_table(out, columns, sorted(merged, key=lambda row: position[int(row["idx"])]))
            write_manifest(sidecar(out, "manifest"), kind, spec, fingerprint=fingerprint, resumed=[], **manifest)
        collective.barrier()
    return (read_table(out) if collective.is_main else []), throughput


def certify_run(
    spec: RunSpec,
    model: nn.Module,
    sigma: Sigma,
    dataset: Dataset,
    out: str | Path,
    device: torch.device,
    checkpoint: str = "",
    on_rows: Callable[[int, int], None] | None = None,
    collective: Collective = SINGLE_PROCESS,
) -> dict:
    """CERTIFY every selected input of a split into a TSV (resumable) and a summary JSON.

    Options come from ``spec.certify`` (n0, n, alpha, bound, split, skip, max),
    the noise seed from ``spec.seed``, precision and chunking from ``spec.engine``.
    """
    options = spec.certify
    check_options(options.n0, options.n, options.alpha, options.bound)

    def evaluate(smooth: Smooth, images: torch.Tensor, indices: list[int]) -> list[dict]:
        certificates = smooth.certify(images, indices, options.n0, options.n, options.alpha, options.bound)
        return [
            {
                "predict": c.prediction,
                "radius": c.radius,
                "pA_lower": c.pA_lower,
                "pB_upper": c.pB_upper,
                "icdf": c.icdf,
                "log_area": c.log_area,
                "gm_radius": c.gm_radius,
            }
            for c in certificates
        ]

    fingerprint = {"n0": options.n0, "n": options.n, "alpha": options.alpha, "bound": options.bound}
    manifest = {"checkpoint": checkpoint, **fingerprint}
    rows, throughput = _run_table(
        "certify",
        CERTIFY_COLUMNS,
        spec,
        model,
        sigma,
        dataset,
        out,
        device,
        fingerprint,
        options.n0,
        options.n0 + options.n,
        evaluate,
        manifest,
        on_rows,
        collective,
    )
    if not collective.is_main:
        return {}
    summary = {
        **summarize_certify(rows),
        "samples_per_second": throughput,
        "sigma": sigma.label,
        "dimension": sigma.values.numel(),
        **fingerprint,
    }
    return _write_summary(out, summary)


def predict_run(
    spec: RunSpec,
    model: nn.Module,
    sigma: Sigma,
    dataset: Dataset,
    out: str | Path,
    device: torch.device,
    checkpoint: str = "",
    on_rows: Callable[[int, int], None] | None = None,
    collective: Collective = SINGLE_PROCESS,
) -> dict:
    """PREDICT every selected input (n and alpha from ``spec.certify``) into a TSV and summary."""
    options = spec.certify
    check_options(1, options.n, options.alpha)

    def evaluate(smooth: Smooth, images: torch.Tensor, indices: list[int]) -> list[dict]:
        return [{"predict": p} for p in smooth.predict(images, indices, options.n, options.alpha)]

    fingerprint = {"n": options.n, "alpha": options.alpha}
    rows, throughput = _run_table(
        "predict",
        PREDICT_COLUMNS,
        spec,
        model,
        sigma,
        dataset,
        out,
        device,
        fingerprint,
        options.n,
        options.n,
        evaluate,
        {"checkpoint": checkpoint, **fingerprint},
        on_rows,
        collective,
    )
    if not collective.is_main:
        return {}
    summary = {**summarize_predict(rows), "samples_per_second": throughput, "sigma": sigma.label, **fingerprint}
    return _write_summary(out, summary)


def _write_summary(out: str | Path, summary: dict) -> dict:
    """Save the summary beside the TSV; a rerun with no rows left to do keeps the throughput measured before."""
    path = sidecar(out, "summary")
    if math.isnan(summary["samples_per_second"]) and path.is_file():
        try:
            previous = json.loads(path.read_text()).get("samples_per_second")
        except (ValueError, AttributeError):
            previous = None
        if isinstance(previous, (int, float)):
            summary["samples_per_second"] = previous
    atomic_write_text(json.dumps(summary, indent=2) + "\n", path)
    return summary


def _plain_metadata(metadata: dict) -> dict:
    """Sigma metadata that JSON can hold (tensors and the like are left out)."""
    return {key: value for key, value in metadata.items() if isinstance(value, (str, int, float, bool, list))}
