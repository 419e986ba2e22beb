"""ImageNet-shaped CERTIFY at n = 100,000, and the share of the engine's time spent drawing noise.

    python benchmarks/bench_headline.py --device cuda     # what benchmarks/device_check.sh runs
    python benchmarks/bench_headline.py --quick           # the CPU, tiny sizes: that it runs

1. ResNet-50 (random weights: this measures speed only) at 3x224x224 in bf16:
   ``Smooth.certify`` of a few random inputs with n0=100, n=100,000,
   alpha=0.001; wall time per input, samples/s, and the fraction of the
   measured bf16 matmul rate its FLOPs reach.
2. The noise share of ``SamplingEngine.count`` for the MNIST CNN and for
   ResNet-50: the device time inside the ``nrs.noise`` ranges over all
   device time (torch.profiler), and the same share timed directly (drawing
   the chunks' noise alone against the whole count).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_spec, forward_flops, markdown_table, matmul_flops_per_second, synchronize  # noqa: E402

from nrs_cli.io.models import build_model  # noqa: E402
from nrs_cli.method.noise import GaussianNoise  # noqa: E402
from nrs_cli.method.sampling import SamplingEngine, choose_chunk_size, prepare_model  # noqa: E402
from nrs_cli.method.sigma import constant_sigma  # noqa: E402
from nrs_cli.method.smooth import Smooth  # noqa: E402


def engine_for(arch: str, device: torch.device, precision: str, quick: bool) -> tuple[SamplingEngine, tuple]:
    spec = bench_spec("imagenet" if arch == "resnet50" else "mnist-mini", arch, quick)
    model = prepare_model(build_model(spec), device)
    shape = spec.data.input_shape
    chunk = choose_chunk_size(model, shape, device, precision)
    return SamplingEngine(model, spec.data.num_classes, shape, device, precision, chunk), shape


def headline(device: torch.device, inputs: int, n0: int, n: int, quick: bool) -> list[str]:
    engine, shape = engine_for("resnet50", device, "bf16", quick)
    smooth = Smooth.from_engine(engine, constant_sigma(0.25, shape), seed=0)
    x = torch.rand((inputs, *shape), generator=torch.Generator().manual_seed(0))
    smooth.certify(x[:1], 2, 2, 0.001)  # warm-up: kernels chosen, memory reserved
    synchronize(device)
    seconds = []
    for k in range(inputs):  # one input at a time, as a user certifies a test set
        start = time.perf_counter()
        smooth.certify(x[k : k + 1], n0, n, 0.001, indices=[k])
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    rate = (n0 + n) / min(seconds)
    flops = forward_flops(engine.model, shape, device)
    limit = matmul_flops_per_second(device, torch.bfloat16, quick)
    return [
        f"ResNet-50 {'x'.join(map(str, shape))} bf16",
        f"{n0:,} + {n:,}",
        str(engine.chunk_size),
        f"{min(seconds):.2f} s (mean {sum(seconds) / len(seconds):.2f} s over {inputs})",
        f"{rate:,.0f}",
        f"{flops * rate / limit:.0%}",
    ]


def noise_share(arch: str, device: torch.device, precision: str, samples: int, quick: bool) -> list[str]:
    engine, shape = engine_for(arch, device, precision, quick)
    sigma = torch.full(shape, 0.25)
    x = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
    noise = GaussianNoise(0, "profile")
    engine.count(x, [0, 1], sigma, min(samples, 2 * engine.chunk_size), noise)  # warm-up and compile
    synchronize(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        engine.count(x, [0, 1], sigma, samples, noise)
        synchronize(device)
    events = profile.key_averages()
    attribute = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    self_attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    in_noise = sum(getattr(e, attribute) for e in events if e.key == "nrs.noise")
    total = sum(getattr(e, self_attribute) for e in events)

    start = time.perf_counter()
    engine.count(x, [0, 1], sigma, samples, noise)
    synchronize(device)
    whole = time.perf_counter() - start
    draws, buffer = noise.inputs([0, 1], samples, device), torch.empty((engine.chunk_size, *shape), device=device)
    for _ in range(2):  # the first pass may compile for a new chunk shape: time the second
        start = time.perf_counter()
        for first in range(0, 2 * samples, engine.chunk_size):
            draws.fill(buffer[: min(engine.chunk_size, 2 * samples - first)], first)
        synchronize(device)
        alone = time.perf_counter() - start
    return [
        f"{arch} {precision}",
        str(engine.chunk_size),
        f"{2 * samples / whole:,.0f}",
        f"{in_noise / max(total, 1):.1%}",
        f"{alone / whole:.1%}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--inputs", type=int, default=3)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="tiny sizes on any device: that it runs (make test)")
    args = parser.parse_args()
    if args.quick:
        args.inputs, args.n0, args.n = 1, 4, 8
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"## ImageNet-shaped CERTIFY, {where}, torch {torch.__version__}\n")
    header = ["model", "n0 + n", "chunk", "wall time per input (best)", "samples/s", "of bf16 limit"]
    print(markdown_table(header, [headline(device, args.inputs, args.n0, args.n, args.quick)]))
    print("\n## Share of the engine's time spent drawing noise (CERTIFY's count of 2 inputs)\n")
    mnist_samples, resnet_samples = (64, 8) if args.quick else (200_000, 20_000)
    rows = [noise_share("mnist_cnn", device, p, mnist_samples, args.quick) for p in ("fp32", "bf16")]
    rows.append(noise_share("resnet50", device, "bf16", resnet_samples, args.quick))
    header = ["model", "chunk", "samples/s", "noise share (profiler)", "noise share (timed alone)"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
