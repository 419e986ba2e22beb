"""CERTIFY and PREDICT over a split of a dataset, into resumable result tables.

One run takes the spec's selection of a split (``certify.split``, every
``skip``-th input below ``max``), evaluates the smoothed classifier on groups
of inputs sized to fill the engine's forward passes, and appends a row per
input to a TSV as soon as its group is done. Rerunning resumes after the last
complete row; a run with other data, model, sigma, sample counts, seed or
precision is refused. Under ``torchrun`` rank r takes every world-th input,
starting at the r-th, into its own resumable shard; rank 0 merges the shards
in index order into the file a single process writes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from nrs_cli.certify import Smooth, check_options, inputs_per_group
from nrs_cli.collective import SINGLE_PROCESS, Collective
from nrs_cli.data import inputs_digest, iterate_batches, selected_indices
from nrs_cli.errors import NrsError
from nrs_cli.models import model_digest
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
from nrs_cli.serialization import OutputLock, json_ready, read_json, write_json
from nrs_cli.sigma import Sigma
from nrs_cli.spec import RunSpec

OnRows = Callable[[int, int], None]  # (inputs done, inputs selected), for progress bars


@dataclass(frozen=True)
class SmoothedRun:
    """What one certify or predict run evaluates, and where its rows go."""

    spec: RunSpec  # certify options, seed, precision and chunking
    model: nn.Module  # the base classifier f
    sigma: Sigma
    dataset: Dataset  # the split named by spec.certify.split
    out: Path  # the result TSV; manifest and summary JSON go beside it
    device: torch.device
    checkpoint: str = ""  # where the model came from, for the manifest
    collective: Collective = SINGLE_PROCESS


@dataclass(frozen=True)
class TableKind:
    """What tells certify and predict apart."""

    name: str
    columns: list[str]
    options: dict[str, Any]  # sample counts and level: in the fingerprint and the summary
    selection_samples: int  # samples per input in the first pass (sizes the groups)
    samples_per_input: int  # all passes together (throughput)
    evaluate: Callable[[Smooth, torch.Tensor, list[int]], list[dict[str, Any]]]


def certify_run(run: SmoothedRun, on_rows: OnRows | None = None) -> dict[str, Any]:
    """CERTIFY every selected input into a TSV (resumable) and a summary JSON; returns the summary.

    Options come from ``spec.certify`` (n0, n, alpha, bound, split, skip, max),
    the noise seed from ``spec.seed``, precision and chunking from ``spec.engine``.
    """
    o = run.spec.certify
    check_options(o.n0, o.n, o.alpha, o.bound)

    def evaluate(smooth: Smooth, images: torch.Tensor, indices: list[int]) -> list[dict[str, Any]]:
        certificates = smooth.certify(images, o.n0, o.n, o.alpha, o.bound, indices)
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

    options = {"n0": o.n0, "n": o.n, "alpha": o.alpha, "bound": o.bound}
    kind = TableKind("certify", CERTIFY_COLUMNS, options, o.n0, o.n0 + o.n, evaluate)
    rows, throughput = _run_table(run, kind, on_rows)
    if not run.collective.is_main:
        return {}
    summary = {
        **summarize_certify(rows),
        "samples_per_second": throughput,
        "sigma": run.sigma.label,
        "dimension": run.sigma.values.numel(),
        **options,
    }
    return _write_summary(run.out, summary)


def predict_run(run: SmoothedRun, on_rows: OnRows | None = None) -> dict[str, Any]:
    """PREDICT every selected input (n and alpha from ``spec.certify``) into a TSV and summary."""
    o = run.spec.certify
    check_options(1, o.n, o.alpha)

    def evaluate(smooth: Smooth, images: torch.Tensor, indices: list[int]) -> list[dict[str, Any]]:
        return [{"predict": p} for p in smooth.predict(images, o.n, o.alpha, indices)]

    options = {"n": o.n, "alpha": o.alpha}
    kind = TableKind("predict", PREDICT_COLUMNS, options, o.n, o.n, evaluate)
    rows, throughput = _run_table(run, kind, on_rows)
    if not run.collective.is_main:
        return {}
    summary = {**summarize_predict(rows), "samples_per_second": throughput, "sigma": run.sigma.label, **options}
    return _write_summary(run.out, summary)


def fingerprint(run: SmoothedRun, options: dict[str, Any]) -> dict[str, Any]:
    """Everything a result row depends on (and nothing it does not, like chunk sizes): the inputs
    actually read included, so a rerun on other data (another --data-root) is refused. The inputs
    are every skip-th one of the split, whatever ``max``, so a larger ``max`` extends a finished table."""
    spec = run.spec
    every = selected_indices(len(run.dataset), spec.certify.skip)
    return {
        "data_sha256": spec.digest("data"),
        "inputs_sha256": inputs_digest(run.dataset, every),
        "model_sha256": model_digest(run.model),
        "sigma_sha256": run.sigma.digest,
        "seed": spec.seed,
        "precision": spec.engine.precision,
        "device_type": run.device.type,
        "split": spec.certify.split,
        "skip": spec.certify.skip,
        **options,
    }


def _run_table(run: SmoothedRun, kind: TableKind, on_rows: OnRows | None) -> tuple[list[dict], float]:
    """The loop shared by certify and predict: resume, evaluate in groups, flush rows, merge shards."""
    spec, collective = run.spec, run.collective
    wanted = selected_indices(len(run.dataset), spec.certify.skip, spec.certify.max)
    engine = build_engine(run.model, spec, run.device)
    manifest = {
        "sigma": {"label": run.sigma.label, "file": run.sigma.source, "sha256": run.sigma.digest}
        | json_ready(run.sigma.metadata),
        "device": str(run.device),
        "chunk_size": engine.chunk_size,
        "world_size": collective.world,
        "checkpoint": run.checkpoint,
        **kind.options,
    }
    fingerprinted = fingerprint(run, kind.options)
    mine = wanted[collective.rank :: collective.world]
    rank, world = collective.rank, collective.world
    with ResultTable(run.out if world == 1 else shard_path(run.out, rank, world), kind.columns) as table:
        shard = {"shard": f"{rank} of {world}"} if world > 1 else {}
        done = table.open(fingerprinted | shard, manifest, spec, kind.name)
        if [int(row["idx"]) for row in done] != mine[: len(done)]:
            raise NrsError(
                f"{table.path}: its rows are not the first inputs of this selection (delete it to start over)"
            )
        started = time.perf_counter()
        processed = _fill_table(run, kind, engine, table, mine[len(done) :], on_rows, len(done))
        work = collective.gather([(processed * kind.samples_per_input, time.perf_counter() - started)])
        if world > 1:
            _merge_shards(run, kind, wanted, fingerprinted, manifest)
    samples, elapsed = sum(s for s, _ in work), max(seconds for _, seconds in work)
    throughput = samples / elapsed if samples and elapsed > 0 else math.nan
    return (read_table(run.out) if collective.is_main else []), throughput


def _fill_table(
    run: SmoothedRun,
    kind: TableKind,
    engine: SamplingEngine,
    table: ResultTable,
    todo: list[int],
    on_rows: OnRows | None,
    done: int,
) -> int:
    """Evaluate the inputs still to do, a group at a time, appending each group's rows; returns how many."""
    smooth = Smooth(engine, run.sigma, run.spec.seed)
    group = inputs_per_group(engine.chunk_size, kind.selection_samples, kind.samples_per_input)
    processed = 0
    for indices, images, labels in iterate_batches(run.dataset, todo, group, run.spec.data.workers):
        tick = time.perf_counter()
        rows = kind.evaluate(smooth, images, indices)
        per_input = (time.perf_counter() - tick) / len(indices)
        for row, index, label in zip(rows, indices, labels.tolist()):
            row.update(idx=index, label=label, correct=int(row["predict"] == label), time=f"{per_input:.4f}")
        table.append(rows)
        processed += len(indices)
        if on_rows:
            on_rows(done + processed, done + len(todo))
    return processed


