"""Reproducible Gaussian noise: the noise of input i depends only on (seed, i, phase).

The samples of one input are cut into blocks of :data:`NOISE_BLOCK`; block b
of input i in a phase is drawn from a generator seeded with a hash of
``(seed, phase, i, b)``, always as a whole block. Sample j of input i is
therefore the same number whatever the batch size, the chunking, the number
of samples asked for, or the process that draws it. (The CPU and CUDA
generators differ, so a CPU run and a GPU run draw different noise.)
"""

from __future__ import annotations

import hashlib

import torch

NOISE_BLOCK = 64  # samples per independently seeded block


def block_seed(seed: int, phase: str, index: int, block: int) -> int:
    """A 63-bit seed for one block of one input's noise."""
    digest = hashlib.blake2b(f"{seed}/{phase}/{index}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class GaussianNoise:
    """Standard normal noise z for the samples of many inputs in one phase."""

    def __init__(self, seed: int, phase: str):
        self.seed = seed
        self.phase = phase
        self._generators: dict[torch.device, torch.Generator] = {}

    def fill(self, out: torch.Tensor, index: int, start: int, stop: int) -> torch.Tensor:
        """Write samples ``start..stop-1`` of input ``index`` into ``out`` (shape (stop-start, ...))."""
        generator = self._generator(out.device)
        shape = (NOISE_BLOCK, *out.shape[1:])
        position = start
        while position < stop:
            block, first = divmod(position, NOISE_BLOCK)
            take = min(NOISE_BLOCK - first, stop - position)
            target = out[position - start : position - start + take]
            generator.manual_seed(block_seed(self.seed, self.phase, index, block))
            if take == NOISE_BLOCK:
                torch.randn(shape, generator=generator, out=target)
            else:  # part of a block: draw it whole so its numbers do not depend on the cut
                target.copy_(torch.randn(shape, generator=generator, device=out.device)[first : first + take])
            position += take
        return out

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]
