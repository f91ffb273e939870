"""What a run's workers agree on and add up, over a small gloo group on the CPU.

The group carries control flags (does every worker still have a batch?) and the methods'
epoch sums; it needs no GPU sync and works beside DDP's NCCL. In a one-worker run the
group is None and every function returns its input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ray_fer.methods.base import Sums


def cpu_group(world: int):
    """A gloo process group over the run's workers (None for one worker)."""
    return dist.new_group(backend="gloo") if world > 1 else None


def all_min(value: int, group) -> int:
    """The smallest of the workers' ``value``."""
    if group is None:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return int(t.item())


def all_have(has: bool, group) -> bool:
    """Whether every worker ``has``."""
    return bool(all_min(int(has), group))


def accumulate(total: Sums, part: Sums) -> None:
    """Add ``part`` into ``total`` (float64, detached), key by key."""
    for key, value in part.items():
        value = value.detach().double()
        total[key] = total[key] + value if key in total else value


def all_reduce(sums: Sums, group) -> Sums:
    """Sum the per-worker sums over all workers (a worker may lack keys: no rows seen)."""
    local = {k: v.cpu() for k, v in sums.items()}
    if group is None:
        return local
    gathered: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, local, group=group)
    total: Sums = {}
    for part in gathered:
        accumulate(total, part)
    return total
