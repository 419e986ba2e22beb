"""The batched Monte Carlo engine: f on x + sigma * z for many inputs at once (where sigma enters the noise).

The batched Monte Carlo engine: run f on many noisy copies of many inputs.

Everything expensive in nrs is evaluating the base classifier ``f`` on
``x + sigma * z``. The engine does it for a whole batch of inputs at once:
the ``num_samples`` noisy copies of input 0, then of input 1, ... are laid
end to end and cut into chunks of ``chunk_size`` samples, one forward pass
each. Only one chunk of noisy inputs exists at a time, so memory does not
grow with the number of samples. Class votes are counted on the device
(``index_add_`` with per-input offsets) and copied to the host once per call.

Two paths share the layout:

- :meth:`SamplingEngine.count` — class counts ``n_c(x_i) = #{j : f(x_i + sigma * z_ij) = c}``
  under ``torch.inference_mode`` (CERTIFY, PREDICT, evaluation);
- :meth:`SamplingEngine.mean_softmax` — ``p_hat_i = 1/n sum_j softmax(f(x_i + sigma * z_ij))[c_i]``
  with gradient flowing to sigma through the reparameterisation (Algorithm 1),
  the network's own parameters frozen.

Noise comes from :class:`nrs_cli.method.noise.GaussianNoise`, so results never depend
on the batch or chunk size.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from nrs_cli.io.devices import autocast, keep_freed_memory
from nrs_cli.io.spec import RunSpec
from nrs_cli.method.noise import NOISE_BLOCK, GaussianNoise

# A CPU forward pass is fastest while a chunk's activations stay in cache.
# Measured with CERTIFY on the paper's MNIST CNN (2 cores, channels_last;
# largest activation 147 KB per sample in fp32): fp32 6,400 samples/s at 128
# per pass, 6,500 at 192, 4,400 at 256; bf16 12,100 at 192, 12,300 at 256,
# 7,800 at 320. This budget, rounded down to whole noise blocks, picks 128
# (fp32) and 256 (bf16): near the best and clear of the cliff.
CPU_CACHE_BYTES = 20 * 2**20
CPU_CHUNK_LIMITS = (8, 1024)
# On a GPU, big passes keep it busy; take this share of the free memory.
GPU_MEMORY_SHARE = 0.5
GPU_CHUNK_LIMITS = (8, 65536)
GPU_PROBES = (32, 256)  # samples in the two passes that measure memory per sample


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """The base classifier as the engine runs it: on the device, eval mode, parameters frozen."""
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def borrowed(model: nn.Module, freeze: bool = False) -> Iterator[nn.Module]:
    """A caller's model, lent to the engine as it is (device, dtype, memory format untouched): in eval
    mode, and with ``freeze`` its parameters' ``requires_grad`` off (so no gradient reaches them);
    every module's training flag and every parameter's flag are restored afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()] if freeze else []
    try:
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


