"""CERTIFY and PREDICT over a split of a dataset, into resumable result tables.

One run takes the spec's selection of a split (``certify.split``, every ``skip``-th input below
``max``), evaluates the smoothed classifier on groups of inputs sized to fill the engine's
forward passes, and appends a row per input to a TSV as soon as its group is done. Rerunning
resumes after the last complete row; a run with other data, model, sigma, sample counts, seed or
precision is refused. Under ``torchrun`` rank r takes every world-th input, starting at the r-th,
into its own resumable shard; rank 0 merges the shards in index order into the file a single
process writes.

A certify row is Cohen et al.'s columns and then the rest of the
:class:`~nrs_cli.method.certificate.Certificate` (:data:`CERTIFY_SCHEMA`); a predict row holds the
prediction only (:data:`PREDICT_SCHEMA`).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from nrs_cli.errors import NrsError
from nrs_cli.io.collective import SINGLE_PROCESS, Collective
from nrs_cli.io.data import input_set, inputs_digest, iterate_batches, selected_indices
from nrs_cli.io.models import model_digest
from nrs_cli.io.runstate import OutputLock, pause_for_tests, spec_sections, write_manifest
from nrs_cli.io.serialization import json_ready, read_json, write_json
from nrs_cli.io.spec import RunSpec
from nrs_cli.io.tables import (
    ResultTable,
    Schema,
    correct_matches_prediction,
    existing_sidecar,
    read_table,
    refuse_foreign,
    result_columns,
    shard_path,
    sidecar,
    write_table,
)
from nrs_cli.method.certificate import (
    Certificate,
    CertifiedSummary,
    SigmaFacts,
    certificate_problem,
    check_options,
    inputs_per_group,
    prediction_column,
)
from nrs_cli.method.sampling import SamplingEngine, build_engine
from nrs_cli.method.sigma import Sigma
from nrs_cli.method.smooth import Smooth


@dataclass(frozen=True)
class Prediction:
    """The outcome of PREDICT for one input: its column in a predict table."""

    prediction: int = prediction_column()


CERTIFY_SCHEMA = Schema("certify", result_columns(Certificate), row_checks=(correct_matches_prediction,))
PREDICT_SCHEMA = Schema("predict", result_columns(Prediction), row_checks=(correct_matches_prediction,))
# Every table nrs reads back: the two kinds, and both as written before rows carried a checksum.
RESULT_SCHEMAS = [CERTIFY_SCHEMA, PREDICT_SCHEMA, CERTIFY_SCHEMA.without_checksum(), PREDICT_SCHEMA.without_checksum()]

OnRows = Callable[[int, int], None]  # (inputs done, inputs selected), for progress bars: first before any new row


def read_results(path: str | Path) -> list[dict[str, str]]:
    """The rows of a certify or predict table, every cell, row and the table as a whole checked
    (:func:`check_results`) against what its manifest and summary say, where it has them."""
    rows = read_table(path, RESULT_SCHEMAS)
    manifest = sidecar(path, "manifest")  # its own: one named as before may be another table's
    check_results(Path(path), rows, read_json(manifest, "manifest") if manifest.is_file() else {})
    return rows


def check_results(path: Path, rows: list[dict[str, str]], manifest: dict[str, Any]) -> None:
    """Refuse, naming the file and line, a table whose rows contradict each other or what it was made with.

    Every certificate must follow from its row's bounds and the sigma the manifest records
    (:func:`~nrs_cli.method.certificate.certificate_problem`; without that record, every row must
    imply the same smallest and mean sigma); inputs come once each, in the selection's order, none
    left out (the manifest's ``skip`` and shard); and where the summary counts exactly these rows,
    the rows must give its counts.
    """
    sigma = SigmaFacts.recorded(manifest.get("sigma"))
    implied: dict[str, tuple[int, float]] = {}
    for line, row in enumerate(rows, 2):
        problem = certificate_problem(row, sigma) if "icdf" in row else None
        if problem is None and "icdf" in row and sigma is None and row["predict"] != "-1":
            problem = _same_sigma_problem(row, implied, line)
        if problem:
            raise NrsError(f"{path} line {line}: {problem}")
    _check_indices(path, [int(row["idx"]) for row in rows], manifest.get("fingerprint"))
    _check_summary(path, rows)


def _same_sigma_problem(row: dict[str, str], implied: dict[str, tuple[int, float]], line: int) -> str | None:
    """Without the sigma on record: radius / icdf (the smallest sigma) and gm_radius / icdf must agree over rows."""
    for name in ("radius", "gm_radius"):
        value = float(row[name]) / float(row["icdf"])
        first_line, first = implied.setdefault(name, (line, value))
        if not math.isclose(value, first, rel_tol=1e-8):
            return f"{name} / icdf is {value:.10g}, {first:.10g} on line {first_line}: one sigma cannot give both"
    return None


def _check_indices(path: Path, indices: list[int], fingerprint: Any) -> None:
    """Each input once; when the fingerprint says the inputs came in the split's order (not from the selection
    or report set, whose seeded order only the data can tell; a table without its manifest could be either),
    in that order, every one due present."""
    recorded = fingerprint if isinstance(fingerprint, dict) else {}
    skip, shard = recorded.get("skip"), recorded.get("shard", "0 of 1")
    rank, _, world = str(shard).partition(" of ")
    in_split_order = bool(recorded) and recorded.get("inputs", "split") == "split"
    due = None
    if in_split_order and isinstance(skip, int) and skip >= 1 and rank.isdigit() and world.isdigit() and int(world):
        due = range(int(rank) * skip, 2**63, skip * int(world))
    first_seen: dict[int, int] = {}
    for line, index in enumerate(indices, 2):
        if index in first_seen:
            raise NrsError(f"{path} line {line}: input {index} again (first on line {first_seen[index]})")
        first_seen[index] = line
        if in_split_order and line > 2 and index < indices[line - 3]:
            raise NrsError(f"{path} line {line}: input {index} after input {indices[line - 3]} (out of order)")
    for line, (index, expected) in enumerate(zip(indices, due or []), 2):
        if index != expected:
            raise NrsError(f"{path} line {line}: input {index} where input {expected} is due (a row is missing)")


def _check_summary(path: Path, rows: list[dict[str, str]]) -> None:
    """A summary written for exactly these rows must give the counts the rows give."""
    found = sidecar(path, "summary")
    try:
        summary = read_json(found, "summary") if found.is_file() else {}
    except NrsError:
        return  # a summary only reports; a damaged one is rewritten by the next run
    if summary.get("inputs") != len(rows):
        return
    counts = predict_summary(rows)
    for key in ("correct", "abstained"):
        if summary.get(key) != counts[key]:
            raise NrsError(
                f"{path}: its rows have {counts[key]} inputs {key}, but {found.name} records {summary.get(key)} "
                "for the same rows (edited after it was written?)"
            )


@dataclass(frozen=True)
class SmoothedJob:
    """What one certify or predict run evaluates, and where its rows go."""

    spec: RunSpec  # certify options, seed, precision and chunking
    model: nn.Module  # the base classifier f
    sigma: Sigma
    dataset: Dataset  # the split named by spec.certify.split
    out: Path  # the result TSV; manifest and summary JSON go beside it
    device: torch.device
    checkpoint: str = ""  # where the model came from, for the manifest
    collective: Collective = SINGLE_PROCESS
    replace: bool = False  # start ``out`` over whatever it holds (--force), instead of resuming or refusing it


@dataclass(frozen=True)
class TableKind:
    """What tells certify and predict apart."""

    schema: Schema
    options: dict[str, Any]  # sample counts and level: in the fingerprint and the summary
    selection_samples: int  # samples per input in the first pass (sizes the groups)
    samples_per_input: int  # all passes together (throughput)
    evaluate: Callable[[Smooth, torch.Tensor, list[int]], list[dict[str, Any]]]


def certify_table(job: SmoothedJob, on_rows: OnRows | None = None) -> dict[str, Any]:
    """CERTIFY every selected input into a TSV (resumable) and a summary JSON; returns the summary.

    Options come from ``spec.certify`` (n0, n, alpha, bound, split, skip, max), the noise seed
    from ``spec.seed``, precision and chunking from ``spec.engine``.
    """
    return certify_rows(job, on_rows)[1]


def certify_rows(job: SmoothedJob, on_rows: OnRows | None = None) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """:func:`certify_table`, also returning the selected inputs' rows (checked, in order), so a caller that
    needs them does not read the table back."""
    o = job.spec.certify
    check_options(o.n0, o.n, o.alpha, o.bound)

    def evaluate(smooth: Smooth, images: torch.Tensor, indices: list[int]) -> list[dict[str, Any]]:
        return [c.cells() for c in smooth.certify(images, o.n0, o.n, o.alpha, bound=o.bound, indices=indices)]

    options = {"n0": o.n0, "n": o.n, "alpha": o.alpha, "bound": o.bound}
    kind = TableKind(CERTIFY_SCHEMA, options, o.n0, o.n0 + o.n, evaluate)
    rows, throughput, answered = _run_table(job, kind, on_rows)
    if not job.collective.is_main:
        return rows, {}
    summary = {
        **certify_summary(rows),
        "samples_per_second": throughput,
        "sigma": job.sigma.label,
        "dimension": job.sigma.values.numel(),
        **options,
    }
    return rows, _summary_beside(job.out, summary, answered)


def predict_table(job: SmoothedJob, on_rows: OnRows | None = None) -> dict[str, Any]:
    """PREDICT every selected input (n and alpha from ``spec.certify``) into a TSV and summary."""
    o = job.spec.certify
    check_options(1, o.n, o.alpha)

    def evaluate(smooth: Smooth, images: torch.Tensor, indices: list[int]) -> list[dict[str, Any]]:
        return [{"predict": p} for p in smooth.predict(images, o.n, o.alpha, indices=indices)]

    options = {"n": o.n, "alpha": o.alpha}
    kind = TableKind(PREDICT_SCHEMA, options, o.n, o.n, evaluate)
    rows, throughput, answered = _run_table(job, kind, on_rows)
    if not job.collective.is_main:
        return {}
    summary = {**predict_summary(rows), "samples_per_second": throughput, "sigma": job.sigma.label, **options}
    return _summary_beside(job.out, summary, answered)


def certify_summary(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Certified accuracy, abstentions and certificate sizes of a certify table."""
    outcomes = [
        (row["correct"] == "1", float(row["log_area"]), float(row["radius"]), float(row["gm_radius"])) for row in rows
    ]
    certified = CertifiedSummary.of(outcomes)
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


