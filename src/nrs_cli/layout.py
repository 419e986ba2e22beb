"""Where runs live: default paths and file names under ``RUNS_DIR/<dataset>/``.

::

    runs/<dataset>/base/                 checkpoint.pt, metrics.csv, manifest.json (train-base)
    runs/<dataset>/optimize/<name>/      metrics.csv, sigmas/, state.pt, summary.json (optimize-sigma)
    runs/<dataset>/certify/<tag>_n<n>.tsv   (and predict/), manifest and summary beside it

A sigma's tag in file names is its file's stem, or ``iso-<value>`` for a constant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nrs_cli.errors import NrsError
from nrs_cli.sigma import Sigma, constant_sigma, load_sigma
from nrs_cli.spec import RunSpec

BASE_RUN = "base"
FIGURES_RUN = "figures"


def sigma_tag(sigma: Sigma) -> str:
    """How a sigma is named in result file names."""
    return sigma.label if sigma.source else f"iso-{sigma.label}"


@dataclass(frozen=True)
class RunLayout:
    """The run folders of one dataset."""

    runs_dir: Path
    dataset: str

    @property
    def root(self) -> Path:
        return Path(self.runs_dir) / self.dataset

    def train_dir(self, name: str = BASE_RUN) -> Path:
        return self.root / name

    def checkpoint(self, name: str = BASE_RUN) -> Path:
        return self.train_dir(name) / "checkpoint.pt"

    def sweep_dir(self, name: str) -> Path:
        return self.root / "optimize" / name

    def result_tsv(self, command: str, sigma: Sigma, samples: int) -> Path:
        """Default ``--out`` of certify and predict."""
        return self.root / command / f"{sigma_tag(sigma)}_n{samples}.tsv"

    def figures_tsv(self, sigma: Sigma) -> Path:
        """Where ``nrs figures`` certifies one sigma of Fig. 1."""
        return self.root / "certify" / f"figures-{sigma_tag(sigma)}.tsv"

    def base_checkpoint(self, given: Path | None) -> Path:
        """``--checkpoint``, else the dataset's base classifier, with how to get one when there is none."""
        if given is not None:
            return given
        default = self.checkpoint()
        if not default.is_file():
            raise NrsError(
                f"no base classifier for {self.dataset} at {default}: train one with "
                f"`nrs train-base --dataset {self.dataset} --data-root DIR`, or pass --checkpoint FILE"
            )
        return default

    def latest_sweep_summary(self) -> Path | None:
        """The summary.json of the dataset's most recently finished sweep, if any."""
        summaries = sorted(self.root.glob("optimize/*/summary.json"), key=lambda path: path.stat().st_mtime)
        return summaries[-1] if summaries else None


def best_sigma_file(summary_path: Path) -> Path | None:
    """The sigma file of a sweep's best point: the largest gain at equal accuracy, else the most accurate."""
    try:
        summary = json.loads(summary_path.read_text())
        points = [p for p in summary["anisotropic"] if p.get("sigma_file")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise NrsError(f"cannot read the sweep summary {summary_path} (delete it and rerun optimize-sigma)") from None
    if not points:
        return None
    gained = [p for p in points if isinstance(p.get("gain_at_equal_accuracy"), (int, float))]
    best = (
        max(gained, key=lambda p: p["gain_at_equal_accuracy"])
        if gained
        else max(points, key=lambda p: p.get("accuracy", 0))
    )
    return summary_path.parent / best["sigma_file"]


def default_sigma(spec: RunSpec, layout: RunLayout) -> tuple[Sigma, str]:
    """The sigma `nrs certify` uses without ``--sigma``, and why: the best point of the dataset's latest
    sweep, else the spec's ``certify.sigma``."""
    summary = layout.latest_sweep_summary()
    best = best_sigma_file(summary) if summary is not None else None
    if best is not None:
        return load_sigma(best, spec), f"the best point of the latest sweep ({summary.parent})"
    if spec.certify.sigma is not None:
        return constant_sigma(spec.certify.sigma, spec.data.input_shape), "the spec's certify.sigma"
    raise NrsError(
        f"no sigma given: pass --sigma (a number or a sigma file), run `nrs optimize-sigma --dataset {spec.name}`, "
        "or set certify.sigma in the spec"
    )
