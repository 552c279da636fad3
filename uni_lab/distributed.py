"""Shards and torchrun: split a run's images over processes that share one store.

A shard ``(i, n)`` is the ``i``-th of ``n`` contiguous, near-equal slices of the run's image
list; it depends only on that list, so independent jobs (``--shard 0/4`` … ``--shard 3/4``)
and ranks agree without talking. Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
in the environment) every rank joins a gloo process group and takes shard ``rank`` of
``world`` (of shard ``i`` when ``--shard i/n`` is given too); rank 0 creates or validates the
store while the others wait. The group carries only that wait and one closing barrier, so
gloo serves GPUs too (NCCL would also refuse two ranks sharing one GPU). The store's chunks span
blocks of images (:func:`uni_lab.schema.chunking`) and shards are whole blocks, so ranks write
disjoint chunk files and need no locks. Per-image seeds
(:func:`uni_lab.seeding.image_seed`) keep random draws independent of the split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch

from .errors import InputError, UniLabError

# The closing barrier waits for the slowest rank, which may run for hours; the default
# 30-minute collective timeout would abort a healthy, unevenly split run.
BARRIER_TIMEOUT = timedelta(hours=72)


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this module joined the process group, so it also leaves it

    @property
    def active(self) -> bool:
        return self.world > 1


def parse_shard(shard) -> tuple[int, int] | None:
    """``"1/4"``, ``(1, 4)`` or ``None`` → ``(i, n)`` with ``0 <= i < n``."""
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in (shard.split("/") if isinstance(shard, str) else shard))
    except (TypeError, ValueError):
        raise InputError(f"--shard expects I/N with whole numbers (e.g. 0/4), got '{shard}'.") from None
    if not 0 <= i < n:
        raise InputError(f"--shard {i}/{n}: need 0 <= I < N (shards are numbered from 0).")
    return i, n


def shard_range(count: int, i: int, n: int, block: int = 1) -> range:
    """Indices of shard ``i`` of ``n`` over ``count`` items: contiguous runs of whole blocks of
    ``block`` items (the store's chunks span a block, so no two shards write one chunk file);
    their numbers of blocks differ by at most one. With more shards than blocks some are empty."""
    blocks = -(-count // max(1, block))
    return range(min(count, blocks * i // n * block), min(count, blocks * (i + 1) // n * block))


def _env_world() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: str | None) -> tuple[Context, str | None]:
    """Join torchrun's process group when there is one; return the context and this rank's device.

    ``device`` None/``"auto"``/``"cuda"`` becomes ``cuda:LOCAL_RANK`` (modulo the GPUs present)
    when CUDA is available, so each rank of a node drives its own GPU; ``cuda:k`` or ``cpu`` is kept.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # the caller's own process group
        return Context(dist.get_rank(), dist.get_world_size(), _env_world()[2]), device
    rank, world, local = _env_world()
    if world <= 1:
        return Context(), device
    if not dist.is_available():
        raise UniLabError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run without torchrun.")
    if device in (None, "auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local % torch.cuda.device_count()}"
    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    return Context(dist.get_rank(), dist.get_world_size(), local, owned=True), device


def my_shard(shard: tuple[int, int] | None, ctx: Context) -> tuple[int, int]:
    """This process's slice: ``--shard i/n`` split further over the ranks of a torchrun job."""
    i, n = shard or (0, 1)
    return i * ctx.world + ctx.rank, n * ctx.world


def create_once(ctx: Context, prepare: Callable[[bool], None], overwrite: bool) -> None:
    """Rank 0 runs ``prepare(overwrite)`` (create or validate the store); the others wait, then
    validate with ``prepare(False)``. A failure on rank 0 is raised on every rank."""
    if not ctx.active:
        prepare(overwrite)
        return
    import torch.distributed as dist

    failure = None
    if ctx.rank == 0:
        try:
            prepare(overwrite)
        except Exception as exc:
            failure = exc
    box = [None if failure is None else str(failure)]
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if box[0] is not None:
        raise UniLabError(f"rank 0 could not prepare the store: {box[0]}")
    prepare(False)


def finish(ctx: Context) -> None:
    """Wait for every rank's shard (so rank 0 summarises a complete store), then leave the group."""
    if not ctx.active:
        return
    import torch.distributed as dist

    dist.barrier()
    if ctx.owned:
        dist.destroy_process_group()
