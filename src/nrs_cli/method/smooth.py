"""The smoothed classifier g: CERTIFY and PREDICT (Cohen et al.) with a per-element sigma.

``g(x) = argmax_c P(f(x + sigma * z) = c)``, ``z ~ N(0, I)``. :class:`Smooth` takes Cohen et al.'s
arguments, ``Smooth(base_classifier, num_classes, sigma)``; :meth:`Smooth.certify` counts the
votes of ``f`` on noisy copies (the sampling engine) and turns them into a
:class:`~nrs_cli.method.certificate.Certificate` (Theorem 3.1), which unpacks as Cohen's
``(prediction, radius)``; :meth:`Smooth.predict` answers with a binomial test, abstaining when unsure.

The caller's model is used as it is: on its own device, in its dtype and memory format. Each call
switches its modules to eval mode and runs under ``torch.inference_mode``; every module's training
flag is restored afterwards, and nothing else about the model changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import numbers
from typing import Iterator

import torch
from scipy.stats import binomtest
from torch import nn

from nrs_cli.errors import NrsError
from nrs_cli.io.models import check_outputs
from nrs_cli.method.certificate import ABSTAIN, Certificate, certificate, check_options, class_bounds
from nrs_cli.method.noise import GaussianNoise
from nrs_cli.method.sampling import SamplingEngine, borrowed
from nrs_cli.method.sigma import Sigma, constant_sigma, validate_sigma

PRECISIONS = ("fp32", "bf16")


class Smooth:
    """A smoothed classifier g with per-element noise scales sigma (pixel units).

    :param base_classifier: the network f, taking raw pixels in [0, 1]; float32 parameters
    :param num_classes: how many class scores f returns
    :param sigma: a number (isotropic: the input shape is learned from the first input), a tensor
        of the input shape, or a :class:`~nrs_cli.method.sigma.Sigma`
    :param precision: ``fp32``, or ``bf16`` autocast (the base classifier is then the bf16 network)
    :param seed: fixes the noise of every call (default: fresh noise per call, see :meth:`certify`)
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: nn.Module,
        num_classes: int,
        sigma: float | torch.Tensor | Sigma,
        *,
        precision: str = "fp32",
        seed: int | None = None,
    ):
        if not isinstance(base_classifier, nn.Module):
            raise NrsError(
                f"Smooth(base_classifier, num_classes, sigma): base_classifier must be a torch.nn.Module, "
                f"got {type(base_classifier).__name__}"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise NrsError(
                f"Smooth(base_classifier, num_classes, sigma): num_classes must be an integer of at least 2, "
                f"got {num_classes!r}"
            )
        if precision not in PRECISIONS:
            raise NrsError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma, self._constant = _as_sigma(sigma)
        self.precision = precision
        self.seed = None if seed is None else _checked_seed(seed)
        self._engine: SamplingEngine | None = None  # made at the first call, for the input shape
        self._lent = True  # the caller's model: checked, borrowed per call, inputs on its device

    @classmethod
    def from_engine(cls, engine: SamplingEngine, sigma: Sigma, seed: int = 0) -> Smooth:
        """The smoothed classifier of a prepared engine (the commands' path): ``seed`` keys the noise
        with the inputs' dataset indices, and inputs may be on any device (the engine moves them)."""
        smooth = cls(engine.model, engine.num_classes, sigma, precision=engine.precision, seed=seed)
        smooth._engine, smooth._lent = engine, False
        return smooth

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int | None = None,
        *,
        bound: str = "one-sided",
        seed: int | None = None,
        indices: int | list[int] | None = None,
    ) -> Certificate | list[Certificate]:
        """CERTIFY (Cohen et al., with Theorem 3.1's ellipsoid): one input ``(C, H, W)`` gives one
        :class:`~nrs_cli.method.certificate.Certificate` (``prediction, radius = ...``), a batch
        ``(B, C, H, W)`` a list of them.

        Draw n0 samples and take the most frequent class cA; draw n fresh samples and bound
        ``P(f(x + eps) = cA)`` from below (and, two-sided, the runner-up from above). With
        probability at least 1 - alpha over the samples, a returned class equals g(x) and g is
        constant on the ellipsoid ``|| delta / sigma || < R``; otherwise the certificate abstains.
        ``batch_size``: noisy samples per forward pass (as in Cohen et al.; results do not depend
        on it). Noise: fresh for every call, drawn from torch's global generator (``torch.manual_seed``
        repeats it), unless a ``seed`` (here or to ``Smooth``) or ``indices`` are given; then sample
        j of input i depends only on (seed, ``indices[i]``, j), so a dataset index and the seed of
        ``nrs certify`` give that command's certificate.
        """
        check_options(n0, n, alpha, bound)
        batch, single, keys = self._inputs(x, indices)
        noise_seed = self._noise_seed(seed, indices)
        with self._running(batch, batch_size) as engine:
            sigma = self.sigma.values
            selection = engine.count(batch, keys, sigma, n0, GaussianNoise(noise_seed, "selection"))
            estimation = engine.count(batch, keys, sigma, n, GaussianNoise(noise_seed, "estimation"))
        certificates = []
        for counts_selection, counts_estimation in zip(selection, estimation):
            top = int(counts_selection.argmax())
            pA_lower, pB_upper = class_bounds(counts_estimation, top, alpha, bound)
            certificates.append(certificate(top, pA_lower, pB_upper, self.sigma))
        return certificates[0] if single else certificates

    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int | None = None,
        *,
        seed: int | None = None,
        indices: int | list[int] | None = None,
    ) -> int | list[int]:
        """PREDICT (Cohen et al.): the top class if a two-sided binomial test against the runner-up
        rejects equality at level alpha, else ABSTAIN (-1); one input gives a class, a batch a list.
        With probability at least 1 - alpha a returned class equals g(x). Noise as in :meth:`certify`."""
        check_options(1, n, alpha)
        batch, single, keys = self._inputs(x, indices)
        noise_seed = self._noise_seed(seed, indices)
        with self._running(batch, batch_size) as engine:
            votes = engine.count(batch, keys, self.sigma.values, n, GaussianNoise(noise_seed, "predict"))
        predictions = []
        for counts in votes:
            top2 = counts.argsort(descending=True, stable=True)[:2].tolist()
            count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
            significant = binomtest(count1, count1 + count2, p=0.5).pvalue <= alpha
            predictions.append(top2[0] if significant else ABSTAIN)
        return predictions[0] if single else predictions

    def _inputs(self, x: torch.Tensor, indices: int | list[int] | None) -> tuple[torch.Tensor, bool, list[int]]:
        """The batch ``(B, C, H, W)``, whether one input was given, and the inputs' noise keys; every
        mismatch with the model or sigma is a one-line error."""
        if not isinstance(x, torch.Tensor):
            raise NrsError(f"x must be a torch.Tensor of one input (C, H, W) or a batch (B, C, H, W), got {type(x)}")
        if x.ndim not in (3, 4) or x.numel() == 0:
            raise NrsError(f"x must be one input (C, H, W) or a batch (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise NrsError(f"x must hold floating-point pixels in [0, 1], got {x.dtype} (e.g. x.float() / 255)")
        device = model_device(self.base_classifier)
        if self._lent and x.device != device:
            raise NrsError(f"x is on {x.device} but the model is on {device}: move x there with x.to('{device}')")
        single = x.ndim == 3
        batch = x.unsqueeze(0) if single else x
        self._match_sigma_to(tuple(batch.shape[1:]))
        return batch, single, _keys(indices, len(batch))

    def _match_sigma_to(self, shape: tuple[int, ...]) -> None:
        """Give a constant sigma the shape of the first inputs; refuse inputs of another shape than sigma's."""
        if self.sigma is None:  # a constant: shaped like the first input
            self.sigma = constant_sigma(self._constant, shape)
        expected = tuple(self.sigma.values.shape)
        if shape != expected:
            raise NrsError(
                f"x holds inputs of shape {'x'.join(map(str, shape))}, but sigma has shape "
                f"{'x'.join(map(str, expected))} (one noise scale per input element)"
            )

    def _noise_seed(self, seed: int | None, indices) -> int:
        if seed is not None:
            return _checked_seed(seed)
        if self.seed is not None:
            return self.seed
        if indices is not None:
            return 0
        return int(torch.randint(0, 2**62, ()).item())  # fresh noise, as Cohen et al.'s torch.randn draws it

    @contextlib.contextmanager
    def _running(self, batch: torch.Tensor, batch_size: int | None) -> Iterator[SamplingEngine]:
        """The engine for these inputs, with the model borrowed in eval mode for the call."""
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
            raise NrsError(f"batch_size must be a positive integer (samples per forward pass), got {batch_size!r}")
        if batch_size is not None and batch_size < 1:
            raise NrsError(f"batch_size must be a positive integer (samples per forward pass), got {batch_size}")
        shape, model = tuple(batch.shape[1:]), self.base_classifier
        with borrowed(model):
            moved = self._lent and self._engine is not None and self._engine.device != batch.device
            if self._engine is None or self._engine.input_shape != shape or moved:
                self._engine = self._engine_for(shape, batch.device)
            engine = self._engine
            if batch_size is not None:  # the same engine, another number of samples per forward pass
                engine = SamplingEngine(model, self.num_classes, shape, engine.device, self.precision, batch_size)
            yield engine

    def _engine_for(self, shape: tuple[int, ...], device: torch.device) -> SamplingEngine:
        """A new engine on the caller's model, after checking that it gives num_classes float scores."""
        dtypes = {p.dtype for p in self.base_classifier.parameters() if p.is_floating_point()}
        if dtypes - {torch.float32}:
            raise NrsError(
                f"the model's parameters are {', '.join(sorted(map(str, dtypes)))}, but nrs feeds it float32 inputs: "
                "use a float32 model (model.float()), with precision='bf16' for bfloat16 autocast"
            )
        check_outputs(self.base_classifier, shape, self.num_classes, "the model", device)
        return SamplingEngine(self.base_classifier, self.num_classes, shape, device, self.precision)


def model_device(model: nn.Module) -> torch.device:
    """Where a model's first parameter (or buffer) lives; the CPU for a model without any."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _as_sigma(sigma: float | torch.Tensor | Sigma) -> tuple[Sigma | None, float]:
    """A Sigma, or (None, the constant) for a number, whose shape comes with the first input."""
    if isinstance(sigma, Sigma):  # checked like a tensor: a Sigma can be built from any values
        if not isinstance(sigma.values, torch.Tensor):
            raise NrsError(f"sigma: a Sigma's values must be a tensor, got {type(sigma.values).__name__}")
        values = validate_sigma(sigma.values, tuple(sigma.values.shape), sigma.source or "sigma")
        return dataclasses.replace(sigma, values=values), math.nan
    if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
        return Sigma(validate_sigma(sigma, tuple(sigma.shape), "sigma"), "sigma"), math.nan
    value = float(sigma.item()) if isinstance(sigma, torch.Tensor) else sigma
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NrsError(
            f"Smooth(base_classifier, num_classes, sigma): sigma must be a number, a tensor or a Sigma, "
            f"got {type(sigma).__name__}"
        )
    constant_sigma(value, (1,))  # positive and finite
    return None, float(value)


def _checked_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise NrsError(f"seed must be an integer from 0 to 2^63 - 1, got {seed!r}")
    return seed


def _keys(indices: int | list[int] | None, count: int) -> list[int]:
    """The inputs' noise keys: their dataset indices (default 0, 1, ...); one integer (numpy's too) for one input."""
    if indices is None:
        return list(range(count))
    keys = [indices] if isinstance(indices, numbers.Integral) else indices
    whole = isinstance(keys, list) and all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in keys)
    if not whole or len(keys) != count or min(keys, default=0) < 0:
        raise NrsError(f"indices must give one non-negative integer per input ({count}), got {str(indices)[:60]}")
    return [int(k) for k in keys]