def predict_summary(rows: list[dict[str, str]]) -> dict[str, Any]:
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


def wanted_inputs(spec: RunSpec, dataset: Dataset, whole: bool = False) -> list[int]:
    """The inputs a run certifies, in order: every ``skip``-th input of the split below ``max``, or the first
    ``max`` of its selection or report set (``certify.inputs``); ``whole``: as if ``max`` were -1."""
    c = spec.certify
    stop = -1 if whole else c.max
    if c.inputs == "split":
        return selected_indices(len(dataset), c.skip, stop)
    if c.skip != 1:
        raise NrsError(f"skip applies to the split's order, not to the {c.inputs} set (leave it at 1)")
    return input_set(dataset, c.inputs, stop, spec.inputs.seed)


def chosen_on_overlap(sigma: Sigma, spec: RunSpec, indices: list[int]) -> int:
    """How many of these test inputs chose the sigma (its file records the selection inputs it was chosen on)."""
    chosen = sigma.metadata.get("chosen_on")
    if spec.certify.split != "test" or not isinstance(chosen, dict) or not isinstance(chosen.get("indices"), list):
        return 0
    return len(set(indices) & {i for i in chosen["indices"] if isinstance(i, int)})


def fingerprint(job: SmoothedJob, options: dict[str, Any]) -> dict[str, Any]:
    """Everything a result row depends on (and nothing it does not, like chunk sizes): the inputs
    actually read included, so a rerun on other data (another --data-root) is refused. The inputs
    are every skip-th one of the split, whatever ``max``, so a larger ``max`` extends a finished table."""
    spec = job.spec
    every = wanted_inputs(spec, job.dataset, whole=True)
    sets = {"inputs": spec.certify.inputs, "inputs_seed": spec.inputs.seed} if spec.certify.inputs != "split" else {}
    return {
        **sets,
        "spec": spec_sections(spec, "data"),
        "inputs_sha256": inputs_digest(job.dataset, every),
        "model_sha256": model_digest(job.model),
        "sigma_sha256": job.sigma.digest,
        "seed": spec.seed,
        "precision": spec.engine.precision,
        "device_type": job.device.type,
        "split": spec.certify.split,
        "skip": spec.certify.skip,
        **options,
    }


