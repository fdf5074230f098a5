"""Data-parallel fine-tuning over several processes with torch.distributed, launched by torchrun.

    torchrun --standalone --nproc_per_node N -m MedSegAdaptLib.cli finetune STORE -o CKPT --cache-dir CACHE [...]
    torchrun --standalone --nproc_per_node N --no-python medsegadapt finetune STORE -o CKPT [...]

start N processes (ranks), one per GPU of the machine (on CPU, N processes share its cores); for several
machines, use torchrun's --nnodes and --rdzv-endpoint as usual. Under torchrun (WORLD_SIZE above 1)
`process_group` joins the ranks: NCCL with each rank on cuda:LOCAL_RANK when the device is a GPU, Gloo
on CPU. Every rank loads the same model and training view. With a disk embedding cache (--cache-dir)
rank 0 encodes the slices first and the others read them after a barrier, so nothing is encoded twice;
without one every rank encodes into its own memory.

Each epoch's batches are drawn from the same seeded generator on every rank, and rank r trains on
batches r, r + N, r + 2N, ... After every backward pass the trainable parameters' gradients are
averaged over the ranks in one all-reduce, as DistributedDataParallel does; DDP itself does not fit,
since training calls SamBackbone.decode once per slice, several forward passes per backward pass.
So the ranks' weights stay identical and one optimizer step sees N batches (an epoch has 1/N of the
single process's steps). Validation slices are split over the ranks and their Dice averaged over all,
so every rank takes the same early-stopping decision; semi-supervised runs take rank 0's pseudo-labels.
Rank 0 alone writes checkpoints and prints.

Without torchrun's environment (WORLD_SIZE unset or 1) every function here is a no-op and one process
trains as MedSegAdaptLib.training.trainer describes.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

from MedSegAdaptLib.core.errors import InputError

__all__ = [
    "World",
    "all_cores_while_others_wait",
    "average_gradients",
    "from_rank0",
    "launched_by_torchrun",
    "mean",
    "process_group",
    "rank0_first",
    "shard",
    "world",
]

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's rank among `size` processes (0 of 1 without a process group)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints and prints (rank 0)."""
        return self.rank == 0


def world() -> World:
    """The current process group's rank and size; World() when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting its environment) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group for the block and yield this rank's device (cuda:LOCAL_RANK for a
    CUDA `device`, else `device`); all ranks meet at a barrier at the end, then the group is destroyed.
    Without torchrun, yields `device` and does nothing else."""
    if not launched_by_torchrun():
        yield device
        return
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"torchrun started process {local_rank} of this machine, but it has "
                             f"{torch.cuda.device_count()} GPUs; give --nproc_per_node at most that")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield device
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where tensors of a collective must live: the rank's GPU for NCCL, the CPU for Gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of `items`: items rank, rank + size, ... (all of them in one process)."""
    current = world()
    return list(items[current.rank::current.size])


def average_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over the ranks (one all-reduce). A parameter without
    a gradient on some ranks counts as zero there; one without a gradient on every rank keeps none, so
    that the optimizer skips it as in one process (e.g. the mask decoder's IoU head, which the loss does
    not use). Nothing happens in one process."""
    size = world().size
    if size == 1:
        return
    has_gradient = torch.tensor([float(p.grad is not None) for p in parameters], dtype=parameters[0].dtype,
                                device=parameters[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters]
                     + [has_gradient])
    dist.all_reduce(flat)
    flat /= size
    gradients, any_gradient = flat[:-len(parameters)], (flat[-len(parameters):] > 0).tolist()
    for parameter, gradient, used in zip(parameters, gradients.split([p.numel() for p in parameters]), any_gradient):
        parameter.grad = gradient.view_as(parameter) if used else None


def mean(values: Sequence[float]) -> float:
    """Mean of the values of all ranks together (np.mean of `values` in one process); every rank gets it."""
    if world().size == 1:
        return float(np.mean(values))
    total = torch.tensor([float(sum(values)), float(len(values))], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return float(total[0] / total[1])


@contextmanager
def rank0_first(enabled: bool = True) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (which wait at a barrier until rank 0 is
    through), e.g. so that rank 0 fills a disk cache the others then read. A plain block when not
    enabled or in one process."""
    current = world()
    ordered = enabled and current.size > 1
    if ordered and not current.main:
        dist.barrier()
    yield
    if ordered and current.main:
        dist.barrier()


@contextmanager
def all_cores_while_others_wait(device: torch.device) -> Iterator[None]:
    """For work rank 0 does alone on CPU while the other ranks wait at a barrier (adapt's sample generation):
    PyTorch (and ONNX Runtime sessions created inside) use the threads of every rank on this machine
    (torchrun gives each rank OMP_NUM_THREADS=1, which left all but one core idle), capped at the cores.
    A plain block on GPU or in one process."""
    current = world()
    if device.type != "cpu" or current.size == 1:
        yield
        return
    before = torch.get_num_threads()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", current.size))
    torch.set_num_threads(max(before, min(os.cpu_count() or 1, before * local)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def from_rank0(value: T) -> T:
    """Rank 0's `value` on every rank (pickled and broadcast); `value` itself in one process."""
    if world().size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, device=_collective_device())
    return holder[0]
