"""torchrun support: process group from the environment, DDP or FSDP2 wrapping, small collectives.

Under ``torchrun --nproc_per_node N`` every rank runs the same loop on its slice of the global
batch (``data.BatchMaker``). DDP averages gradients, so N ranks with batch B/N each compute the
same update as one process with batch B (up to the order of float sums).

FSDP2 (``fully_shard``) is for models that do not fit one GPU: every transformer block and the
root are sharded; Phi and LoRA parameters are *ignored* by FSDP (kept whole on every rank, their
gradients averaged by :func:`all_reduce_grads`) because the re-SVD at a stage boundary needs the
whole ``L`` and ``R`` and they are small (``r0 * (N + K)`` per layer).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistEnv:
    """Join the process group that torchrun describes in the environment (no-op for 1 process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def mean_scalar(x: float, env: DistEnv) -> float:
    if not env.enabled:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / env.world_size


def replicated_params(module: nn.Module) -> list[nn.Parameter]:
    """Phi and LoRA parameters (kept whole on every rank under FSDP)."""
    return [p for n, p in module.named_parameters() if n.startswith("phis.") or n.endswith((".A", ".B"))]


def wrap(module: nn.Module, env: DistEnv, strategy: str) -> nn.Module:
    """The module the loop calls: itself (1 process), DDP, or FSDP2-sharded in place."""
    if not env.enabled:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [env.local_rank] if env.device.startswith("cuda") else None
        return DDP(module, device_ids=ids, broadcast_buffers=False)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        ignored = set(replicated_params(module))
        blocks = getattr(getattr(getattr(module, "qmodel", None), "transformer", None), "blocks", None)
        for block in blocks or []:
            fully_shard(block, ignored_params=ignored)
        fully_shard(module, ignored_params=ignored)
        return module
    raise ValueError(f"unknown distributed strategy {strategy!r}; expected 'ddp' or 'fsdp'")


def all_reduce_grads(params: list[nn.Parameter], env: DistEnv) -> None:
    """Average the gradients of parameters that no wrapper reduces (FSDP-ignored ones)."""
    if not env.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(env.world_size)


def wrap_teacher(teacher: nn.Module, env: DistEnv, strategy: str) -> nn.Module:
    """The frozen teacher: replicated under DDP, sharded like the student under FSDP."""
    if env.enabled and strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(teacher, "blocks", []):
            fully_shard(block)
        fully_shard(teacher)
    return teacher


def sharded_grad_norm_and_clip(params: list[nn.Parameter], max_norm: float, env: DistEnv) -> float:
    """``clip_grad_norm_`` for a mix of FSDP2-sharded (DTensor) and replicated gradients.

    The squared norms of the local shards are summed over ranks; replicated gradients (already
    averaged) are counted once. Returns the total norm before clipping.
    """
    sharded = torch.zeros((), dtype=torch.float64)
    replicated = torch.zeros((), dtype=torch.float64)
    grads = [p.grad for p in params if p.grad is not None]
    for g in grads:
        if hasattr(g, "to_local"):
            sharded += g.to_local().detach().double().pow(2).sum().cpu()
        else:
            replicated += g.detach().double().pow(2).sum().cpu()
    if env.enabled:
        dist.all_reduce(sharded)
    total = float((sharded + replicated).sqrt())
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total