def _run_table(job: SmoothedJob, kind: TableKind, on_rows: OnRows | None) -> tuple[list[dict], float, int]:
    """The loop shared by certify and predict: resume, evaluate in groups, flush rows, merge shards.

    Returns the rows of the selection, the throughput, and, when a table already holds more rows
    than this selection's first inputs (a run with a larger ``max``), how many: then the selection
    is answered from its rows and no file changes.
    """
    spec, collective = job.spec, job.collective
    wanted = wanted_inputs(spec, job.dataset)
    shared = chosen_on_overlap(job.sigma, spec, wanted) if spec.certify.inputs == "report" else 0
    if shared:
        raise NrsError(
            f"sigma {job.sigma.label} was chosen on {shared} of these report inputs: a number measured on the "
            "inputs that chose it is not a report (use the inputs.seed the sigma was chosen with)"
        )
    engine = build_engine(job.model, spec, job.device)
    manifest = {
        "sigma": {"label": job.sigma.label, "file": job.sigma.source, "sha256": job.sigma.digest}
        | json_ready(job.sigma.metadata)
        | SigmaFacts.of(job.sigma).as_dict(),
        "device": str(job.device),
        "chunk_size": engine.chunk_size,
        "world_size": collective.world,
        "checkpoint": job.checkpoint,
        **kind.options,
    }
    fingerprinted = fingerprint(job, kind.options)
    mine = wanted[collective.rank :: collective.world]
    rank, world = collective.rank, collective.world
    if world > 1 and collective.is_main and job.out.exists() and not job.replace:
        refuse_foreign(job.out, kind.schema)  # what the shards are merged into
    with ResultTable(job.out if world == 1 else shard_path(job.out, rank, world), kind.schema) as table:
        there = table.rows_made_with(fingerprinted) if world == 1 and not job.replace else None
        if there and len(there) > len(mine) and [int(row["idx"]) for row in there[: len(mine)]] == mine:
            return there[: len(mine)], math.nan, len(there)
        shard = {"shard": f"{rank} of {world}"} if world > 1 else {}
        done = table.open(fingerprinted | shard, manifest, spec, job.replace)
        check_results(table.path, done, {"sigma": manifest["sigma"], "fingerprint": fingerprinted | shard})
        if [int(row["idx"]) for row in done] != mine[: len(done)]:
            raise NrsError(
                f"{table.path}: its rows are not the first inputs of this selection (delete it to start over)"
            )
        if on_rows:
            on_rows(len(done), len(mine))  # where it starts: a resumed run's rows are already there
        started = time.perf_counter()
        processed = _fill_table(job, kind, engine, table, mine[len(done) :], on_rows, len(done))
        work = collective.gather([(processed * kind.samples_per_input, time.perf_counter() - started)])
        if world > 1:
            _merge_shards(job, kind, wanted, fingerprinted, manifest)
    samples, elapsed = sum(s for s, _ in work), max(seconds for _, seconds in work)
    throughput = samples / elapsed if samples and elapsed > 0 else math.nan
    return (read_results(job.out) if collective.is_main else []), throughput, 0


