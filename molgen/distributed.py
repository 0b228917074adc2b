"""PyTorch DDP under ``torchrun``: process-group set-up and the few collectives the loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from molgen.errors import MolgenError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str, local_rank: int = 0, *, distributed: bool = False,
                   cuda_available: bool | None = None) -> torch.device:
    """``--device`` -> a torch device with an index where CUDA needs one.

    ``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``. ``cuda`` (no index) means
    ``cuda:LOCAL_RANK`` (``torch.cuda.set_device`` refuses an index-less device); under torchrun every
    rank takes its local GPU whatever index was given. One-line :class:`MolgenError` for a device
    torch does not know or CUDA that is not there.
    """
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    try:
        device = torch.device(pref)
    except (RuntimeError, ValueError):
        raise MolgenError(f"unknown device '{pref}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not cuda:
            raise MolgenError(f"--device {pref}: CUDA is not available on this machine (use --device cpu or auto)")
        if device.index is None or distributed:
            device = torch.device(f"cuda:{local_rank}")
    return device


def setup(device_pref: str) -> tuple[DistInfo, torch.device]:
    """Init the process group if launched by torchrun (NCCL on CUDA, gloo on CPU); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_pref, info.local_rank, distributed=info.enabled)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif info.enabled and "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks share the cores: oversubscribed OpenMP threads slow each rank down many times
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(info.world_size)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if info.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (e.g. a signal arrived)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
