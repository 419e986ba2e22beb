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
import math
import os
import platform
import re
import statistics
import sys
import zlib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from nrs_cli.errors import NrsError
from nrs_cli.serialization import OutputLock, atomic_write_text, read_json, write_json
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
    write_json(manifest, path)
    return manifest


def format_cell(value: Any) -> str:
    """One cell of a TSV or CSV: floats with 10 significant digits (enough to re-derive a certificate,
    the same on every run), a missing number (NaN) as an empty cell."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return str(value)


def check_fingerprint(path: str | os.PathLike, recorded: Any, current: dict[str, Any], remedy: str) -> None:
    """Refuse to resume ``path`` when anything its results depend on has changed."""
    if not isinstance(recorded, dict):
        raise NrsError(f"refusing to resume {path}: nothing records what it was made with ({remedy})")
    differ = sorted(key for key in set(recorded) | set(current) if recorded.get(key) != current.get(key))
    if differ:
        raise NrsError(f"refusing to resume {path}: it was made with a different {', '.join(differ)} ({remedy})")


def write_csv(path: str | os.PathLike, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A whole CSV table at once, replacing any earlier file atomically."""
    lines = [",".join(columns)] + [",".join(format_cell(row[column]) for column in columns) for row in rows]
    atomic_write_text("\n".join(lines) + "\n", path)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


CERTIFY_COLUMNS = [
    "idx", "label", "predict", "radius", "correct", "time", "pA_lower", "pB_upper", "icdf", "log_area", "gm_radius",
    "crc32",
]  # fmt: skip
PREDICT_COLUMNS = ["idx", "label", "predict", "correct", "time", "crc32"]
CHECKSUM = "crc32"  # the last column: a CRC-32 of the row's other cells, so a damaged row is never trusted
# metrics.csv of a sweep: one row per evaluation of a sigma
SWEEP_COLUMNS = [
    "method", "init", "sub_epoch", "step", "lr", "train_loss", "train_objective", "accuracy", "mean_log_area",
    "median_radius", "median_gm_radius", "sigma_mean", "sigma_std", "sigma_min", "sigma_max", "gm_sigma",
    "seconds", "sigma_file",
]  # fmt: skip
_SWEEP_TEXT = ("method", "sigma_file")
_SWEEP_INTEGERS = ("sub_epoch", "step")


# Tables nrs reads: certify and predict, and the same without the checksum (written before it existed).
_KNOWN_HEADERS = [CERTIFY_COLUMNS, PREDICT_COLUMNS, CERTIFY_COLUMNS[:-1], PREDICT_COLUMNS[:-1]]


def _finite(low: float = -math.inf, high: float = math.inf):
    return lambda value: math.isfinite(value) and low <= value <= high


# What a result cell may hold: column -> (type, test, what is expected).
_CELLS: dict[str, tuple[type, Any, str]] = {
    "idx": (int, lambda v: v >= 0, "an input index"),
    "label": (int, lambda v: v >= 0, "a class"),
    "predict": (int, lambda v: v >= -1, "a class or -1"),
    "correct": (int, lambda v: v in (0, 1), "0 or 1"),
    "time": (float, _finite(0), "seconds"),
    "radius": (float, _finite(0), "a radius"),
    "pA_lower": (float, _finite(0, 1), "a probability"),
    "pB_upper": (float, _finite(0, 1), "a probability"),
    "icdf": (float, _finite(0), "a radius in sigma units"),
    "log_area": (float, lambda v: not math.isnan(v) and v < math.inf, "a log-area or -inf"),
    "gm_radius": (float, _finite(0), "a radius"),
    CHECKSUM: (str, lambda v: re.fullmatch(r"[0-9a-f]{8}", v) is not None, "8 hex digits"),
}


def sidecar(path: str | os.PathLike, kind: str) -> Path:
    """``out.tsv`` -> ``out.manifest.json`` / ``out.summary.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{kind}.json")


def shard_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    """``out.tsv`` -> ``out.shard1of4.tsv``: the rows one rank of a distributed run certified."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard{rank}of{world}{path.suffix}")


