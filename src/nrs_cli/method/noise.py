"""Reproducible Gaussian noise: sample j of input i depends only on (seed, phase, i, j).

Never on the batch size, the chunking, the number of samples asked for, the
process that draws it or the point a run resumed from. Two generators keep
that promise:

- **blocks** (the CPU default): the samples of one input are cut into blocks
  of :data:`NOISE_BLOCK`; block b of input i is drawn whole from a generator
  seeded with a hash of ``(seed, phase, i, b)``. Fast on a CPU, but one
  ``manual_seed`` and one ``randn`` per block: on a GPU that is thousands of
  tiny launches per chunk.
- **counter** (the CUDA default): Philox4x32-10 (Salmon et al., "Parallel
  random numbers: as easy as 1, 2, 3", 2011; the generator inside cuRAND),
  keyed by a 64-bit hash of ``(seed, phase, i)`` and counting over
  ``(sample j, element group g)``; each call gives four 32-bit words, turned
  by the Box-Muller transform into the normals of elements 4g..4g+3. It is a
  pure function of its counters, so a whole chunk is one elementwise
  computation: on CUDA it is compiled with ``torch.compile`` into one fused
  kernel; the same torch code runs eagerly on a CPU, where the tests check it.

The 32-bit words live in int64 tensors. The two generators draw different numbers, as do CPU
and CUDA within one; each is reproducible on its own device.
"""

from __future__ import annotations

import functools
import hashlib
import math

import torch

NOISE_BLOCK = 64  # samples per independently seeded block (the blocks generator)
MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # Philox4x32 multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key increments (golden ratio, sqrt(3) - 1)
PHILOX_ROUNDS = 10


