"""Running under ``torchrun``: process group, device per local rank, reductions.

``torchrun --nproc-per-node K -m nrs_cli certify ...`` starts K processes with
RANK, LOCAL_RANK and WORLD_SIZE set; each joins the process group (NCCL on
GPUs, gloo on CPUs) and takes the GPU of its local rank. Without those
variables everything runs in one process.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from nrs_cli.collective import SINGLE_PROCESS, Collective


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class TorchDistributed(Collective):
    """Reductions over a torch.distributed process group."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, items: list[Any]) -> list[Any]:
        parts: list[list[Any]] = [[] for _ in range(self.world)]
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def barrier(self) -> None:
        dist.barrier()


def collective_for(device: torch.device) -> tuple[Collective, torch.device]:
    """The collective and device of this process: one process, or a rank of a torchrun job."""
    if not launched_by_torchrun():
        return SINGLE_PROCESS, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return TorchDistributed(), device
