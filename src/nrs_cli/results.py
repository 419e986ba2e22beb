"""What runs leave behind: manifests, metric tables and result TSVs.

Every output gets a manifest with the resolved spec, seed, package versions
and the content hashes of model and sigma, so a result can be traced to
exactly what produced it.

Result tables (certify, predict) are TSV files with Cohen et al.'s columns
first, so their analysis scripts keep working, then ours. Rows are flushed
as they are produced; a rerun of the same command resumes after the last
complete row.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import statistics
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from nrs_cli.errors import NrsError
from nrs_cli.serialization import atomic_write_text
from nrs_cli.spec import RunSpec

_PACKAGES = ("nrs-cli", "torch", "torchvision", "numpy", "scipy", "typer", "rich", "pyyaml", "pillow", "matplotlib")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(path: str | os.PathLike, kind: str, spec: RunSpec, **fields: Any) -> dict[str, Any]:
    """Write ``manifest.json``-style provenance for one run; returns what was written."""
    manifest = {
        "kind": kind,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "created": _now(),
        "seed": spec.seed,
        "spec_file": spec.source,
        "spec": spec.to_dict(),
        "versions": package_versions(),
        **fields,
    }
    atomic_write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", path)
    return manifest


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


class CsvLog:
    """A CSV table that gains one flushed row at a time (metrics per epoch)."""

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as handle:
            csv.writer(handle).writerow(columns)

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([_cell(row[column]) for column in self.columns])


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _cell(value: Any) -> str:
    """Floats with 10 significant digits: enough to re-derive certificates, the same on every run."""
    return f"{value:.10g}" if isinstance(value, float) else str(value)


CERTIFY_COLUMNS = [
    "idx",
    "label",
    "predict",
    "radius",
    "correct",
    "time",
    "pA_lower",
    "pB_upper",
    "icdf",
    "log_area",
    "gm_radius",
]
PREDICT_COLUMNS = ["idx", "label", "predict", "correct", "time"]


def sidecar(path: str | os.PathLike, kind: str) -> Path:
    """``out.tsv`` -> ``out.manifest.json`` / ``out.summary.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{kind}.json")


class ResultTable:
    """A TSV with one row per input, written row by row, resumable.

    The manifest beside it holds a ``fingerprint``: everything the rows depend
    on (data, model and sigma hashes, sample counts, seed, precision, ...).
    Reopening keeps the complete rows when the fingerprint matches (a
    half-written last line is cut off) and refuses otherwise.
    """

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        self.manifest_path = sidecar(self.path, "manifest")

    def open(self, fingerprint: dict[str, Any], manifest: dict[str, Any], spec: RunSpec, kind: str) -> list[dict]:
        """Create the table, or reopen it to resume; returns the rows already there."""
        rows: list[dict] = []
        resumed: list[str] = []
        if self.path.exists():
            if not self.manifest_path.is_file():
                raise NrsError(
                    f"{self.path} exists but {self.manifest_path.name} does not, so it cannot be resumed "
                    "(delete it or choose another --out)"
                )
            previous = read_json(self.manifest_path)
            old = previous.get("fingerprint", {})
            differ = sorted(key for key in set(old) | set(fingerprint) if old.get(key) != fingerprint.get(key))
            if differ:
                raise NrsError(
                    f"refusing to resume {self.path}: its rows were made with a different "
                    f"{', '.join(differ)} (delete it or choose another --out)"
                )
            rows = self._complete_rows()
            resumed = previous.get("resumed", []) + [_now()]
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w") as handle:
                handle.write("\t".join(self.columns) + "\n")
        write_manifest(self.manifest_path, kind, spec, fingerprint=fingerprint, resumed=resumed, **manifest)
        return rows

    def append(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a") as handle:
            handle.writelines("\t".join(_cell(row[c]) for c in self.columns) + "\n" for row in rows)

    def _complete_rows(self) -> list[dict[str, str]]:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the run was killed in the middle of a line
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
        rows = read_table(self.path)
        header = data[: data.find(b"\n")].decode().split("\t")
        if header != self.columns:
            raise NrsError(f"{self.path} has columns {header}, expected {self.columns}")
        return rows


def shard_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    """``out.tsv`` -> ``out.shard1of4.tsv``: the rows one rank of a distributed run certified."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard{rank}of{world}{path.suffix}")


def write_table(path: str | os.PathLike, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A whole result TSV at once (merging shards), replacing any earlier file atomically."""
    lines = ["\t".join(columns)] + ["\t".join(_cell(row[c]) for c in columns) for row in rows]
    atomic_write_text("\n".join(lines) + "\n", path)


def read_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a result TSV as dicts of strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def summarize_certify(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Certified accuracy, abstentions and certificate sizes of a certify table.

    Means and medians of ``log_area``, ``radius`` and ``gm_radius`` are over
    the inputs certified correctly (the others have no certified region).
    """
    count = len(rows)
    correct = [row for row in rows if row["correct"] == "1"]
    abstained = sum(row["predict"] == "-1" for row in rows)

    def numbers(column):
        return [float(row[column]) for row in correct]

    summary = {
        "inputs": count,
        "certified_accuracy": len(correct) / count if count else math.nan,
        "correct": len(correct),
        "abstained": abstained,
        "wrong": count - len(correct) - abstained,
        "mean_log_area": statistics.fmean(numbers("log_area")) if correct else math.nan,
        "median_radius": statistics.median(numbers("radius")) if correct else math.nan,
        "median_gm_radius": statistics.median(numbers("gm_radius")) if correct else math.nan,
        "mean_time": statistics.fmean(float(row["time"]) for row in rows) if rows else math.nan,
    }
    return summary


def summarize_predict(rows: list[dict[str, str]]) -> dict[str, Any]:
    count = len(rows)
    correct = sum(row["correct"] == "1" for row in rows)
    abstained = sum(row["predict"] == "-1" for row in rows)
    return {
        "inputs": count,
        "accuracy": correct / count if count else math.nan,
        "correct": correct,
        "abstained": abstained,
        "wrong": count - correct - abstained,
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
