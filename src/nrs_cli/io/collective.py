"""Reductions across processes, so the same code runs alone or under ``torchrun``.

A run sees a :class:`Collective`: in a single process every reduction is the
identity; under ``torch.distributed`` (see :mod:`nrs_cli.io.distributed`) sums
are all-reduced and lists gathered in rank order.
"""

from __future__ import annotations

from typing import Any

import torch


class Collective:
    """One process: rank 0 of a world of 1."""

    rank = 0
    world = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files."""
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes, in place."""
        return tensor

    def gather(self, items: list[Any]) -> list[Any]:
        """Every process's items, concatenated in rank order (on every process)."""
        return list(items)

    def barrier(self) -> None:
        """Wait until every process gets here."""


SINGLE_PROCESS = Collective()
