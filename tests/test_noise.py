"""The counter generator (CUDA's noise), checked on the CPU with the same code: Philox4x32-10 against its
published known answers, then the normals it makes: moments, a Kolmogorov-Smirnov test against N(0, 1),
independence across inputs, samples, elements and phases, and batch invariance of whole chunks."""

import numpy as np
import pytest
import torch
from scipy import stats

from nrs_cli.method.noise import GaussianNoise, counter_normals, input_key, philox4x32

# Random123's kat_vectors for philox4x32-10: counter words, key words -> output words.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_gives_the_published_known_answers(counter, key, expected):
    words = philox4x32(tuple(torch.tensor([c], dtype=torch.int64) for c in counter), key)
    assert tuple(int(w) for w in words) == expected


def normals(seed=0, phase="estimation", index=7, samples=range(2000), dimension=250):
    keys = torch.tensor([input_key(seed, phase, index)], dtype=torch.int64).expand(len(samples), 2)
    return counter_normals(keys, torch.tensor(list(samples), dtype=torch.int64), dimension)


def test_counter_normals_are_standard_normal():
    z = normals().double().flatten().numpy()  # 500,000 numbers of one input
    assert abs(z.mean()) < 4 / np.sqrt(len(z)) and abs(z.var() - 1) < 4 * np.sqrt(2 / len(z))
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(stats.skew(z)) < 0.02 and abs(stats.kurtosis(z)) < 0.04
    assert np.isfinite(z).all() and np.abs(z).max() < 6.7  # 32-bit uniforms: |z| <= sqrt(2 ln 2^32)


def test_counter_normals_are_independent_across_inputs_samples_elements_and_phases():
    base = normals().flatten()
    others = {
        "input": normals(index=8).flatten(),
        "phase": normals(phase="selection").flatten(),
        "seed": normals(seed=1).flatten(),
        "sample": normals(samples=range(1, 2001)).flatten(),
    }
    bound = 4 / np.sqrt(len(base))
    for name, other in others.items():
        assert abs(float(torch.corrcoef(torch.stack([base, other]))[0, 1])) < bound, name
    z = normals().double()
    neighbours = torch.corrcoef(torch.stack([z[:, :-1].flatten(), z[:, 1:].flatten()]))[0, 1]
    pairs = torch.corrcoef(torch.stack([z[:, 0::4].flatten(), z[:, 1::4].flatten()]))[0, 1]  # a Box-Muller pair
    assert abs(float(neighbours)) < bound and abs(float(pairs)) < 2 * bound
    squares = torch.corrcoef(torch.stack([z[:, 0::4].flatten() ** 2, z[:, 1::4].flatten() ** 2]))[0, 1]
    assert abs(float(squares)) < 2 * bound  # cos and sin of one radius: uncorrelated in the square too


def test_whole_chunks_equal_one_input_at_a_time():
    noise = GaussianNoise(5, "estimation", counter=True)
    shape = (3, 4, 5)
    indices = [3, 99, 12]
    flat = noise.inputs(indices, 70, torch.device("cpu")).fill(torch.empty(210, *shape), 0)
    for k, index in enumerate(indices):
        alone = noise.fill(torch.empty(70, *shape), index, 0, 70)
        assert torch.equal(flat[70 * k : 70 * (k + 1)], alone)
    middle = noise.inputs(indices, 70, torch.device("cpu")).fill(torch.empty(90, *shape), 50)  # a chunk's cut
    assert torch.equal(middle, flat[50:140])
    assert torch.equal(noise.fill(torch.empty(30, *shape), 99, 40, 70), flat[110:140])  # a resume point
