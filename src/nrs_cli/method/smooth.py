"""The smoothed classifier g: CERTIFY and PREDICT (Cohen et al.) with a per-element sigma.

``g(x) = argmax_c P(f(x + sigma * z) = c)``, ``z ~ N(0, I)``. :meth:`Smooth.sample` counts the
votes of ``f`` on noisy copies (the sampling engine); :meth:`Smooth.certify` turns counts into a
:class:`~nrs_cli.method.certificate.Certificate` (Theorem 3.1); :meth:`Smooth.predict` answers with
a binomial test, abstaining when unsure.
"""

from __future__ import annotations

import torch
from scipy.stats import binomtest
from torch import nn

from nrs_cli.errors import NrsError
from nrs_cli.method.certificate import ABSTAIN, Certificate, certificate, check_options, class_bounds
from nrs_cli.method.noise import GaussianNoise
from nrs_cli.method.sampling import SamplingEngine, prepare_model
from nrs_cli.method.sigma import Sigma, constant_sigma, validate_sigma


class Smooth:
    """A smoothed classifier g with per-element noise scales sigma.

    :param engine: runs the base classifier f on noisy inputs
    :param sigma: noise scales, one per input element (pixel units)
    :param seed: seeds the noise; with the inputs' dataset indices it fixes every draw
    """

    ABSTAIN = ABSTAIN

    def __init__(self, engine: SamplingEngine, sigma: Sigma, seed: int = 0):
        self.engine = engine
        self.sigma = sigma
        self.seed = seed

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        sigma: float | torch.Tensor | Sigma,
        num_classes: int,
        input_shape: tuple[int, ...] | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        seed: int = 0,
    ) -> Smooth:
        """The smoothed classifier of a model, as in Cohen et al.'s ``Smooth(model, num_classes, sigma)``.

        ``sigma`` is a number (isotropic; then ``input_shape`` is needed), a
        tensor of the input shape, or a :class:`~nrs_cli.method.sigma.Sigma`. The model
        takes raw pixels; it is moved to ``device`` and frozen.
        """
        if not isinstance(sigma, Sigma):
            if isinstance(sigma, torch.Tensor):
                sigma = Sigma(validate_sigma(sigma, tuple(sigma.shape), "sigma"), "sigma")
            elif input_shape is None:
                raise NrsError("a constant sigma needs the input_shape of the model's inputs")
            else:
                sigma = constant_sigma(float(sigma), input_shape)
        device = torch.device(device)
        engine = SamplingEngine(prepare_model(model, device), num_classes, tuple(sigma.values.shape), device, precision)
        return cls(engine, sigma, seed)

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        bound: str = "one-sided",
        indices: list[int] | None = None,
    ) -> list[Certificate]:
        """CERTIFY (Cohen et al., with Theorem 3.1's ellipsoid) for a batch of inputs.

        Draw n0 samples and take the most frequent class cA; draw n fresh
        samples and bound ``P(f(x + eps) = cA)`` from below (and, two-sided,
        the runner-up from above). With probability at least 1 - alpha over the
        samples, a returned class equals g(x) and g is constant on the ellipsoid
        ``|| delta / sigma || < R``; otherwise the certificate abstains.
        ``indices`` (default ``0..B-1``) are the inputs' dataset indices: they key the noise.
        """
        check_options(n0, n, alpha, bound)
        selection = self.sample(x, n0, "selection", indices)
        estimation = self.sample(x, n, "estimation", indices)
        certificates = []
        for counts_selection, counts_estimation in zip(selection, estimation):
            top = int(counts_selection.argmax())
            pA_lower, pB_upper = class_bounds(counts_estimation, top, alpha, bound)
            certificates.append(certificate(top, pA_lower, pB_upper, self.sigma))
        return certificates

    def predict(self, x: torch.Tensor, n: int, alpha: float, indices: list[int] | None = None) -> list[int]:
        """PREDICT (Cohen et al.): the top class if a two-sided binomial test against the
        runner-up rejects equality at level alpha, else ABSTAIN. With probability at
        least 1 - alpha a returned class equals g(x)."""
        check_options(1, n, alpha)
        predictions = []
        for counts in self.sample(x, n, "predict", indices):
            top2 = counts.argsort(descending=True, stable=True)[:2].tolist()
            count1, count2 = int(counts[top2[0]]), int(counts[top2[1]])
            significant = binomtest(count1, count1 + count2, p=0.5).pvalue <= alpha
            predictions.append(top2[0] if significant else ABSTAIN)
        return predictions

    def sample(self, x: torch.Tensor, num: int, phase: str, indices: list[int] | None = None) -> torch.Tensor:
        """Class counts ``(B, C)`` of ``f(x + sigma * z)`` over ``num`` samples per input."""
        indices = list(range(len(x))) if indices is None else indices
        return self.engine.count(x, indices, self.sigma.values, num, GaussianNoise(self.seed, phase))
