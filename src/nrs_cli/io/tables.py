"""Tables runs write: one schema per row kind, and the resumable result table.

A row kind is a dataclass whose fields are its columns: each field declares, with :func:`column`,
how its cell is written and what a cell read back may hold. :class:`Schema` turns that into the
header, the formatted lines (a CRC-32 of the cells last, so a damaged row is never trusted) and
the checked parsing of a line. Adding a column is adding a field.

Result tables (certify, predict) are TSV files with Cohen et al.'s columns first, so their
analysis scripts keep working, then ours. Rows are flushed as they are produced; a rerun of the
same command resumes after the last complete row (:class:`ResultTable`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from nrs_cli.errors import NrsError
from nrs_cli.io.runstate import Resumable, now, write_manifest
from nrs_cli.io.serialization import atomic_write_text, read_json
from nrs_cli.io.spec import RunSpec

CHECKSUM = "crc32"  # the last column of a result table


def format_cell(value: Any) -> str:
    """One cell of a TSV or CSV: floats with 10 significant digits (enough to re-derive a certificate,
    the same on every run), a missing number (NaN) as an empty cell."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.10g}"
    return str(value)


def finite(low: float = -math.inf, high: float = math.inf) -> Callable[[float], bool]:
    return lambda value: math.isfinite(value) and low <= value <= high


def _anything(value: Any) -> bool:
    return True


@dataclass(frozen=True)
class Column:
    """How one column's cells are written and what a cell read back may hold."""

    name: str
    kind: type = str  # int, float or str
    check: Callable[[Any], bool] = _anything
    expected: str = ""
    fmt: Callable[[Any], str] = format_cell
    empty_is_nan: bool = False  # CSV metrics: an empty float cell is a missing number

    def parse(self, cell: str) -> Any:
        """The cell's value; ValueError when it is not of the column's kind or fails its check."""
        if self.empty_is_nan and cell == "":
            return math.nan
        value = self.kind(cell)
        if not self.check(value):
            raise ValueError(cell)
        return value


def column(kind: type = str, check: Callable[[Any], bool] = _anything, expected: str = "", **options: Any):
    """A dataclass field that is a table column (``name=`` when the column is named otherwise, ``fmt=``
    for another cell format, ``empty_is_nan=True``)."""
    return field(metadata={"column": dict(kind=kind, check=check, expected=expected, **options)})


def columns_of(row_type: type) -> list[Column]:
    """The columns a row dataclass declares, in field order."""
    found = []
    for f in fields(row_type):
        options = dict(f.metadata.get("column", {}))
        found.append(Column(options.pop("name", f.name), **options))
    return found


@dataclass(frozen=True)
class Schema:
    """A table's columns, in file order, and the checks a whole row must pass."""

    name: str
    columns: tuple[Column, ...]
    checksum: bool = True
    row_checks: tuple[Callable[[dict[str, str]], str | None], ...] = ()  # an error message, or None
    delimiter: str = "\t"

    @property
    def header(self) -> list[str]:
        return [c.name for c in self.columns] + ([CHECKSUM] if self.checksum else [])

    def without_checksum(self) -> Schema:
        """The same table as written before rows carried a checksum."""
        return dataclasses.replace(self, checksum=False)

    def line(self, row: dict[str, Any]) -> str:
        """A row as a line; cells already text (rows read back) are kept as they are."""
        cells = [row[c.name] if isinstance(row[c.name], str) else c.fmt(row[c.name]) for c in self.columns]
        if self.checksum:
            cells.append(_checksum(cells))
        return self.delimiter.join(cells) + "\n"

    def parse(self, line: str, where: str) -> dict[str, str]:
        """The cells of one line by column, every cell checked (the checksum too); refused naming ``where``."""
        cells = line.split(self.delimiter)
        header = self.header
        if len(cells) != len(header):
            raise NrsError(f"{where}: {len(cells)} cells for {len(header)} columns (damaged)")
        row = dict(zip(header, cells))
        for c in self.columns:
            try:
                c.parse(row[c.name])
            except ValueError:
                raise NrsError(f"{where}: {c.name} is {row[c.name][:20]!r}, expected {c.expected} (damaged)") from None
        if self.checksum:
            if not re.fullmatch(r"[0-9a-f]{8}", row[CHECKSUM]):
                raise NrsError(f"{where}: {CHECKSUM} is {row[CHECKSUM][:20]!r}, expected 8 hex digits (damaged)")
            if _checksum(cells[:-1]) != row[CHECKSUM]:
                raise NrsError(f"{where}: the row does not match its checksum (damaged)")
        for check in self.row_checks:
            problem = check(row)
            if problem:
                raise NrsError(f"{where}: {problem}")
        return row

    def values(self, row: dict[str, str]) -> dict[str, Any]:
        """A parsed row's cells as numbers where the columns hold numbers."""
        return {c.name: c.parse(row[c.name]) for c in self.columns}