def _merge_shards(run: SmoothedRun, kind: TableKind, wanted: list[int], fingerprinted: dict, manifest: dict) -> None:
    """Rank 0 writes every rank's complete shard into the output, in the selection's order."""
    collective = run.collective
    collective.barrier()  # every shard is complete
    if collective.is_main:
        position = {index: k for k, index in enumerate(wanted)}
        shards = [read_table(shard_path(run.out, r, collective.world)) for r in range(collective.world)]
        merged = [row for rows in shards for row in rows if int(row["idx"]) in position]
        with OutputLock(run.out):
            write_manifest(
                sidecar(run.out, "manifest"), kind.name, run.spec, fingerprint=fingerprinted, resumed=[], **manifest
            )
            write_table(run.out, kind.columns, sorted(merged, key=lambda row: position[int(row["idx"])]))
    collective.barrier()


def _write_summary(out: str | Path, summary: dict) -> dict:
    """Save the summary beside the TSV; a rerun with no rows left to do keeps the throughput measured before."""
    path = sidecar(out, "summary")
    if math.isnan(summary["samples_per_second"]) and path.is_file():
        try:
            previous = read_json(path, "summary").get("samples_per_second")
        except NrsError:
            previous = None
        if isinstance(previous, (int, float)):
            summary["samples_per_second"] = previous
    write_json(summary, path)
    return summary
