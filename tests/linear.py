"""A two-class linear base classifier, whose smoothed classifier is known in closed form.

f(x) = argmax(W x + b) with two classes is class 1 exactly when w.x + c > 0,
w = W1 - W0, c = b1 - b0. Under noise x + sigma * z the score w.(x + sigma*z) + c
is normal with mean w.x + c and standard deviation ||w * sigma||, so

    P(f(x + sigma * z) = 1) = Phi((w.x + c) / ||w * sigma||),

and the smoothed classifier g is the same linear classifier. Along the worst
direction the distance to g's boundary, in sigma units, is exactly
|w.x + c| / ||w * sigma|| = Phi^-1(pA): Theorem 3.1 is tight here.
"""

from __future__ import annotations

import torch
from scipy.stats import norm
from torch import nn

from nrs_cli.method.sampling import SamplingEngine, prepare_model

SHAPE = (1, 4, 4)


class Linear2(nn.Module):
    def __init__(self, w: torch.Tensor, c: float):
        super().__init__()
        self.linear = nn.Linear(w.numel(), 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.stack([torch.zeros_like(w).flatten(), w.flatten()]))
            self.linear.bias.copy_(torch.tensor([0.0, c]))
        self.w, self.c = w, c

    def forward(self, x):
        return self.linear(x.flatten(1))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() * self.w.double()).flatten(1).sum(1) + self.c

    def label(self, x: torch.Tensor) -> torch.Tensor:
        """The exact smoothed classifier g (equal to f for two linear classes)."""
        return (self.score(x) > 0).long()

    def p_top(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact P(f(x + sigma z) = g(x))."""
        spread = float((self.w.double() * sigma.double()).norm())
        return torch.from_numpy(norm.cdf(self.score(x).abs().numpy() / spread))

    def worst_direction(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Unit vector u (in sigma units) that moves x towards the boundary fastest: delta = R * sigma * u."""
        ws = (self.w * sigma).double()
        sign = torch.where(self.score(x) > 0, -1.0, 1.0).double().view(-1, 1, 1, 1)
        return sign * ws / ws.norm()


def linear_model(seed: int = 0, c: float = 0.1) -> Linear2:
    generator = torch.Generator().manual_seed(seed)
    return Linear2(torch.randn(SHAPE, generator=generator), c)


def linear_engine(model: Linear2, chunk_size: int = 64) -> SamplingEngine:
    return SamplingEngine(
        prepare_model(model, torch.device("cpu"), False), 2, SHAPE, torch.device("cpu"), "fp32", chunk_size
    )
