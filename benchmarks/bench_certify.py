"""Benchmark CERTIFY: the batched engine against a straightforward per-input loop.

    .venv/bin/python benchmarks/bench_certify.py                 # paper's MNIST CNN on the CPU
    .venv/bin/python benchmarks/bench_certify.py --arch resnet50 --device cuda --images 10
    .venv/bin/python benchmarks/bench_certify.py --against HEAD  # also the engine as committed at HEAD
    .venv/bin/python benchmarks/bench_certify.py --quick         # seconds: that it runs, not what it measures

Workload (issue defaults): n0=100, n=1000, alpha=0.001, the first test images
of mnist-mini (random pixels for other input shapes). Prints one table:
samples/s of

- the per-input loop as Cohen et al. wrote it: one input at a time, ``x.repeat``
  plus ``randn`` in batches, class counts tallied on the host, model in its
  default memory format; at its best batch size (scanned first);
- the same loop with a channels_last model (to separate layout from batching);
- the nrs engine (``Smooth.certify``) in fp32 and bf16, chunk size as chosen
  by the engine for this device;

with the ratio to the per-input loop and the fraction of the measured fp32
(and bf16) matmul rate that the model's FLOPs reach. ``--compile`` adds the
engine with its forward pass compiled by ``torch.compile``; ``--against REV``
the engine of a git revision, interleaved with today's (a regression check).
Then a chunk-size scan and peak memory at n=1,000 vs n=100,000.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import (  # noqa: E402
    bench_spec,
    forward_flops,
    import_revision,
    interleaved,
    markdown_table,
    matmul_flops_per_second,
    peak_rss_bytes,
)

from nrs_cli.io.devices import keep_freed_memory  # noqa: E402
from nrs_cli.io.loaders import load_split  # noqa: E402
from nrs_cli.io.models import build_model  # noqa: E402
from nrs_cli.method.certificate import inputs_per_group, lower_confidence_bound  # noqa: E402
from nrs_cli.method.noise import GaussianNoise  # noqa: E402
from nrs_cli.method.sampling import SamplingEngine, choose_chunk_size, prepare_model  # noqa: E402
from nrs_cli.method.sigma import constant_sigma  # noqa: E402
from nrs_cli.method.smooth import Smooth  # noqa: E402

SPEC_FOR_ARCH = {"mnist_cnn": "mnist-mini", "cifar_resnet110": "cifar10", "resnet50": "imagenet"}


def per_input_counts(model, x, sigma, num, batch, num_classes):
    """Cohen et al.'s sampling loop: repeat one input, add noise, count on the host."""
    counts = np.zeros(num_classes, dtype=int)
    remaining = num
    with torch.no_grad():
        while remaining > 0:
            size = min(batch, remaining)
            remaining -= size
            copies = x.repeat((size, 1, 1, 1))
            noisy = copies + torch.randn_like(copies) * sigma
            for prediction in model(noisy).argmax(1).cpu().numpy():
                counts[prediction] += 1
    return counts


def per_input_certify(model, images, sigma, n0, n, alpha, batch, num_classes):
    for x in images:
        top = per_input_counts(model, x, sigma, n0, batch, num_classes).argmax()
        counts = per_input_counts(model, x, sigma, n, batch, num_classes)
        lower_confidence_bound(int(counts[top]), n, alpha)
    return len(images) * (n0 + n)


def engine_certify(engine, sigma, images, n0, n, alpha, smooth_class=Smooth):
    # revisions before Smooth took Cohen's arguments built it from the engine directly
    make = getattr(smooth_class, "from_engine", smooth_class)
    smooth = make(engine, sigma, seed=0)
    group = inputs_per_group(engine.chunk_size, n0, n)
    for start in range(0, len(images), group):
        batch = images[start : start + group]
        smooth.certify(batch, n0, n, alpha, indices=list(range(start, start + len(batch))))
    return len(images) * (n0 + n)


