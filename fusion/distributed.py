"""Runs under ``torchrun``: the process group, and the few collectives scoring and training need.

Scoring: each rank runs the members on its shard of images, rank 0 gathers and evaluates. Training: each rank
computes gradients on its share of the global batch, :meth:`DistContext.all_reduce_mean` averages them. The
backend is NCCL when CUDA is available (one GPU per rank, ``LOCAL_RANK``), gloo on CPU; objects (column arrays of
predictions) travel with ``gather_object`` / ``broadcast_object_list``, which work over both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["DistContext", "init_distributed"]


@dataclass
class DistContext:
    """``rank`` and ``world_size`` of this process; ``owned`` when this module started the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` in rank order on rank 0; ``None`` elsewhere."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out

    def all_reduce_mean(self, tensor: Tensor) -> Tensor:
        """Average ``tensor`` over ranks, in place (a no-op in a single process); returns it."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False


def init_distributed() -> DistContext:
    """Join the ``torchrun`` process group (``WORLD_SIZE`` > 1 in the environment), or run as a single process.

    The backend is NCCL when CUDA is available with a GPU per local rank (each rank on ``cuda:LOCAL_RANK``),
    gloo otherwise; ``FUSION_DIST_BACKEND=gloo|nccl`` forces one.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    backend = os.environ.get("FUSION_DIST_BACKEND") or ("nccl" if cuda else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"FUSION_DIST_BACKEND must be nccl or gloo, got {backend!r}")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if backend == "nccl":
        dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group(backend="gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owned=True)
