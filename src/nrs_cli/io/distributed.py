"""Running under ``torchrun``: process group, device per local rank, reductions.

``torchrun --nproc-per-node K -m nrs_cli certify ...`` starts K processes with
RANK, LOCAL_RANK and WORLD_SIZE set; each joins the process group (NCCL on
GPUs, gloo on CPUs) and takes the GPU of its local rank. Without those
variables everything runs in one process.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.distributed as dist

from nrs_cli.io.collective import SINGLE_PROCESS, Collective


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


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[tuple[Collective, torch.device]]:
    """This process's collective and device: one process, or a rank of a torchrun job.

    Under torchrun the process group is created here (NCCL for CUDA, gloo for
    CPU), each rank takes the GPU of its local rank, and the group is torn
    down on the way out.
    """
    if not launched_by_torchrun():
        yield SINGLE_PROCESS, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield TorchDistributed(), device
    finally:
        dist.destroy_process_group()