def _checksum(cells: list[str]) -> str:
    return f"{zlib.crc32(chr(9).join(cells).encode()):08x}"


@dataclass(frozen=True)
class InputOutcome:
    """The columns every result table has for each input, besides the smoothed classifier's answer."""

    idx: int = column(int, lambda v: v >= 0, "an input index")
    label: int = column(int, lambda v: v >= 0, "a class")
    correct: int = column(int, lambda v: v in (0, 1), "0 or 1")
    time: float = column(float, finite(0), "seconds", fmt=lambda seconds: f"{seconds:.4f}")


COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")  # Cohen et al.'s tables, in their order


def result_columns(*row_types: type) -> tuple[Column, ...]:
    """The columns of a result table: Cohen et al.'s first (those present), then the rest in field order."""
    every = [c for row_type in (InputOutcome, *row_types) for c in columns_of(row_type)]
    first = [c for name in COHEN_COLUMNS for c in every if c.name == name]
    return tuple(first + [c for c in every if c.name not in COHEN_COLUMNS])


def correct_matches_prediction(row: dict[str, str]) -> str | None:
    if int(row["correct"]) != int(row["predict"] == row["label"]):
        return f"correct is {row['correct']} for predict {row['predict']}, label {row['label']}"
    return None


def sidecar(path: str | os.PathLike, kind: str) -> Path:
    """``out.tsv`` -> ``out.tsv.manifest.json`` / ``out.tsv.summary.json``: named after the whole file name, so
    two outputs never share one (``r.tsv`` and ``r.txt``, ``cert.s0.25`` and ``cert.s0.5``), and beside the
    file itself when ``path`` is a symbolic link to it (every name of one output finds the same side-cars)."""
    real = Path(os.path.realpath(path))
    return real.with_name(f"{real.name}.{kind}.json")


def existing_sidecar(path: str | os.PathLike, kind: str) -> Path | None:
    """The side-car of ``path`` that exists: its own, else one named as before (``out.manifest.json``, the
    last suffix dropped), which tables written by earlier versions have; None when there is neither."""
    own = sidecar(path, kind)
    earlier = own.with_name(f"{Path(own.name[: -len(f'.{kind}.json')]).stem}.{kind}.json")
    return next((p for p in (own, earlier) if p.is_file()), None)