class ResultTable:
    """A TSV with one row per input, written row by row by one process at a time, resumable.

    Used as a context manager it holds an :class:`OutputLock` on the file.
    The manifest beside it holds a ``fingerprint``: everything the rows depend
    on (data, model and sigma hashes, sample counts, seed, precision, ...).
    The manifest is written before the table exists, the header appears
    atomically, and every row ends in a checksum. Reopening keeps the complete
    rows when the fingerprint matches and every row checks out (a half-written
    last line is cut off), and refuses otherwise, naming the file and line.
    """

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        self.manifest_path = sidecar(self.path, "manifest")
        self._lock = OutputLock(self.path)

    def __enter__(self) -> ResultTable:
        self._lock.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.__exit__(*exc_info)

    def open(self, fingerprint: dict[str, Any], manifest: dict[str, Any], spec: RunSpec, kind: str) -> list[dict]:
        """Create the table, or reopen it to resume; returns the rows already there."""
        rows: list[dict] = []
        resumed: list[str] = []
        if self.path.exists() and self.manifest_path.is_file():
            previous = read_json(self.manifest_path, "manifest")
            remedy = f"delete {self.path.name} and {self.manifest_path.name}, or choose another --out"
            check_fingerprint(self.path, previous.get("fingerprint"), fingerprint, remedy)
            rows = self._complete_rows()
            earlier = previous.get("resumed")
            resumed = (earlier if isinstance(earlier, list) else []) + [_now()]
        elif self.path.exists() and self.path.read_bytes().count(b"\n") > 1:
            raise NrsError(
                f"{self.path} has rows but no {self.manifest_path.name} to say what they were made with, "
                "so it cannot be resumed (delete it or choose another --out)"
            )
        write_manifest(self.manifest_path, kind, spec, fingerprint=fingerprint, resumed=resumed, **manifest)
        if not rows and not resumed:  # new, or only a header left by an interrupted start
            atomic_write_text("\t".join(self.columns) + "\n", self.path)
        return rows

    def append(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a") as handle:
            handle.writelines(_tsv_line(self.columns, row) for row in rows)

    def _complete_rows(self) -> list[dict[str, str]]:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the run was killed in the middle of a line
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
        header = data[: data.find(b"\n")].decode("utf-8", errors="replace").split("\t")
        if header != self.columns:
            raise NrsError(
                f"{self.path} has the columns {header}, not {self.columns} (written by another version of nrs, "
                "or damaged): delete it to start over"
            )
        return read_table(self.path)


def _tsv_line(columns: list[str], row: dict[str, Any]) -> str:
    cells = [format_cell(row[column]) for column in columns if column != CHECKSUM]
    if columns[-1] == CHECKSUM:
        cells.append(_checksum(cells))
    return "\t".join(cells) + "\n"


def _checksum(cells: list[str]) -> str:
    return f"{zlib.crc32(chr(9).join(cells).encode()):08x}"


def write_table(path: str | os.PathLike, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A whole result TSV at once (merging shards), replacing any earlier file atomically."""
    atomic_write_text("\t".join(columns) + "\n" + "".join(_tsv_line(columns, row) for row in rows), path)


def read_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a result TSV as dicts of strings, every cell checked; a bad line is an error naming it."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise NrsError(f"cannot read {path}: {err.strerror}") from None
    header = _decode(lines[0], path, 1).split("\t")
    if header not in _KNOWN_HEADERS:
        raise NrsError(f"{path} is not a certify or predict table (its first line is not their header)")
    if lines[-1] == b"":
        lines.pop()
    return [_parse_row(header, _decode(line, path, number), path, number) for number, line in enumerate(lines[1:], 2)]


def _decode(line: bytes, path: Path, number: int) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise NrsError(f"{path} line {number}: not text (damaged)") from None


def _parse_row(header: list[str], line: str, path: Path, number: int) -> dict[str, str]:
    cells = line.split("\t")
    where = f"{path} line {number}"
    if len(cells) != len(header):
        raise NrsError(f"{where}: {len(cells)} cells for {len(header)} columns (damaged)")
    row = dict(zip(header, cells))
    for column, cell in row.items():
        kind, test, expected = _CELLS.get(column, (str, lambda v: True, ""))
        try:
            ok = test(kind(cell))
        except ValueError:
            ok = False
        if not ok:
            raise NrsError(f"{where}: {column} is {cell[:20]!r}, expected {expected} (damaged)")
    if header[-1] == CHECKSUM and _checksum(cells[:-1]) != row[CHECKSUM]:
        raise NrsError(f"{where}: the row does not match its checksum (damaged)")
    if "correct" in row and int(row["correct"]) != int(row["predict"] == row["label"]):
        raise NrsError(f"{where}: correct is {row['correct']} for predict {row['predict']}, label {row['label']}")
    return row


@dataclass(frozen=True)
class CertifiedSummary:
    """How a smoothed classifier did on a set of inputs (CERTIFY)."""

    accuracy: float  # fraction of the inputs certified with the right class
    mean_log_area: float  # over those inputs (the others have no certified region)
    median_radius: float
    median_gm_radius: float


def summarize_certified(outcomes: list[tuple[bool, float, float, float]]) -> CertifiedSummary:
    """Summary of ``(correct, log_area, radius, gm_radius)`` per input."""
    right = [outcome for outcome in outcomes if outcome[0]]
    if not right:
        return CertifiedSummary(0.0 if outcomes else math.nan, math.nan, math.nan, math.nan)
    return CertifiedSummary(
        accuracy=len(right) / len(outcomes),
        mean_log_area=statistics.fmean(outcome[1] for outcome in right),
        median_radius=statistics.median(outcome[2] for outcome in right),
        median_gm_radius=statistics.median(outcome[3] for outcome in right),
    )


def summarize_certify(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Certified accuracy, abstentions and certificate sizes of a certify table."""
    outcomes = [
        (row["correct"] == "1", float(row["log_area"]), float(row["radius"]), float(row["gm_radius"])) for row in rows
    ]
    certified = summarize_certified(outcomes)
    correct = sum(outcome[0] for outcome in outcomes)
    abstained = sum(row["predict"] == "-1" for row in rows)
    return {
        "inputs": len(rows),
        "certified_accuracy": certified.accuracy if rows else math.nan,
        "correct": correct,
        "abstained": abstained,
        "wrong": len(rows) - correct - abstained,
        "mean_log_area": certified.mean_log_area,
        "median_radius": certified.median_radius,
        "median_gm_radius": certified.median_gm_radius,
        "mean_time": statistics.fmean(float(row["time"]) for row in rows) if rows else math.nan,
    }


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


def write_metrics(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """A sweep's metrics.csv."""
    write_csv(path, SWEEP_COLUMNS, rows)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a sweep's metrics.csv, numbers as floats (empty cells as nan)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise NrsError(f"{run_dir} is not an optimize-sigma run (no metrics.csv)")
    try:
        raw_rows = read_csv(path)
    except (UnicodeDecodeError, csv.Error):
        raise NrsError(f"{path} is not a metrics table (damaged)") from None
    return [_metrics_row(raw, path, number) for number, raw in enumerate(raw_rows, 2)]


def _metrics_row(raw: dict[str, str], path: Path, number: int) -> dict[str, Any]:
    row: dict[str, Any] = dict(raw)
    try:
        for column in SWEEP_COLUMNS:
            if column in _SWEEP_INTEGERS:
                row[column] = int(raw[column])
            elif column not in _SWEEP_TEXT:
                row[column] = float(raw[column]) if raw[column] != "" else math.nan
            elif raw[column] is None:
                raise ValueError(column)
    except (KeyError, TypeError, ValueError):
        raise NrsError(f"{path} line {number}: not a row of a sweep's metrics (damaged)") from None
    return row


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
