"""Multi-GPU / multi-node context of :func:`medgen.train.fit`: :class:`DistContext`.

``torch.distributed`` directly (gloo on CPU, nccl on CUDA), launched by torchrun
(``torchrun --nproc_per_node 2 -m medgen.cli train ...``); :meth:`DistContext.setup` calls
``init_process_group`` itself when ``WORLD_SIZE > 1``. A group's gradients (tensors of any
shape) are averaged with one flat ``all_reduce`` per dtype (not DDP: docs/paper_notes.md#train);
buffers are broadcast from rank 0 at the start; rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from medgen.utils import default_device


@dataclass
class DistContext:
    """Rank, world size and device of this process; owns the process group if it created it."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @classmethod
    def setup(cls, device: str | torch.device | None = None) -> "DistContext":
        """Join the torchrun process group (creating it when ``WORLD_SIZE > 1``) and pick the device."""
        owns = False
        if not (dist.is_available() and dist.is_initialized()) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            owns = True
        active = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if active else (0, 1)
        dev = torch.device(device) if device is not None else default_device()
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return cls(rank, world, dev, owns)

    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""
        if self.world_size > 1:
            dist.barrier()

    def all_mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` in place over ranks: one flat all_reduce per dtype."""
        if self.world_size == 1 or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            flat /= self.world_size
            for t, chunk in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(chunk.view_as(t))

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank."""
        if self.world_size > 1:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def same_on_all_ranks(self, value: Any, what: str) -> None:
        """Raise if ``value`` differs between ranks."""
        if self.world_size == 1:
            return
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        if len(set(map(str, values))) > 1:
            raise RuntimeError(f"ranks disagree on {what}: {values}; out_dir must be on a file system all ranks share")

    def close(self) -> None:
        """Destroy the process group if :meth:`setup` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