def shard_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    """``out.tsv`` -> ``out.shard1of4.tsv``: the rows one rank of a distributed run certified."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard{rank}of{world}{path.suffix}")


class ResultTable:
    """A TSV with one row per input, written row by row by one process at a time, resumable.

    Used as a context manager it holds the output (:class:`~nrs_cli.io.runstate.Resumable`).
    The manifest beside it holds a ``fingerprint``: everything the rows depend on (data, model
    and sigma hashes, sample counts, seed, precision, ...). The manifest is written before the
    table exists, the header appears atomically, and every row ends in a checksum. Reopening
    keeps the complete rows when the fingerprint matches and every row checks out (a
    half-written last line is cut off), and refuses otherwise, naming the file and line.
    """

    def __init__(self, path: str | os.PathLike, schema: Schema):
        self.path = Path(path)
        self.schema = schema
        self.manifest_path = sidecar(self.path, "manifest")
        remedy = f"delete {self.path.name} and {self.manifest_path.name}, or choose another --out"
        self._output = Resumable(self.path, remedy=remedy)

    def __enter__(self) -> ResultTable:
        self._output.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._output.__exit__(*exc_info)

    def open(self, fingerprint: dict[str, Any], manifest: dict[str, Any], spec: RunSpec, replace=False) -> list[dict]:
        """Create the table, or reopen it to resume; returns the rows already there.

        A file that is not a table of this kind is refused, not overwritten, unless ``replace``
        (``--force``) says to start over whatever the file holds.
        """
        rows: list[dict] = []
        resumed: list[str] = []
        previous_manifest = existing_sidecar(self.path, "manifest")
        if self.path.exists() and not replace:
            refuse_foreign(self.path, self.schema)
            if previous_manifest is not None:
                previous = read_json(previous_manifest, "manifest")
                self._output.check(previous.get("fingerprint"), fingerprint)
                rows = self._complete_rows()
                earlier = previous.get("resumed")
                resumed = (earlier if isinstance(earlier, list) else []) + [now()]
            elif self.path.read_bytes().count(b"\n") > 1:
                raise NrsError(
                    f"{self.path} has rows but no {self.manifest_path.name} to say what they were made with, "
                    "so it cannot be resumed (delete it, choose another --out, or pass --force to start it over)"
                )
        write_manifest(self.manifest_path, self.schema.name, spec, fingerprint=fingerprint, resumed=resumed, **manifest)
        if not rows and not resumed:  # new, or only a header left by an interrupted start
            sidecar(self.path, "summary").unlink(missing_ok=True)  # it summarised rows no longer there
            atomic_write_text("\t".join(self.schema.header) + "\n", os.path.realpath(self.path))
            self._output.replaced()
        return rows

    def rows_made_with(self, fingerprint: dict[str, Any]) -> list[dict] | None:
        """The rows of the table as it is, changing nothing: None when there is none (or its last line is cut
        short); refused, as a resume would be, when it was made with another fingerprint."""
        manifest = existing_sidecar(self.path, "manifest")
        if not self.path.exists() or manifest is None:
            return None
        refuse_foreign(self.path, self.schema)
        self._output.check(read_json(manifest, "manifest").get("fingerprint"), fingerprint)
        if not self.path.read_bytes().endswith(b"\n"):
            return None
        return read_table(self.path, [self.schema])

    def append(self, rows: list[dict[str, Any]]) -> None:
        try:
            with open(self.path, "a") as handle:
                handle.writelines(self.schema.line(row) for row in rows)
        except OSError as err:  # a failed write names no file
            raise OSError(err.errno, err.strerror, str(self.path)) from None

    def _complete_rows(self) -> list[dict[str, str]]:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the run was killed in the middle of a line
            with open(self.path, "r+b") as handle:
                handle.truncate(end)
        header = data[: data.find(b"\n")].decode("utf-8", errors="replace").split("\t")
        if header != self.schema.header:
            raise NrsError(
                f"{self.path} has the columns {header}, not {self.schema.header} (written by another version of "
                "nrs, or damaged): delete it to start over"
            )
        return read_table(self.path, [self.schema])


def refuse_foreign(path: Path, schema: Schema) -> None:
    """Refuse to overwrite an existing file that is not a table of this kind (notes, another kind of table)."""
    if not path.is_file():
        raise NrsError(f"refusing to write {path}: it is not a file (choose another --out)")
    with open(path, "rb") as handle:
        start = handle.read(1 << 16)
    first = start[: start.find(b"\n") + 1] if b"\n" in start else start
    headers = [s.delimiter.join(s.header).encode() + b"\n" for s in (schema, schema.without_checksum())]
    if first and first not in headers:
        raise NrsError(
            f"refusing to overwrite {path}: it is not a {schema.name} table (its first line is not the header "
            "nrs writes); choose another --out, or pass --force to replace it"
        )


def write_table(path: str | os.PathLike, schema: Schema, rows: list[dict[str, Any]]) -> None:
    """A whole table at once (merging shards, metrics), replacing any earlier file atomically."""
    atomic_write_text(schema.delimiter.join(schema.header) + "\n" + "".join(schema.line(r) for r in rows), path)


def read_table(path: str | os.PathLike, schemas: list[Schema]) -> list[dict[str, str]]:
    """Rows of a table as dicts of strings, every cell checked by the schema whose header the file has;
    a bad line is an error naming it."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise NrsError(f"cannot read {path}: {err.strerror}") from None
    first = _decode(lines[0], path, 1)
    matching = [s for s in schemas if first.split(s.delimiter) == s.header]
    if not matching:
        names = " or ".join(dict.fromkeys(s.name for s in schemas))
        raise NrsError(f"{path} is not a {names} table (its first line is not their header)")
    if lines[-1] == b"":
        lines.pop()
    schema = matching[0]
    return [schema.parse(_decode(line, path, n), f"{path} line {n}") for n, line in enumerate(lines[1:], 2)]


def _decode(line: bytes, path: Path, number: int) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise NrsError(f"{path} line {number}: not text (damaged)") from None
