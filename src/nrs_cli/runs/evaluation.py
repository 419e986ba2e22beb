"""Evaluating sigmas on the selection or the report set, each evaluation a resumable certify table.

An evaluation is CERTIFY of one sigma on one network over the first inputs of a set, with given
sample counts and noise seed. Its rows are a certify TSV under
``runs/<dataset>/evaluations/<set>/<network>/``, so an evaluation is done once, survives an
interruption, can be opened like any result, and is refused if anything it depends on changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from nrs_cli.io.data import input_set
from nrs_cli.io.models import load_checkpoint
from nrs_cli.io.spec import RunSpec
from nrs_cli.method.sigma import Sigma
from nrs_cli.method.statistics import Outcomes
from nrs_cli.runs.certification import SmoothedJob, certify_rows

Say = Callable[[str], None]  # where progress lines go


@dataclass(frozen=True)
class Settings:
    """CERTIFY's sample counts and level, and the noise seed."""

    n0: int
    n: int
    alpha: float
    seed: int

    @property
    def tag(self) -> str:
        return f"n0-{self.n0}_n-{self.n}_alpha-{self.alpha:g}_seed-{self.seed}"


@dataclass
class Evaluator:
    """Evaluates (network, sigma) pairs on the first ``count`` inputs of one input set of the test split."""

    spec: RunSpec
    dataset: Dataset  # the test split
    which: str  # "selection" or "report"
    count: int
    folder: Path  # runs/<dataset>/evaluations
    device: torch.device
    say: Say = lambda message: None
    _models: dict[str, nn.Module] = field(default_factory=dict)

    def outcomes(self, checkpoint: str, sigma: Sigma, settings: Settings) -> Outcomes:
        """Per-input results of ``sigma`` on the network in ``checkpoint`` (evaluated now, or read back)."""
        certify = dataclasses.replace(
            self.spec.certify, n0=settings.n0, n=settings.n, alpha=settings.alpha, inputs=self.which,
            max=self.count, skip=1, split="test", bound="one-sided",  # the sweep's bound: one family of points
        )  # fmt: skip
        spec = dataclasses.replace(self.spec, certify=certify, seed=settings.seed)
        out = self.folder / self.which / network_tag(checkpoint) / f"{sigma.tag}_{settings.tag}.tsv"
        if not out.is_file():
            self.say(f"      evaluate sigma {sigma.label} on {self.count} {self.which} inputs ({settings.tag})")
        job = SmoothedJob(spec, self.model(checkpoint), sigma, self.dataset, out, self.device, checkpoint)
        # resumes, or finds every row done (the fingerprint checked either way); a longer evaluation of the
        # same sigma may be there: its first rows are ours
        rows, _ = certify_rows(job)
        return Outcomes.from_rows(rows)

    @property
    def size(self) -> int:
        """How many inputs an evaluation covers (``count``, or the whole set when it holds fewer or count is -1)."""
        return len(input_set(self.dataset, self.which, self.count, self.spec.inputs.seed))

    def model(self, checkpoint: str) -> nn.Module:
        if checkpoint not in self._models:
            self._models[checkpoint] = load_checkpoint(checkpoint, self.spec)[0]
        return self._models[checkpoint]


def network_tag(checkpoint: str) -> str:
    """A network's folder name: its run folder (``base``, ``noise-0.25``), the run and round of a
    co-optimised network (``co-clean_init00-0.25_round03``: two co-optimisations name rounds alike),
    or the file's stem for others."""
    path = Path(checkpoint)
    if path.name == "checkpoint.pt":
        return path.parent.name
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}_{path.stem}"
    return path.stem
