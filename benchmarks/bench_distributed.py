"""Scaling of `nrs certify` with torchrun: throughput for 1, 2, ... processes.

    .venv/bin/python benchmarks/bench_distributed.py                      # CPU, gloo: 1 and 2 processes
    .venv/bin/python benchmarks/bench_distributed.py --device cuda --processes 1 2 4 8

Trains nothing: it certifies the first test inputs of mnist-mini with a
freshly initialised MNIST CNN (speed does not depend on the weights), once per
process count, and reads the samples/s each run reports in its summary. On
CPUs every process gets cores / processes threads, so on a 2-core machine
the point is correctness and the shape of the code, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import markdown_table  # noqa: E402

from nrs_cli.io.models import build_model, save_checkpoint  # noqa: E402
from nrs_cli.io.spec import load_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--inputs", type=int, default=60)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        spec = load_spec("mnist-mini")
        checkpoint = Path(scratch) / "model.pt"
        save_checkpoint(checkpoint, build_model(spec), spec, spec.model.arch)
        rows, first = [], None
        for processes in args.processes:
            out = Path(scratch) / f"p{processes}.tsv"
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                str(processes),
                "-m",
                "nrs_cli",
                "certify",
                "--checkpoint",
                str(checkpoint),
                "--sigma",
                "0.25",
                "--n0",
                str(args.n0),
                "--num-samples",
                str(args.n),
                "--stop",
                str(args.inputs),
                "--device",
                args.device,
                "--out",
                str(out),
            ]
            threads = max(1, cores // processes) if args.device == "cpu" else 1
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=env)
            wall = time.perf_counter() - started
            summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
            rate = summary["samples_per_second"]
            first = first or rate
            rows.append([str(processes), str(threads), f"{rate:,.0f}", f"{rate / first:.2f}x", f"{wall:.1f}"])
    print(
        f"## certify under torchrun, mnist_cnn, {args.inputs} inputs, n0={args.n0}, n={args.n}, "
        f"device {args.device} ({cores} CPU cores)\n"
    )
    print(
        markdown_table(
            ["processes", "threads each", "samples/s (all ranks)", "vs 1 process", "wall s (with start-up)"], rows
        )
    )


if __name__ == "__main__":
    main()
