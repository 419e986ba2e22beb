"""The house style of figures: sizes and fonts for a paper column, PNG and PDF side by side."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window

import matplotlib.pyplot as plt  # noqa: E402

from nrs_cli.io.serialization import atomic_write_bytes  # noqa: E402

FIGURE_SIZE = (4.8, 3.4)  # inches: one column of a two-column paper at about 1.4x, fonts stay legible
STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.dpi": 200,
}


def save_figure(figure, out_stem: Path) -> list[Path]:
    """Write the figure as PNG and PDF next to each other; returns both paths."""
    paths = [out_stem.with_name(out_stem.name + suffix) for suffix in (".png", ".pdf")]
    for path in paths:  # rendered in memory, then renamed into place: never written through a link
        rendered = io.BytesIO()
        figure.savefig(rendered, format=path.suffix[1:], bbox_inches="tight")
        atomic_write_bytes(rendered.getvalue(), path)
    plt.close(figure)
    return paths


def add_note(figure, text: str) -> None:
    if text:
        figure.text(0.01, -0.02, text, fontsize=6.5, color="0.35", ha="left", va="top")
