"""The batched Monte Carlo engine: run f on many noisy copies of many inputs.

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

Noise comes from :class:`nrs_cli.noise.GaussianNoise`, so results never depend
on the batch or chunk size.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from nrs_cli.devices import autocast, keep_freed_memory
from nrs_cli.noise import NOISE_BLOCK, GaussianNoise
from nrs_cli.spec import RunSpec

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


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = True) -> nn.Module:
    """The base classifier as the engine runs it: on the device, eval mode, parameters frozen."""
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


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
    probe = 8
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    x = torch.rand((probe, *input_shape), device=device)
    with torch.inference_mode(), autocast(device, precision):
        out = model(x)
    torch.cuda.synchronize(device)
    per_sample = max(1, (torch.cuda.max_memory_allocated(device) - before) // probe)
    del x, out
    free, _ = torch.cuda.mem_get_info(device)
    chunk = int(free * GPU_MEMORY_SHARE // per_sample)
    return max(GPU_CHUNK_LIMITS[0], min(GPU_CHUNK_LIMITS[1], chunk))


def chunk_rows(num_inputs: int, num_samples: int, chunk_size: int) -> Iterator[tuple[int, int, list]]:
    """Cut the ``num_inputs * num_samples`` flattened samples into chunks.

    Yields ``(start, stop, rows)``: the chunk covers flattened positions
    ``start..stop-1`` and ``rows`` lists ``(input, first_sample, end_sample)``.
    """
    total = num_inputs * num_samples
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        rows, position = [], start
        while position < stop:
            owner, first = divmod(position, num_samples)
            end = min(num_samples, first + stop - position)
            rows.append((owner, first, end))
            position += end - first
        yield start, stop, rows


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
        """
        batch_size, classes = len(x), self.num_classes
        x = x.to(self.device, non_blocking=True)
        sigma = sigma.to(self.device)
        counts = torch.zeros(batch_size * classes, dtype=torch.long, device=self.device)
        width = min(self.chunk_size, batch_size * num_samples)
        buffer = torch.empty((width, *self.input_shape), device=self.device)
        positions = torch.arange(width, device=self.device)
        ones = torch.ones(width, dtype=torch.long, device=self.device)
        for start, stop, rows in chunk_rows(batch_size, num_samples, self.chunk_size):
            noisy = buffer[: stop - start]
            offset = 0
            for owner, first, end in rows:
                part = noisy[offset : offset + end - first]
                noise.fill(part, indices[owner], first, end).mul_(sigma).add_(x[owner])
                offset += end - first
            with autocast(self.device, self.precision):
                predictions = self.model(noisy).argmax(1)
            owners = (positions[: stop - start] + start) // num_samples
            counts.index_add_(0, owners * classes + predictions, ones[: stop - start])
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
        x = x.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        totals = torch.zeros(batch_size, device=self.device)
        counts = torch.zeros(batch_size * classes, dtype=torch.long, device=self.device)
        for start, stop, rows in chunk_rows(batch_size, num_samples, self.chunk_size):
            z = torch.empty((stop - start, *self.input_shape), device=self.device)
            offset = 0
            for owner, first, end in rows:
                noise.fill(z[offset : offset + end - first], indices[owner], first, end)
                offset += end - first
            owners = torch.arange(start, stop, device=self.device) // num_samples
            with autocast(self.device, self.precision):
                logits = self.model(torch.addcmul(x[owners], z, sigma))
            probabilities = logits.float().softmax(1).gather(1, labels[owners].unsqueeze(1)).squeeze(1)
            totals = totals.index_add(0, owners, probabilities)
            with torch.no_grad():
                counts.index_add_(0, owners * classes + logits.argmax(1), torch.ones_like(owners))
        return totals / num_samples, counts.view(batch_size, classes)


def build_engine(model: nn.Module, spec: RunSpec, device: torch.device) -> SamplingEngine:
    """The engine for a spec: its precision, memory format and chunk size (0: chosen per device).

    On a CPU this also keeps freed memory in the process (:func:`nrs_cli.devices.keep_freed_memory`).
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
