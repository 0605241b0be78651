"""Data-parallel training of one model on several processes (torchrun + DDP).

pacsim never starts processes itself: ``torchrun --nproc_per_node N -m pacsim train ...``
starts them and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; :func:`init_from_env`
joins the process group (NCCL on CUDA, gloo on the CPU). Once a group of more than one
process exists, :func:`pacsim.train.fit` wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel` and every rank reads only its share
of each global mini-batch, so the optimiser sees the same mean gradient as one process
with the same batch size (up to the order of floating-point sums).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from .device import resolve_device


def world() -> tuple[int, int] | None:
    """``(rank, world_size)`` inside a process group of two or more, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def is_main() -> bool:
    """True on rank 0 and outside any process group: the process that prints and writes."""
    w = world()
    return w is None or w[0] == 0


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | torch.device = "auto") -> torch.device:
    """Join the launcher's process group if there is one; return this rank's device.

    On CUDA each rank takes ``cuda:LOCAL_RANK`` and NCCL; on the CPU, gloo.
    """
    dev = resolve_device(device)
    if not launched() or world() is not None:
        return dev
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run one process")
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def finish() -> None:
    """Leave the process group (no-op outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over the ranks (unchanged outside a process group)."""
    if world() is None:
        return list(values)
    out = []
    for v in values:
        v = v.clone()
        dist.all_reduce(v)
        out.append(v)
    return out
