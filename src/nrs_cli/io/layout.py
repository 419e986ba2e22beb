"""Where runs live: default paths and file names under ``RUNS_DIR/<dataset>/``.

::

    runs/<dataset>/base/                 checkpoint.pt, metrics.csv, manifest.json (train-base)
    runs/<dataset>/optimize/<name>/      metrics.csv, sigmas/, state.pt, summary.json (optimize-sigma)
    runs/<dataset>/certify/<tag>_n<n>.tsv   (and predict/), manifest and summary beside it

"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nrs_cli.errors import NrsError

BASE_RUN = "base"
FIGURES_RUN = "figures"


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

    def result_tsv(self, command: str, sigma_tag: str, samples: int) -> Path:
        """Default ``--out`` of certify and predict."""
        return self.root / command / f"{sigma_tag}_n{samples}.tsv"

    def figures_tsv(self, sigma_tag: str) -> Path:
        """Where ``nrs figures`` certifies one sigma of Fig. 1."""
        return self.root / "certify" / f"figures-{sigma_tag}.tsv"

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

    def sweep_summaries(self) -> list[Path]:
        """The summary.json of every finished optimisation run of the dataset, the most recent first."""
        summaries = sorted(self.root.glob("optimize/*/summary.json"), key=lambda path: path.stat().st_mtime)
        return summaries[::-1]
