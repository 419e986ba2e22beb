"""Sigma as a picture (paper Fig. 3) and what it says about the model.

Each sigma is scaled linearly from black to white between two values taken
over all of its elements: its minimum and maximum (the paper), or with
``clip`` its ``clip`` and ``1 - clip`` quantiles, the elements beyond them
saturated. Figures clip 1% at each end: a few pixels the model ignores (an
image corner) can reach many times the sigma of the rest and would otherwise
leave the picture black. Colour sigmas use one range over all channels, not
one per channel, so a channel the model is less sensitive to stays brighter
(the paper's "colour bias"). Sigmas shown side by side share one range, taken
over all of their elements, and one colour bar: the same grey is the same
sigma in every image, so the images can be compared. Bright regions are where the smoothed
classifier tolerates a lot of noise (features the model barely uses); dark
regions are where it does not (the features it relies on).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from nrs_cli.method.sigma import Sigma  # noqa: E402
from nrs_cli.reports.style import STYLE, save_figure  # noqa: E402


def sigma_range(values: torch.Tensor | list[torch.Tensor], clip: float = 0.0) -> tuple[float, float]:
    """The sigma drawn black and the sigma drawn white: the ``clip`` and ``1 - clip`` quantiles of all elements
    (of every sigma, given several)."""
    tensors = values if isinstance(values, list) else [values]
    array = np.concatenate([v.detach().double().flatten().cpu().numpy() for v in tensors])
    return float(np.quantile(array, clip)), float(np.quantile(array, 1 - clip))


def sigma_to_image(values: torch.Tensor, clip: float = 0.0, bounds: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 image of a (C, H, W) sigma: (H, W) for one channel, (H, W, 3) for three.

    ``pixel = round(255 * clamp((sigma - low) / (high - low), 0, 1))`` with
    ``low, high = bounds``, by default ``sigma_range(values, clip)`` over every
    element, across channels (``clip=0``: min and max); ``low == high`` is mid-grey.
    """
    array = values.detach().double().cpu().numpy()
    low, high = bounds if bounds is not None else sigma_range(values, clip)
    scaled = np.full_like(array, 0.5) if high == low else np.clip((array - low) / (high - low), 0.0, 1.0)
    image = np.rint(scaled * 255).astype(np.uint8)
    if image.shape[0] == 1:
        return image[0]
    return np.transpose(image, (1, 2, 0))


def sigma_title(sigma: Sigma) -> str:
    meta = sigma.metadata
    parts = [str(meta["dataset"])[:40]] if meta.get("dataset") else []
    if isinstance(meta.get("init"), (int, float)):
        parts.append(f"from σ = {meta['init']:g}")
    if isinstance(meta.get("sub_epoch"), int) and meta["sub_epoch"]:
        parts.append(f"sub-epoch {meta['sub_epoch']}")
    return ", ".join(parts) or sigma.label


