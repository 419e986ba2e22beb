"""Noise generators: normals per second of the seeded blocks and of the counter generator (Philox).

    .venv/bin/python benchmarks/bench_noise.py                 # the CPU
    python benchmarks/bench_noise.py --device cuda            # adds the compiled counter kernel

One chunk of 4 inputs x 1024 samples of 1x28x28 (3.2 million normals), best of 5 rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import markdown_table, synchronize  # noqa: E402

from nrs_cli.method.noise import GaussianNoise  # noqa: E402


def rate(device: torch.device, counter: bool, rounds: int) -> float:
    out = torch.empty((4096, 1, 28, 28), device=device)
    draws = GaussianNoise(0, "bench", counter=counter).inputs(list(range(4)), 1024, device)
    draws.fill(out, 0)  # warm-up (and on CUDA the kernel's compilation)
    best = float("inf")
    for _ in range(rounds):
        synchronize(device)
        start = time.perf_counter()
        draws.fill(out, 0)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return out.numel() / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name, counter in (("seeded blocks of 64 samples", False), ("counter (Philox4x32-10)", True)):
        compiled = " (compiled)" if counter and device.type == "cuda" else ""
        rows.append([name + compiled, str(device), f"{rate(device, counter, args.rounds) / 1e6:,.1f}"])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"## Noise generators, {where}, torch {torch.__version__}\n")
    print(markdown_table(["generator", "device", "million normals/s (best)"], rows))


if __name__ == "__main__":
    main()
