"""Optimizing sigma: paper Algorithm 1, and the evaluation of a sigma with CERTIFY.

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

A sigma is evaluated with the real CERTIFY statistics on test inputs
(:func:`evaluate_sigma`); the sweep of the paper's Fig. 2 (:mod:`nrs_cli.runs.sweep`)
puts these parts together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import Dataset

from nrs_cli.io.collective import SINGLE_PROCESS, Collective
from nrs_cli.io.data import iterate_batches
from nrs_cli.io.spec import OptimizeSpec, RunSpec
from nrs_cli.method.certificate import CertifiedSummary, inputs_per_group, lower_confidence_bound
from nrs_cli.method.noise import GaussianNoise
from nrs_cli.method.sampling import SamplingEngine
from nrs_cli.method.sigma import SIGMA_BOUNDS, Sigma
from nrs_cli.method.smooth import Smooth

P_HAT_RANGE = (0.5 + 1e-6, 1 - 1e-7)  # Phi^-1 is positive and finite inside


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
    batch: tuple[torch.Tensor, torch.Tensor, list[int]],
    n0: int,
    noise: GaussianNoise,
    collective: Collective = SINGLE_PROCESS,
    p_hat_max: float = P_HAT_RANGE[1],
) -> StepResult:
    """One gradient step of Algorithm 1 on this process's share ``(images, labels, indices)`` of a global batch.

    The loss is written as per-process sums so that all-reducing the
    gradient gives exactly the single-process gradient of the global batch:
    ``loss = -(D sum_{i right} log Phi^-1(p_hat_i)) / N_right - sum_k log sigma_k / world``.
    ``p_hat`` is clamped into ``(1/2, p_hat_max]``.
    """
    images, labels, indices = batch
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
    return StepResult(float(loss_total), -float(loss_total), right_total, total)


def evaluate_sigma(
    engine: SamplingEngine,
    sigma: Sigma,
    dataset: Dataset,
    indices: list[int],
    spec: RunSpec,
    collective: Collective = SINGLE_PROCESS,
    on_inputs: Callable[[int, int], None] | None = None,
) -> CertifiedSummary:
    """CERTIFY the given test inputs with the spec's evaluation settings (each process its share) and summarise.

    ``optimize.eval_n0``, ``eval_n`` and ``eval_alpha`` set the samples and level; ``seed`` the noise.
    ``on_inputs(done, total)`` follows this process's share, for progress bars.
    """
    o = spec.optimize
    mine = indices[collective.rank :: collective.world]
    smooth = Smooth.from_engine(engine, sigma, spec.seed)
    group = inputs_per_group(engine.chunk_size, o.eval_n0, o.eval_n)
    outcomes: list[tuple[bool, float, float, float]] = []
    for batch, images, labels in iterate_batches(dataset, mine, group):
        for cert, label in zip(
            smooth.certify(images, o.eval_n0, o.eval_n, o.eval_alpha, indices=batch), labels.tolist()
        ):
            outcomes.append((cert.prediction == label, cert.log_area, cert.radius, cert.gm_radius))
        if on_inputs:
            on_inputs(len(outcomes), len(mine))
    return CertifiedSummary.of(collective.gather(outcomes))


def p_hat_ceiling(o: OptimizeSpec) -> float:
    """Upper clamp of p_hat: with ``cap_p_hat`` the evaluation's largest p_A bound ``alpha^(1/n)``, else below 1."""
    return lower_confidence_bound(o.eval_n, o.eval_n, o.eval_alpha) if o.cap_p_hat else P_HAT_RANGE[1]
