"""Benchmark Algorithm 1: the engine's differentiable path against the original code's structure.

    .venv/bin/python benchmarks/bench_optimize.py                  # paper's MNIST CNN on the CPU
    .venv/bin/python benchmarks/bench_optimize.py --arch resnet50 --device cuda --batch-size 2

One optimisation step (paper appendix B for MNIST: batch 128 inputs, n0 = 32
noise samples each) of sigma, timed as noisy samples forward + backward per
second, for

- the per-input loop of the original code: for every input of the batch, one
  forward pass of its n0 noisy copies through the network with its
  parameters left trainable (so backward also computes weight gradients
  nobody uses), the loss summed over the batch, one backward, one Adam step;
- the same loop with a channels_last model, to separate layout from the rest;
- ``nrs_cli.method.algorithm1.algorithm1_step`` with the engine (frozen parameters,
  cache- or memory-sized chunks of many inputs) in fp32 and bf16;
- the other half of a co-optimisation round, ``nrs_cli.runs.cooptimize.finetune_under_noise``:
  the network trained on one noisy copy of each input (weights trainable), fp32 and bf16.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_spec, forward_flops, interleaved, markdown_table, matmul_flops_per_second  # noqa: E402

from nrs_cli.io.data import ImageTensorDataset  # noqa: E402
from nrs_cli.io.devices import keep_freed_memory  # noqa: E402
from nrs_cli.io.models import build_model  # noqa: E402
from nrs_cli.io.spec import load_spec  # noqa: E402
from nrs_cli.method.algorithm1 import P_HAT_RANGE, algorithm1_step  # noqa: E402
from nrs_cli.method.noise import GaussianNoise  # noqa: E402
from nrs_cli.method.sampling import SamplingEngine, choose_chunk_size, prepare_model  # noqa: E402
from nrs_cli.runs.cooptimize import finetune_under_noise  # noqa: E402
from nrs_cli.runs.optimization import OptimizeContext, OptimizeJob  # noqa: E402

SPEC_FOR_ARCH = {"mnist_cnn": "mnist", "cifar_resnet110": "cifar10", "resnet50": "imagenet"}


def per_input_step(model, log_sigma, optimizer, images, labels, n0):
    """The original structure: a forward per input, parameters trainable, one backward per batch."""
    dimension = log_sigma.numel()
    optimizer.zero_grad(set_to_none=True)
    sigma = log_sigma.exp()
    terms, right = [], 0
    for x, label in zip(images, labels):
        noise = torch.randn((n0, *x.shape), device=x.device)
        logits = model(x + sigma * noise)
        p_hat = logits.softmax(1)[:, label].mean()
        if int(logits.argmax(1).bincount(minlength=logits.shape[1]).argmax()) == int(label):
            terms.append(dimension * torch.special.ndtri(p_hat.double().clamp(*P_HAT_RANGE)).log())
            right += 1
    if right:
        loss = -(log_sigma.double().sum() + torch.stack(terms).sum() / right)
        loss.backward()
        optimizer.step()
    return len(images) * n0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--arch", default="mnist_cnn", choices=sorted(SPEC_FOR_ARCH))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n0", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="optimisation steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs (make test)")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.n0, args.steps, args.rounds = 2, 4, 1, 1

    keep_freed_memory()  # as build_engine does; process-wide, so the baselines get it too
    device = torch.device(args.device)
    spec = bench_spec(SPEC_FOR_ARCH[args.arch], args.arch, args.quick)
    shape, classes = spec.data.input_shape, spec.data.num_classes
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((args.batch_size, *shape), generator=generator).to(device)
    if args.arch == "mnist_cnn":
        from nrs_cli.io.loaders import load_split

        test = load_split(load_spec("mnist-mini").data, "test")
        images = torch.stack([test[i][0] for i in range(args.batch_size)]).to(device)
    reference = build_model(spec).to(device).eval()
    with torch.no_grad():
        labels = reference(images).argmax(1)  # so most votes are right and every input counts

    trainable = build_model(spec).to(device).eval()  # the original code never froze the weights
    trainable_cl = build_model(spec).to(device).eval().to(memory_format=torch.channels_last)
    frozen = prepare_model(build_model(spec), device)
    chunks = {p: choose_chunk_size(frozen, shape, device, p) for p in ("fp32", "bf16")}
    engines = {p: SamplingEngine(frozen, classes, shape, device, p, chunks[p]) for p in ("fp32", "bf16")}

    def loop(model):
        log_sigma = torch.full(shape, math.log(0.25), device=device, requires_grad=True)
        optimizer = torch.optim.Adam([log_sigma], lr=0.01)
        return lambda: sum(
            per_input_step(model, log_sigma, optimizer, images, labels, args.n0) for _ in range(args.steps)
        )

    def engine(precision):
        log_sigma = torch.full(shape, math.log(0.25), device=device, requires_grad=True)
        optimizer = torch.optim.Adam([log_sigma], lr=0.01)
        indices = list(range(args.batch_size))

        def work():
            for step in range(args.steps):
                algorithm1_step(
                    engines[precision],
                    log_sigma,
                    optimizer,
                    (images, labels, indices),
                    args.n0,
                    GaussianNoise(0, f"bench/{step}"),
                )
            return args.steps * args.batch_size * args.n0

        return work

    def finetune(precision):
        """A co-optimisation round's first half: the network trained under the current per-element sigma."""
        tuned = dataclasses.replace(
            spec,
            engine=dataclasses.replace(spec.engine, precision=precision),
            cooptimize=dataclasses.replace(
                spec.cooptimize, finetune_steps=args.steps, finetune_batch_size=args.batch_size
            ),
        )
        pixels = (images.cpu() * 255).round().to(torch.uint8)
        data = ImageTensorDataset(pixels, labels.cpu())
        context = OptimizeContext.build(OptimizeJob(tuned, build_model(tuned), data, data, None, device))
        optimizer = torch.optim.Adam(list(context.job.model.parameters()), lr=1e-4)
        sigma = torch.full(shape, 0.25, device=device)
        rounds = iter(range(1, 10**6))  # each call is the next round: its own batches and noise

        def work():
            finetune_under_noise(context, optimizer, sigma, "bench", next(rounds))
            return args.steps * args.batch_size

        return work

    results = interleaved(
        {
            "per-input loop, trainable weights": loop(trainable),
            "per-input loop, trainable weights, channels_last": loop(trainable_cl),
            "nrs algorithm1_step fp32": engine("fp32"),
            "nrs algorithm1_step bf16": engine("bf16"),
            "nrs co-optimize fine-tuning step fp32": finetune("fp32"),
            "nrs co-optimize fine-tuning step bf16": finetune("bf16"),
        },
        rounds=args.rounds,
        device=device,
    )
    baseline = results["per-input loop, trainable weights"]["best"]
    flops = forward_flops(reference, shape, device)
    limit = matmul_flops_per_second(device, torch.float32, args.quick)
    sizes = {
        "nrs algorithm1_step fp32": chunks["fp32"],
        "nrs algorithm1_step bf16": chunks["bf16"],
        "nrs co-optimize fine-tuning step fp32": args.batch_size,
        "nrs co-optimize fine-tuning step bf16": args.batch_size,
    }
    rows = [
        [
            name,
            str(sizes.get(name, args.n0)),
            f"{r['best']:,.0f}",
            f"{r['median']:,.0f}",
            f"{r['best'] / baseline:.2f}x",
        ]
        for name, r in results.items()
    ]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"## Algorithm 1 step, {args.arch} {'x'.join(map(str, shape))}, {where}, torch {torch.__version__}")
    print(
        f"batch {args.batch_size} inputs x n0 {args.n0} samples, {args.steps} steps per round, "
        f"best/median of {args.rounds} interleaved rounds; forward {flops / 1e6:.1f} MFLOP per sample, "
        f"fp32 matmul limit {limit / 1e9:.0f} GFLOP/s\n"
    )
    print(
        markdown_table(
            ["implementation", "samples per pass", "samples/s fwd+bwd (best)", "(median)", "vs per-input loop"], rows
        )
    )


if __name__ == "__main__":
    main()