def peak_memory(engine, x, sigma, large_n, device) -> str:
    """Peak memory after n=1,000 and after n=large_n samples of one input."""
    noise = GaussianNoise(0, "memory")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    engine.count(x, [0], sigma.values, 1000, noise)
    small = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    engine.count(x, [0], sigma.values, large_n, noise)
    large = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    copies = large_n * x[0].numel() * 4
    return (
        f"peak memory: after n=1,000 {small / 2**20:,.0f} MiB, after n={large_n:,} {large / 2**20:,.0f} MiB "
        f"(n copies of the input would add {copies / 2**20:,.0f} MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--arch", default="mnist_cnn", choices=sorted(SPEC_FOR_ARCH))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scan-images", type=int, default=10, help="images per batch/chunk-size scan round")
    parser.add_argument("--memory-n", type=int, default=100_000, help="large n for the memory check (0: skip)")
    parser.add_argument("--compile", action="store_true", help="also the engine with a compiled forward pass")
    parser.add_argument("--against", metavar="REV", help="also the engine of this git revision, interleaved")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs (make test)")
    args = parser.parse_args()
    if args.quick:
        args.images, args.n0, args.n, args.rounds, args.scan_images, args.memory_n = 2, 8, 16, 1, 1, 0

    keep_freed_memory()  # as build_engine does; process-wide, so the baselines get it too
    device = torch.device(args.device)
    spec = bench_spec(SPEC_FOR_ARCH[args.arch], args.arch, args.quick)
    shape, classes = spec.data.input_shape, spec.data.num_classes
    if args.arch == "mnist_cnn":
        test = load_split(spec.data, "test")
        images = torch.stack([test[i][0] for i in range(args.images)])
    else:
        images = torch.rand((args.images, *shape), generator=torch.Generator().manual_seed(0))
    images = images.to(device)
    sigma = constant_sigma(0.25, shape)

    plain = build_model(spec).to(device).eval()  # what a straightforward script runs
    plain_cl = build_model(spec).to(device).eval().to(memory_format=torch.channels_last)
    prepared = prepare_model(build_model(spec), device)
    chunk = choose_chunk_size(prepared, shape, device, "fp32")
    chunk_bf16 = choose_chunk_size(prepared, shape, device, "bf16")
    fp32 = SamplingEngine(prepared, classes, shape, device, "fp32", chunk)
    bf16 = SamplingEngine(prepared, classes, shape, device, "bf16", chunk_bf16)

    # Peak memory first, before anything else large exists: RSS only records its maximum.
    if args.memory_n:
        memory_line = peak_memory(fp32, images[:1], sigma, args.memory_n, device)

    flops = forward_flops(plain, shape, device)
    limit_fp32 = matmul_flops_per_second(device, torch.float32, args.quick)
    limit_bf16 = matmul_flops_per_second(device, torch.bfloat16, args.quick)
    n0, n, alpha = args.n0, args.n, args.alpha

    scan_sizes = [50, 100, 200, 400, 1000] if device.type == "cpu" else [100, 400, 1000, 4000]
    scan_sizes = scan_sizes[:1] if args.quick else scan_sizes
    few = images[: args.scan_images]
    scan = interleaved(
        {b: (lambda b=b: per_input_certify(plain, few, 0.25, n0, n, alpha, b, classes)) for b in scan_sizes},
        rounds=2,
        device=device,
    )
    best_batch = max(scan, key=lambda b: scan[b]["best"])

    workloads = {
        "per-input loop": lambda: per_input_certify(plain, images, 0.25, n0, n, alpha, best_batch, classes),
        "per-input loop, channels_last": lambda: per_input_certify(
            plain_cl, images, 0.25, n0, n, alpha, best_batch, classes
        ),
        "nrs engine fp32": lambda: engine_certify(fp32, sigma, images, n0, n, alpha),
        "nrs engine bf16": lambda: engine_certify(bf16, sigma, images, n0, n, alpha),
    }
    sizes = {
        "per-input loop": best_batch,
        "per-input loop, channels_last": best_batch,
        "nrs engine fp32": chunk,
        "nrs engine bf16": chunk_bf16,
    }
    if args.compile:
        compiled = SamplingEngine(torch.compile(prepared, dynamic=True), classes, shape, device, "bf16", chunk_bf16)
        engine_certify(compiled, sigma, images[:1], n0, n, alpha)  # compile outside the timing
        workloads["nrs engine bf16, compiled forward"] = lambda: engine_certify(compiled, sigma, images, n0, n, alpha)
        sizes["nrs engine bf16, compiled forward"] = chunk_bf16
    if args.against:
        old = import_revision(args.against)
        for precision, size in (("fp32", chunk), ("bf16", chunk_bf16)):
            engine = old.sampling.SamplingEngine(prepared, classes, shape, device, precision, size)
            name = f"nrs engine {precision} at {args.against}"
            workloads[name] = lambda e=engine: engine_certify(e, sigma, images, n0, n, alpha, old.Smooth)
            sizes[name] = size
    results = interleaved(workloads, rounds=args.rounds, device=device)
    baseline = results["per-input loop"]["best"]
    rows = []
    for name, rate in results.items():
        achieved = flops * rate["best"]
        rows.append(
            [
                name,
                str(sizes[name]),
                f"{rate['best']:,.0f}",
                f"{rate['median']:,.0f}",
                f"{rate['best'] / baseline:.2f}x",
                f"{achieved / limit_fp32:.0%}",
                f"{achieved / limit_bf16:.0%}" if "bf16" in name else "",
            ]
        )
    cpu = platform.processor() or platform.machine()
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads, {cpu})"
    )
    print(f"## CERTIFY, {args.arch} {'x'.join(map(str, shape))}, {where}, torch {torch.__version__}")
    print(f"n0={n0}, n={n}, alpha={alpha}, {args.images} inputs, best/median of {args.rounds} interleaved rounds")
    print(
        f"model: {flops / 1e6:.1f} MFLOP per sample; measured matmul limit: fp32 {limit_fp32 / 1e9:.0f} GFLOP/s, "
        f"bf16 {limit_bf16 / 1e9:.0f} GFLOP/s\n"
    )
    print(
        markdown_table(
            [
                "implementation",
                "batch / chunk",
                "samples/s (best)",
                "samples/s (median)",
                "vs per-input loop",
                "of fp32 limit",
                "of bf16 limit",
            ],
            rows,
        )
    )
    print(
        "\nper-input loop batch-size scan (samples/s, best of 2): "
        + ", ".join(f"{b}: {r['best']:,.0f}" for b, r in scan.items())
    )

    if args.quick:
        return
    chunk_scan = interleaved(
        {
            c: (
                lambda c=c: engine_certify(
                    SamplingEngine(prepared, classes, shape, device, "fp32", c), sigma, few, n0, n, alpha
                )
            )
            for c in sorted({32, 64, 128, 256, 512, chunk})
        },
        rounds=2,
        device=device,
    )
    if args.memory_n:
        print(memory_line)
    print(
        "engine fp32 chunk-size scan (samples/s, best of 2): "
        + ", ".join(f"{c}{'*' if c == chunk else ''}: {r['best']:,.0f}" for c, r in chunk_scan.items())
        + "   (* chosen by the engine)"
    )


if __name__ == "__main__":
    main()