def plot_sigmas(
    sigmas: list[Sigma],
    out_stem: str | Path,
    colorbar: bool = True,
    columns: int | None = None,
    titles: list[str] | None = None,
    clip: float = 0.01,
) -> list[Path]:
    """A grid of sigma images on one scale (:func:`sigma_range` over all of them), shown once for the figure: a
    colour bar (grey images) or a line under the grid (colour images), each end marked ≤ or ≥ when it saturates
    elements (``clip`` > 0), values to three significant digits."""
    columns = columns or min(len(sigmas), 4)
    rows = math.ceil(len(sigmas) / columns)
    titles = titles or [sigma_title(s) for s in sigmas]
    bounds = sigma_range([s.values for s in sigmas], clip)
    below = min(float(s.values.min()) for s in sigmas) < bounds[0]
    above = max(float(s.values.max()) for s in sigmas) > bounds[1]
    with plt.rc_context(STYLE):
        size = (2.3 * columns + 0.6, 2.3 * rows)
        figure, axes = plt.subplots(rows, columns, figsize=size, squeeze=False, layout="constrained")
        for axis in axes.flat:
            axis.axis("off")
        for axis, sigma, title in zip(axes.flat, sigmas, titles):
            image = sigma_to_image(sigma.values, bounds=bounds)
            shown = axis.imshow(image, cmap="gray", vmin=0, vmax=255) if image.ndim == 2 else axis.imshow(image)
            axis.set_title("\n".join(textwrap.wrap(title, 30)), fontsize=8)
        ticks = np.linspace(bounds[0], bounds[1], 5) if bounds[1] > bounds[0] else np.array(bounds[:1])
        labels = [f"{value:#.3g}".rstrip(".") for value in ticks]  # three significant digits, 0.500 included
        labels[0], labels[-1] = ("≤" if below else "") + labels[0], ("≥" if above else "") + labels[-1]
        if image.ndim == 3:  # no colour bar for colours: the range in words
            figure.text(0.5, 0.0, f"σ from {labels[0]} (dark) to {labels[-1]} (bright) in every image", fontsize=7,
                        ha="center", va="top")  # fmt: skip
        elif colorbar:
            positions = (ticks - bounds[0]) / (bounds[1] - bounds[0]) * 255 if bounds[1] > bounds[0] else [127.5]
            bar = figure.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, ticks=positions)
            bar.ax.set_yticklabels(labels)
            bar.ax.tick_params(labelsize=7)
            bar.set_label("σ (one scale for all images)", fontsize=7)
        figure.suptitle("σ per input element (dark: low noise, bright: high noise)", fontsize=8)
        return save_figure(figure, Path(out_stem))


def robustness_report(sigma: Sigma, grid: int = 4, top: int = 3) -> str:
    """Markdown: the regions (and colour channels) with the most and least noise.

    The image is cut into ``grid x grid`` cells; a cell's score is its mean
    sigma relative to the whole image's mean. High: the model tolerates noise
    there (least sensitive); low: the model relies on it (most sensitive).
    """
    values, stats = sigma.values.double(), sigma.stats
    channels, height, width = values.shape
    overall = stats.mean
    cells = []
    for row in range(grid):
        for col in range(grid):
            top_, bottom = row * height // grid, (row + 1) * height // grid
            left, right = col * width // grid, (col + 1) * width // grid
            mean = float(values[:, top_:bottom, left:right].mean())
            cells.append((mean, f"rows {top_}-{bottom - 1}, columns {left}-{right - 1} ({_place(row, col, grid)})"))
    cells.sort(reverse=True)
    lines = [
        f"### {sigma_title(sigma)}",
        "",
        f"sigma over {channels}x{height}x{width} elements: mean {overall:.4g}, min {stats.min:.4g}, "
        f"max {stats.max:.4g}, geometric mean {stats.gm:.4g}",
        "",
        f"Most noise tolerated (least used by the model), {grid}x{grid} cells:",
    ]
    lines += [f"- {where}: mean sigma {mean:.4g} ({mean / overall:.2f}x average)" for mean, where in cells[:top]]
    lines += ["", "Least noise tolerated (what the model relies on):"]
    lines += [f"- {where}: mean sigma {mean:.4g} ({mean / overall:.2f}x average)" for mean, where in cells[-top:][::-1]]
    if channels == 3:
        names = ("red", "green", "blue")
        means = [float(values[c].mean()) for c in range(3)]
        lines += [
            "",
            "Per channel: "
            + ", ".join(f"{n} {m:.4g}" for n, m in zip(names, means))
            + f" (most noise on {names[int(np.argmax(means))]}, least on {names[int(np.argmin(means))]})",
        ]
    return "\n".join(lines) + "\n"


def _place(row: int, col: int, grid: int) -> str:
    vertical = "top" if row < grid / 2 - 0.5 else "bottom" if row > grid / 2 - 0.5 else "middle"
    horizontal = "left" if col < grid / 2 - 0.5 else "right" if col > grid / 2 - 0.5 else "centre"
    edge = row in (0, grid - 1) or col in (0, grid - 1)
    return f"{vertical} {horizontal}{', edge' if edge else ', interior'}"
