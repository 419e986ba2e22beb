"""Shared pieces of the benchmark scripts: hardware limits, FLOP counts, timing.

The machines these run on are shared, so throughput drifts by tens of percent
from minute to minute. Every benchmark therefore runs its configurations
interleaved, several rounds, and reports the best and the median round.
"""

from __future__ import annotations

import importlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype = torch.float32, quick: bool = False) -> float:
    """Best measured dense matmul rate (FLOP/s) over a few sizes: the hardware limit we compare with."""
    best = 0.0
    sizes = (1024, 2048, 4096) if device.type == "cpu" else (4096, 8192)
    sizes = sizes[:1] if quick else sizes
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        synchronize(device)
        repeats = max(2, int(4e10 // (2 * size**3))) if device.type == "cpu" else 20
        repeats = 2 if quick else repeats
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            synchronize(device)
            best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


def forward_flops(model: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device) -> float:
    """FLOPs of one forward pass of one input (multiply-adds count 2), from torch's counter."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros((1, *input_shape), device=device))
    return float(counter.get_total_flops())


def interleaved(workloads: dict[str, Callable[[], int]], rounds: int, device: torch.device) -> dict[str, dict]:
    """Run each workload once per round, rounds interleaved; returns samples/s (best, median) per name.

    A workload runs its job and returns the number of samples it evaluated.
    """
    rates: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(rounds):
        for name, work in workloads.items():
            synchronize(device)
            start = time.perf_counter()
            samples = work()
            synchronize(device)
            rates[name].append(samples / (time.perf_counter() - start))
    return {name: {"best": max(r), "median": statistics.median(r)} for name, r in rates.items()}


def bench_spec(name: str, arch: str, quick: bool = False):
    """The run spec a benchmark uses: random initial weights; in quick mode 64x64 instead of 224x224 images."""
    from nrs_cli.io.spec import load_spec

    overrides = {"model.arch": arch, "model.pretrained": False}
    spec = load_spec(name, overrides)
    if quick and spec.data.input_shape[1] > 64:
        spec = load_spec(name, {**overrides, "data.input_shape": [spec.data.input_shape[0], 64, 64]})
    return spec


def import_revision(revision: str):
    """The engine of nrs as committed at a git revision, importable beside the working tree's (as
    ``nrs_cli_at_revision``): to measure a change against what it changes, in one interleaved run.
    Returns its ``sampling`` module and its ``Smooth`` class, whichever layout the revision has."""
    repository = Path(__file__).resolve().parents[1]
    folder = Path(tempfile.mkdtemp(prefix="nrs-revision-"))
    listing = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", revision, "--", "src/nrs_cli"],
        cwd=repository,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in (n for n in listing if n.endswith(".py")):
        source = subprocess.run(
            ["git", "show", f"{revision}:{name}"], cwd=repository, check=True, capture_output=True, text=True
        ).stdout
        target = folder / "nrs_cli_at_revision" / Path(name).relative_to("src/nrs_cli")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            source.replace("nrs_cli.", "nrs_cli_at_revision.").replace(
                "from nrs_cli import", "from nrs_cli_at_revision import"
            )
        )
    sys.path.insert(0, str(folder))
    try:  # layers as packages
        sampling = importlib.import_module("nrs_cli_at_revision.method.sampling")
        smooth = importlib.import_module("nrs_cli_at_revision.method.smooth").Smooth
    except ModuleNotFoundError:  # the flat layout of earlier revisions
        sampling = importlib.import_module("nrs_cli_at_revision.sampling")
        smooth = importlib.import_module("nrs_cli_at_revision.certify").Smooth
    return types.SimpleNamespace(sampling=sampling, Smooth=smooth)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