def block_seed(seed: int, phase: str, index: int, block: int) -> int:
    """A 63-bit seed for one block of one input's noise (the blocks generator)."""
    digest = hashlib.blake2b(f"{seed}/{phase}/{index}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def input_key(seed: int, phase: str, index: int) -> tuple[int, int]:
    """The two 32-bit Philox key words of one input's noise (the counter generator)."""
    digest = hashlib.blake2b(f"{seed}/{phase}/{index}".encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value & MASK32, value >> 32


def _mulhilo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for 32-bit ``a`` (int64 tensor) and a 32-bit constant.

    The 64-bit product may wrap around in int64; its bits are still those of the unsigned product,
    and the masks read the two words from them (the known-answer tests check this on every device).
    """
    product = a * b
    return (product >> 32) & MASK32, product & MASK32


def philox4x32(counter: tuple, key: tuple, rounds: int = PHILOX_ROUNDS) -> tuple:
    """Philox4x32-R of four 32-bit counter words under two key words (int64 tensors or ints, broadcast)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
        high0, low0 = _mulhilo(c0, PHILOX_M[0])
        high1, low1 = _mulhilo(c2, PHILOX_M[1])
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0
    return c0, c1, c2, c3


def counter_normals(keys: torch.Tensor, samples: torch.Tensor, dimension: int) -> torch.Tensor:
    """Standard normals ``(rows, dimension)``: row r is sample ``samples[r]`` of the input keyed by ``keys[r]``.

    ``keys`` is (rows, 2) int64 (see :func:`input_key`), ``samples`` (rows,) int64.
    Element e of a row comes from Philox counter ``(e // 4, sample, 0, 0)``:
    two Box-Muller pairs ``sqrt(-2 ln u) (cos 2 pi v, sin 2 pi v)`` from its four words.
    """
    groups = (dimension + 3) // 4
    counter = (
        torch.arange(groups, device=keys.device, dtype=torch.int64).view(1, -1),
        samples.view(-1, 1),
        torch.zeros((), device=keys.device, dtype=torch.int64),
        torch.zeros((), device=keys.device, dtype=torch.int64),
    )
    words = philox4x32(counter, (keys[:, 0:1], keys[:, 1:2]))
    scale = 2.0**-32
    normals = []
    for radius_word, angle_word in ((words[0], words[1]), (words[2], words[3])):
        radius = torch.sqrt(-2.0 * torch.log((radius_word + 1).to(torch.float32) * scale))  # u in (0, 1]
        angle = (2 * math.pi * scale) * angle_word.to(torch.float32)
        normals += [radius * torch.cos(angle), radius * torch.sin(angle)]
    return torch.stack(normals, dim=-1).reshape(len(keys), groups * 4)[:, :dimension]


@functools.cache
def _compiled_counter_normals():
    """One fused kernel on CUDA; the eager function if compiling is not possible here."""
    try:
        return torch.compile(counter_normals, dynamic=True)
    except Exception:  # noqa: BLE001 - no compiler for this platform: the eager ops compute the same numbers
        return counter_normals


class GaussianNoise:
    """Standard normal noise z for the samples of many inputs in one phase.

    :param seed: the run's seed
    :param phase: what the noise is for (``selection``, ``estimation``, ``optimize/3/17``, ...)
    :param counter: use the counter generator (None: on CUDA devices only)
    """

    def __init__(self, seed: int, phase: str, counter: bool | None = None):
        self.seed = seed
        self.phase = phase
        self.counter = counter

    def uses_counter(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.counter is None else self.counter

    def inputs(self, indices: list[int], num_samples: int, device: torch.device) -> InputsNoise:
        """The noise of ``num_samples`` samples of each of these inputs (dataset indices), laid end to end."""
        generator = CounterNoise if self.uses_counter(device) else BlockNoise
        return generator(self.seed, self.phase, list(indices), num_samples, device)

    def fill(self, out: torch.Tensor, index: int, start: int, stop: int) -> torch.Tensor:
        """Write samples ``start..stop-1`` of input ``index`` into ``out`` (shape (stop-start, ...))."""
        return self.inputs([index], stop, out.device).fill(out, start)


class InputsNoise:
    """The samples of a batch of inputs, flattened: position p is sample ``p % num_samples`` of input
    ``indices[p // num_samples]``. Two generators implement :meth:`draw`."""

    def __init__(self, seed: int, phase: str, indices: list[int], num_samples: int, device: torch.device):
        self.seed = seed
        self.phase = phase
        self.indices = indices
        self.num_samples = num_samples

    def fill(self, out: torch.Tensor, start: int) -> torch.Tensor:
        """Write flattened positions ``start .. start + len(out) - 1`` into ``out`` (rows, *shape)."""
        with torch.profiler.record_function("nrs.noise"):  # what the device check's profile counts as noise
            return self.draw(out, start)

    def draw(self, out: torch.Tensor, start: int) -> torch.Tensor:
        raise NotImplementedError


class BlockNoise(InputsNoise):
    """The blocks generator: block b of input i drawn whole from a generator seeded by ``(seed, phase, i, b)``."""

    def draw(self, out: torch.Tensor, start: int) -> torch.Tensor:
        generator = torch.Generator(device=out.device)
        shape = (NOISE_BLOCK, *out.shape[1:])
        position, stop = start, start + len(out)
        while position < stop:
            owner, sample = divmod(position, self.num_samples)
            block, first = divmod(sample, NOISE_BLOCK)
            take = min(NOISE_BLOCK - first, self.num_samples - sample, stop - position)
            target = out[position - start : position - start + take]
            generator.manual_seed(block_seed(self.seed, self.phase, self.indices[owner], block))
            if take == NOISE_BLOCK:
                torch.randn(shape, generator=generator, out=target)
            else:  # part of a block: draw it whole so its numbers do not depend on the cut
                target.copy_(torch.randn(shape, generator=generator, device=out.device)[first : first + take])
            position += take
        return out


class CounterNoise(InputsNoise):
    """The counter generator: Philox keyed by ``(seed, phase, i)``, one elementwise computation per chunk.
    The keys are made once, on the device."""

    def __init__(self, seed: int, phase: str, indices: list[int], num_samples: int, device: torch.device):
        super().__init__(seed, phase, indices, num_samples, device)
        keys = [input_key(seed, phase, index) for index in indices]
        self.keys = torch.tensor(keys, dtype=torch.int64).to(device, non_blocking=True)

    def draw(self, out: torch.Tensor, start: int) -> torch.Tensor:
        flat = torch.arange(start, start + len(out), device=out.device)
        generate = _compiled_counter_normals() if out.device.type == "cuda" else counter_normals
        normals = generate(self.keys[flat // self.num_samples], flat % self.num_samples, out[0].numel())
        return out.copy_(normals.view(out.shape))