def choose_chunk_size(model: nn.Module, input_shape: tuple[int, ...], device: torch.device, precision: str) -> int:
    """Samples per forward pass: cache-sized on a CPU, memory-sized on a GPU."""
    if device.type == "cuda":
        return _gpu_chunk_size(model, input_shape, device, precision)
    largest = _largest_activation_bytes(model, input_shape, device, precision)
    chunk = max(CPU_CHUNK_LIMITS[0], min(CPU_CHUNK_LIMITS[1], CPU_CACHE_BYTES // max(largest, 1)))
    if chunk >= NOISE_BLOCK:  # whole noise blocks waste no draws
        chunk -= chunk % NOISE_BLOCK
    return chunk


def _largest_activation_bytes(model: nn.Module, input_shape, device, precision) -> int:
    largest = 0

    def record(module, inputs, output):
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode(), autocast(device, precision):
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return largest


def _gpu_chunk_size(model, input_shape, device, precision) -> int:
    """Half the free memory over the memory of one sample: the slope between two probe batches (so the
    fixed workspace of a pass is not counted per sample), plus the sample's noise and noisy input."""

    def peak(samples: int) -> int:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.inference_mode(), autocast(device, precision):
            model(torch.rand((samples, *input_shape), device=device))
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    small, large = GPU_PROBES
    per_sample = max(1, (peak(large) - peak(small)) // (large - small)) + 2 * 4 * math.prod(input_shape)
    free, _ = torch.cuda.mem_get_info(device)
    chunk = int(free * GPU_MEMORY_SHARE // per_sample)
    return max(GPU_CHUNK_LIMITS[0], min(GPU_CHUNK_LIMITS[1], chunk))


class SamplingEngine:
    """Evaluates a frozen base classifier on noisy copies of a batch of inputs.

    :param model: the base classifier (already passed through :func:`prepare_model`)
    :param num_classes: number of classes C
    :param input_shape: shape of one input (sigma has this shape too)
    :param device: where the forward passes run
    :param precision: ``fp32`` or ``bf16`` (autocast); with bf16 the base
        classifier is by definition the bf16 network
    :param chunk_size: samples per forward pass (None: :func:`choose_chunk_size`)
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        input_shape: tuple[int, ...],
        device: torch.device,
        precision: str = "fp32",
        chunk_size: int | None = None,
    ):
        self.model = model
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.device = device
        self.precision = precision
        self.chunk_size = chunk_size or choose_chunk_size(model, self.input_shape, device, precision)

    @torch.inference_mode()
    def count(
        self, x: torch.Tensor, indices: list[int], sigma: torch.Tensor, num_samples: int, noise: GaussianNoise
    ) -> torch.Tensor:
        """Class counts ``(B, C)`` (int64, on the CPU) of ``f(x_i + sigma * z_ij)``, j < num_samples.

        ``indices[i]`` is input i's index in its dataset: it keys the noise.
        Votes are tallied on the device; the counts come back in one copy.
        """
        batch_size, classes = len(x), self.num_classes
        x = self._to_device(x)
        sigma = sigma.to(self.device)
        draws = noise.inputs(indices, num_samples, self.device)
        counts = torch.zeros(batch_size * classes, dtype=torch.long, device=self.device)
        total = batch_size * num_samples
        width = min(self.chunk_size, total)
        buffer = torch.empty((width, *self.input_shape), device=self.device)
        positions = torch.arange(width, device=self.device)
        ones = torch.ones(width, dtype=torch.long, device=self.device)
        for start in range(0, total, width):
            rows = min(width, total - start)
            owners = (positions[:rows] + start) // num_samples
            noisy = draws.fill(buffer[:rows], start).mul_(sigma).add_(x[owners])
            with autocast(self.device, self.precision):
                predictions = self.model(noisy).argmax(1)
            counts.index_add_(0, owners * classes + predictions, ones[:rows])
        return counts.view(batch_size, classes).cpu()

    def mean_softmax(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        indices: list[int],
        sigma: torch.Tensor,
        num_samples: int,
        noise: GaussianNoise,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable ``p_hat_i = mean_j softmax(f(x_i + sigma * z_ij))[labels_i]``.

        Returns ``p_hat`` (B,) on the device, with a graph back to ``sigma``,
        and the class counts ``(B, C)`` of the same samples (no gradient).
        The graph of every chunk is kept until backward: memory grows with
        ``B * num_samples``, so the caller sizes the batch.
        """
        batch_size, classes = len(x), self.num_classes
        x = self._to_device(x)
        labels = labels.to(self.device, non_blocking=True)
        draws = noise.inputs(indices, num_samples, self.device)
        totals = torch.zeros(batch_size, device=self.device)
        counts = torch.zeros(batch_size * classes, dtype=torch.long, device=self.device)
        total = batch_size * num_samples
        for start in range(0, total, self.chunk_size):
            stop = min(start + self.chunk_size, total)
            z = draws.fill(torch.empty((stop - start, *self.input_shape), device=self.device), start)
            owners = torch.arange(start, stop, device=self.device) // num_samples
            with autocast(self.device, self.precision):
                logits = self.model(torch.addcmul(x[owners], z, sigma))
            probabilities = logits.float().softmax(1).gather(1, labels[owners].unsqueeze(1)).squeeze(1)
            totals = totals.index_add(0, owners, probabilities)
            with torch.no_grad():
                counts.index_add_(0, owners * classes + logits.argmax(1), torch.ones_like(owners))
        return totals / num_samples, counts.view(batch_size, classes)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs on the device; from pinned memory, so a GPU copy does not hold up the host."""
        if self.device.type == "cuda" and x.device.type == "cpu" and not x.is_pinned():
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)


def build_engine(model: nn.Module, spec: RunSpec, device: torch.device) -> SamplingEngine:
    """The engine for a spec: its precision, memory format and chunk size (0: chosen per device).

    On a CPU this also keeps freed memory in the process (:func:`nrs_cli.io.devices.keep_freed_memory`).
    """
    if device.type == "cpu":
        keep_freed_memory()
    prepared = prepare_model(model, device, spec.engine.channels_last)
    return SamplingEngine(
        prepared,
        spec.data.num_classes,
        spec.data.input_shape,
        device,
        spec.engine.precision,
        spec.engine.chunk_size or None,
    )
