"""Engine throughput on CUDA with cuDNN's autotuner and memory format varied (MNIST CNN and ResNet-50).

python benchmarks/bench_cudnn.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import bench_spec, markdown_table, synchronize  # noqa: E402

from nrs_cli.io.models import build_model  # noqa: E402
from nrs_cli.method.noise import GaussianNoise  # noqa: E402
from nrs_cli.method.sampling import SamplingEngine, choose_chunk_size, prepare_model  # noqa: E402


def rate(arch, precision, channels_last, benchmark, samples):
    torch.backends.cudnn.benchmark = benchmark
    device = torch.device("cuda")
    spec = bench_spec("imagenet" if arch == "resnet50" else "mnist-mini", arch)
    model = prepare_model(build_model(spec), device, channels_last)
    shape = spec.data.input_shape
    engine = SamplingEngine(
        model, spec.data.num_classes, shape, device, precision, choose_chunk_size(model, shape, device, precision)
    )
    x, sigma = torch.rand((2, *shape)), torch.full(shape, 0.25)
    engine.count(x, [0, 1], sigma, samples, GaussianNoise(0, "warm"))
    synchronize(device)
    start = time.perf_counter()
    engine.count(x, [0, 1], sigma, samples, GaussianNoise(0, "timed"))
    synchronize(device)
    return 2 * samples / (time.perf_counter() - start), engine.chunk_size


rows = []
for arch, samples in (("mnist_cnn", 400_000), ("resnet50", 30_000)):
    for precision in ("fp32", "bf16"):
        for channels_last in (True, False):
            for benchmark in (False, True):
                value, chunk = rate(arch, precision, channels_last, benchmark, samples)
                rows.append([arch, precision, str(channels_last), str(benchmark), str(chunk), f"{value:,.0f}"])
                print(rows[-1], flush=True)
print(markdown_table(["model", "precision", "channels_last", "cudnn.benchmark", "chunk", "samples/s"], rows))
