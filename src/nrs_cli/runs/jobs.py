"""How a command's options become a job: the model, sigma, inputs and output each command runs on.

The CLI parses its options into a spec and calls these; every default a command applies lives
here (a dataset's base classifier, the sigma when none is given, where results go), so the
commands are library calls too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Iterator, TypeVar

from nrs_cli.errors import NrsError
from nrs_cli.io.devices import resolve_device
from nrs_cli.io.distributed import distributed
from nrs_cli.io.layout import RunLayout
from nrs_cli.io.loaders import load_split
from nrs_cli.io.models import build_model, load_checkpoint, model_digest
from nrs_cli.io.spec import RunSpec
from nrs_cli.method.sigma import Sigma, constant_sigma, load_sigma, parse_sigma
from nrs_cli.runs.certification import SmoothedJob, chosen_on_overlap, wanted_inputs
from nrs_cli.runs.optimization import OptimizeJob
from nrs_cli.runs.train import TrainJob, training_sigma

Job = TypeVar("Job", SmoothedJob, OptimizeJob)


def train_job(spec: RunSpec, data_root, runs_dir: Path, name: str, noise: str | None = None) -> tuple[TrainJob, Path]:
    """``train-base``: a fresh model for the spec, its splits and noise, and the run folder."""
    sigma = training_sigma(spec, noise)
    device = resolve_device(spec.engine.device)
    train_set = load_split(spec.data, "train", data_root)
    test_set = load_split(spec.data, "test", data_root)
    job = TrainJob(spec, build_model(spec), train_set, test_set, device, sigma)
    return job, RunLayout(runs_dir, spec.name).train_dir(name)


def smoothed_job(
    command: str,
    spec: RunSpec,
    data_root,
    checkpoint: Path | None,
    runs_dir: Path,
    sigma: str | None,
    out: Path | None,
    force: bool = False,
) -> tuple[SmoothedJob, str]:
    """``certify`` / ``predict``: model, sigma (given, or the default and why), inputs and output path
    (``force``: start it over whatever it holds)."""
    layout = RunLayout(runs_dir, spec.name)
    given = parse_sigma(sigma, spec) if sigma is not None else None  # checked before anything is loaded
    checkpoint = layout.base_checkpoint(checkpoint)
    model, _ = load_checkpoint(checkpoint, spec)
    if given is None:
        chosen, why = default_sigma(spec, layout, model, checkpoint)
        note = f"sigma: {chosen.source or chosen.label} ({why}; pass --sigma to choose)"
    else:
        chosen, note = given, ""
    inputs = load_split(spec.data, spec.certify.split, data_root)
    out = out or layout.result_tsv(command, chosen.tag, spec.certify.n)
    device = resolve_device(spec.engine.device)
    shared = chosen_on_overlap(chosen, spec, wanted_inputs(spec, inputs)) if spec.certify.inputs != "report" else 0
    if shared:
        note = "\n".join(filter(None, [note, f"note: sigma {chosen.label} was chosen on {shared} of these inputs; "
                                              "numbers to publish come from --inputs report"]))  # fmt: skip
    return SmoothedJob(spec, model, chosen, inputs, out, device, str(checkpoint), replace=force), note


def optimize_job(spec: RunSpec, data_root, checkpoint: Path | None, runs_dir: Path, name: str) -> OptimizeJob:
    """``optimize-sigma`` / ``co-optimize``: the base classifier, both splits and the run folder."""
    layout = RunLayout(runs_dir, spec.name)
    checkpoint = layout.base_checkpoint(checkpoint)
    model, _ = load_checkpoint(checkpoint, spec)
    train_set = load_split(spec.data, "train", data_root)
    test_set = load_split(spec.data, "test", data_root)
    device = resolve_device(spec.engine.device)
    return OptimizeJob(spec, model, train_set, test_set, layout.sweep_dir(name), device, str(checkpoint))


@contextlib.contextmanager
def as_launched(job: Job) -> Iterator[Job]:
    """The job as this process runs it: alone, or as one rank of a ``torchrun`` job (its device and collective)."""
    with distributed(job.device) as (collective, device):
        yield dataclasses.replace(job, device=device, collective=collective)


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


def default_sigma(spec: RunSpec, layout: RunLayout, model, checkpoint: Path) -> tuple[Sigma, str]:
    """The sigma `nrs certify` uses without ``--sigma``, and why: the best point of the latest sweep made
    for this very network (its weights' digest, as the sweep's manifest records it), else, when no
    sweep exists, the spec's ``certify.sigma``. Sweeps of other networks are never used: the error
    names them and the networks they were made for."""
    digest, others = model_digest(model), []
    for summary in layout.sweep_summaries():
        made_with = _sweep_network(summary.parent)
        if made_with is None:
            continue  # not a sweep of Algorithm 1 (co-optimisation: its sigmas go with its own networks)
        if made_with[0] != digest:
            others.append(f"{summary.parent.name} (for {made_with[1] or 'another network'})")
            continue
        best = best_sigma_file(summary)
        if best is not None:
            return load_sigma(best, spec), f"the best point of the latest sweep of this network ({summary.parent})"
    if others:
        raise NrsError(
            f"no sigma given and no sweep of {checkpoint}: the sweeps {', '.join(others)} were made for other "
            f"networks; pass --sigma (a number or a sigma file), or run `nrs optimize-sigma --checkpoint {checkpoint}`"
        )
    if spec.certify.sigma is not None:
        return constant_sigma(spec.certify.sigma, spec.data.input_shape), "the spec's certify.sigma"
    raise NrsError(
        f"no sigma given: pass --sigma (a number or a sigma file), run `nrs optimize-sigma --dataset {spec.name}`, "
        "or set certify.sigma in the spec"
    )


def _sweep_network(run_dir: Path) -> tuple[str, str] | None:
    """``(model digest, checkpoint)`` an optimize-sigma run was made for, from its manifest; None for other runs."""
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        digest = manifest["fingerprint"]["model_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if manifest.get("kind") != "optimize-sigma" or not isinstance(digest, str):
        return None
    return digest, str(manifest.get("checkpoint", ""))
