"""Several processes, one job: joining a torchrun job and the few collectives the library needs.

A single process is a job of one: every helper here is then a no-op, so the trainer and the
evaluator have one code path. Under `torchrun --nproc-per-node N -m pixelrec ...` (or any launcher
that sets RANK / WORLD_SIZE / MASTER_ADDR, or a caller that initialised torch.distributed itself)
the process joins the group: NCCL when it trains on a GPU, gloo on the CPU.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pixelrec.errors import UserError


@dataclass(frozen=True)
class Job:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The one process that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """A process group is up (collectives must be called by every rank)."""
        return dist.is_available() and dist.is_initialized()

    def share(self, n: int, rank: int | None = None) -> slice:
        """The contiguous part of n things (examples, users, items) that `rank` (default: this one) handles."""
        r = self.rank if rank is None else rank
        return slice(n * r // self.world, n * (r + 1) // self.world)


SINGLE = Job()


def current() -> Job:
    """The job as torch.distributed sees it now (a job of one when no group is up)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Job(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def join(device_name: str = "auto", timeout_minutes: float = 30.0) -> tuple[Job, torch.device]:
    """Join the launcher's process group when there is one; return (job, this process's device).

    Under a launcher, `auto` and `cuda` mean the GPU numbered LOCAL_RANK. A collective that waits
    longer than `timeout_minutes` (a rank stuck or gone) fails instead of hanging."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return SINGLE, resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise UserError(f"WORLD_SIZE={world} but {key} is not set: start several processes with torchrun")
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if device.type == "cuda" else None,
        )
    return current(), device


def resolve_device(name: str) -> torch.device:
    """`auto` (a GPU when there is one), `cpu`, `cuda` or `cuda:N`; a missing GPU is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"train.device={name}: not a device; choose auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"train.device={name}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"train.device={name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered from 0")
    elif device.type != "cpu":
        raise UserError(f"train.device={name}: pixelrec runs on cpu or cuda; choose auto, cpu, cuda or cuda:N")
    return device


def leave() -> None:
    """Tear the process group down (at the end of a command), if one is up."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().active:
        dist.barrier()


def all_sum(value: float) -> float:
    """Sum of a number over ranks (in float64)."""
    if not current().active:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return float(total.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    job = current()
    if not job.active:
        return [obj]
    out: list[Any] = [None] * job.world
    dist.all_gather_object(out, obj)
    return out


def gather_rows(x: Tensor) -> Tensor:
    """Concatenation in rank order of every rank's `x` (first dimensions may differ); no gradient."""
    job = current()
    if not job.active:
        return x
    padded, sizes = _padded(x)
    parts = [torch.empty_like(padded) for _ in range(job.world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]).to(x.device)


def gather_rows_with_grad(x: Tensor) -> Tensor:
    """Like `gather_rows`, but gradients flow back to the rank each row came from."""
    job = current()
    if not job.active:
        return x
    padded, sizes = _padded(x)
    every = _GatherWithGrad.apply(padded)
    longest = padded.shape[0]
    return torch.cat([every[r * longest : r * longest + n] for r, n in enumerate(sizes)]).to(x.device)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forwards; backwards, each rank's rows receive the gradient summed over all ranks."""

    @staticmethod
    def forward(ctx: Any, padded: Tensor) -> Tensor:
        job = current()
        parts = [torch.empty_like(padded) for _ in range(job.world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.rows = slice(job.rank * padded.shape[0], (job.rank + 1) * padded.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def _padded(x: Tensor) -> tuple[Tensor, list[int]]:
    """`x` on the collective device, padded with zero rows to the largest rank's length; every length."""
    device = _collective_device()
    size = torch.tensor([x.shape[0]], dtype=torch.long, device=device)
    every = [torch.empty_like(size) for _ in range(current().world)]
    dist.all_gather(every, size)
    sizes = [int(n) for n in every]
    padded = x.to(device)
    longest = max(sizes)
    if longest > x.shape[0]:
        padded = torch.cat([padded, padded.new_zeros((longest - x.shape[0],) + tuple(x.shape[1:]))])
    return padded, sizes


def _collective_device() -> torch.device:
    """NCCL moves only GPU tensors; gloo only CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