def _fill_table(
    job: SmoothedJob,
    kind: TableKind,
    engine: SamplingEngine,
    table: ResultTable,
    todo: list[int],
    on_rows: OnRows | None,
    done: int,
) -> int:
    """Evaluate the inputs still to do, a group at a time, appending each group's rows; returns how many."""
    smooth = Smooth.from_engine(engine, job.sigma, job.spec.seed)
    group = inputs_per_group(engine.chunk_size, kind.selection_samples, kind.samples_per_input)
    processed = 0
    for indices, images, labels in iterate_batches(job.dataset, todo, group, job.spec.data.workers):
        tick = time.perf_counter()
        rows = kind.evaluate(smooth, images, indices)
        per_input = (time.perf_counter() - tick) / len(indices)
        for row, index, label in zip(rows, indices, labels.tolist()):
            row.update(idx=index, label=label, correct=int(row["predict"] == label), time=per_input)
        table.append(rows)
        processed += len(indices)
        pause_for_tests("rows", done + processed)
        if on_rows:
            on_rows(done + processed, done + len(todo))
    return processed


def _merge_shards(job: SmoothedJob, kind: TableKind, wanted: list[int], fingerprinted: dict, manifest: dict) -> None:
    """Rank 0 writes every rank's complete shard into the output, in the selection's order."""
    collective = job.collective
    collective.barrier()  # every shard is complete
    if collective.is_main:
        position = {index: k for k, index in enumerate(wanted)}
        shards = [read_results(shard_path(job.out, r, collective.world)) for r in range(collective.world)]
        merged = [row for rows in shards for row in rows if int(row["idx"]) in position]
        with OutputLock(job.out):
            write_manifest(
                sidecar(job.out, "manifest"), kind.schema.name, job.spec, fingerprint=fingerprinted, resumed=[],
                **manifest,
            )  # fmt: skip
            ordered = sorted(merged, key=lambda row: position[int(row["idx"])])
            write_table(os.path.realpath(job.out), kind.schema, ordered)  # through a link the user named
    collective.barrier()


def _summary_beside(out: str | Path, summary: dict, answered: int) -> dict:
    """Save the summary beside the TSV, unless the run was ``answered`` from the rows of a longer table (then it
    says from how many, ``answered_from_rows``); with no rows evaluated now the throughput is the one measured
    before."""
    path, earlier = sidecar(out, "summary"), existing_sidecar(out, "summary")
    if math.isnan(summary["samples_per_second"]) and earlier is not None:
        try:
            previous = read_json(earlier, "summary").get("samples_per_second")
        except NrsError:
            previous = None
        if isinstance(previous, (int, float)):
            summary["samples_per_second"] = previous
    if answered:
        return {**summary, "answered_from_rows": answered}
    write_json(summary, path)
    return summary
