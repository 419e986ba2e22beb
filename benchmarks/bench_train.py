"""Benchmark base-classifier training: images/s of nrs's training epoch under each precision and layout.

    .venv/bin/python benchmarks/bench_train.py                      # cifar10-cpu's ResNet-20 on the CPU
    .venv/bin/python benchmarks/bench_train.py --spec mnist --device cuda

Runs ``nrs_cli.runs.train.Trainer.run_epoch`` (batched crop and flip, autocast,
cross-entropy with label smoothing, SGD step and schedule) on random images
held in memory, for fp32 and bf16, with and without channels_last, at
several batch sizes, once under Gaussian noise augmentation, and with
``--compile`` once with the model compiled by ``torch.compile``. The
baseline is PyTorch's default: fp32, contiguous layout, batch 128. A
training step costs about three forward passes (forward, and backward to
activations and to weights), so the FLOP fraction counts 3x the forward FLOPs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import forward_flops, interleaved, markdown_table, matmul_flops_per_second  # noqa: E402

from nrs_cli.io.data import ImageTensorDataset  # noqa: E402
from nrs_cli.io.models import build_model  # noqa: E402
from nrs_cli.io.spec import load_spec  # noqa: E402
from nrs_cli.method.sigma import constant_sigma  # noqa: E402
from nrs_cli.runs.train import Trainer, TrainJob  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="cifar10-cpu", help="built-in dataset whose model and train section to use")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=1536, help="training images per timed epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time the model compiled by torch.compile")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    batch_sizes = (128, 256, 512)
    if args.quick:
        args.images, args.rounds, batch_sizes = 8, 1, (4,)

    device = torch.device(args.device)
    spec = load_spec(args.spec, {"model.pretrained": False})
    shape = spec.data.input_shape
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (args.images, *shape), dtype=torch.uint8, generator=generator)
    train_set = ImageTensorDataset(pixels, torch.randint(0, spec.data.num_classes, (args.images,), generator=generator))
    test_set = ImageTensorDataset(pixels[:1], train_set.labels[:1])  # the epoch's evaluation, made negligible

    def trainer(
        precision: str, channels_last: bool, batch_size: int, noise: float | None = None, compiled: bool = False
    ) -> Trainer:
        variant = dataclasses.replace(
            spec,
            train=dataclasses.replace(spec.train, precision=precision, batch_size=batch_size),
            engine=dataclasses.replace(spec.engine, channels_last=channels_last),
        )
        sigma = constant_sigma(noise, shape) if noise else None
        model = build_model(variant)
        return Trainer(
            TrainJob(variant, torch.compile(model) if compiled else model, train_set, test_set, device, sigma)
        )

    first = batch_sizes[0]
    configurations = {
        "fp32, contiguous": trainer("fp32", False, first),
        "fp32, channels_last": trainer("fp32", True, first),
        "bf16, contiguous": trainer("bf16", False, first),
    }
    for size in batch_sizes:
        configurations[f"bf16, channels_last, batch {size}"] = trainer("bf16", True, size)
    configurations[f"bf16, channels_last, batch {first}, noise 0.12"] = trainer("bf16", True, first, 0.12)
    if args.compile:
        configurations[f"bf16, channels_last, batch {first}, compiled"] = trainer("bf16", True, first, compiled=True)

    def epoch(run: Trainer):
        def work() -> int:
            run.run_epoch(0)
            return args.images

        return work

    for run in configurations.values():  # warm-up: first-touch allocations, oneDNN kernel selection, compiling
        run.run_epoch(0)
    rates = interleaved({name: epoch(run) for name, run in configurations.items()}, args.rounds, device)

    flops = 3 * forward_flops(build_model(spec).to(device).eval(), shape, device)
    limits = {dtype: matmul_flops_per_second(device, dtype, args.quick) for dtype in (torch.float32, torch.bfloat16)}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(
        f"## Training epoch, {spec.name} ({spec.model.arch}, {'x'.join(map(str, shape))}), "
        f"{where}, torch {torch.__version__}"
    )
    print(
        f"{args.images} images per epoch, best/median of {args.rounds} interleaved rounds; "
        f"{flops / 1e6:.0f} MFLOP per training image (3x forward); "
        f"limits fp32 {limits[torch.float32] / 1e9:.0f}, bf16 {limits[torch.bfloat16] / 1e9:.0f} GFLOP/s\n"
    )
    baseline = rates["fp32, contiguous"]["median"]
    rows = []
    for name, rate in rates.items():
        limit = limits[torch.bfloat16 if name.startswith("bf16") else torch.float32]
        rows.append(
            [
                name,
                f"{rate['best']:,.0f}",
                f"{rate['median']:,.0f}",
                f"{rate['median'] / baseline:.2f}x",
                f"{rate['median'] * flops / limit:.0%}",
                f"{50_000 / rate['median'] / 60:.1f}",
            ]
        )
    header = [
        "configuration",
        "images/s (best)",
        "(median)",
        "vs fp32 contiguous",
        "of its dtype's limit",
        "min per 50k",
    ]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
