"""torch.distributed for the reward-model trainer: the process group torchrun describes, DDP / FSDP2 wrapping,
full state dicts for the checkpoints rank 0 writes, and the few collectives the trainer needs.

Launched as ``torchrun --nproc_per_node N -m ding_ext.train_reward_model ...``, each process finds ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in its environment; ``init_distributed`` joins the group
(NCCL on CUDA, gloo on CPU). Without torchrun (no ``WORLD_SIZE`` > 1) everything here is a no-op for one process.
"""
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .train_options import OptionError

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_distributed created the process group (shutdown destroys it)

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints, the summary and the fidelity report."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device_for(name: str, world_size: int, local_rank: int) -> torch.device:
    device = torch.device(name)
    if device.type != 'cuda':
        return device
    if not torch.cuda.is_available():
        raise OptionError(f"device={name!r} was asked for but CUDA is not available; use device=cpu")
    if world_size > 1:
        if device.index is not None:
            raise OptionError(
                f"device={name!r} names one GPU, but {world_size} processes were launched; give device=cuda "
                "(each process then takes cuda:LOCAL_RANK)"
            )
        device = torch.device('cuda', local_rank)
    torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> DistContext:
    """Join the process group torchrun describes (or the one already initialised), else one process.

    ``device_name`` cuda gives each process ``cuda:LOCAL_RANK``; the backend is NCCL on CUDA and gloo on CPU.
    """
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        return DistContext(_device_for(device_name, world, local_rank), rank, world, local_rank, owns_group=False)
    world = int(os.environ.get('WORLD_SIZE', 1))
    if world <= 1:
        return DistContext(_device_for(device_name, 1, 0))
    if not dist.is_available():
        raise OptionError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    device = _device_for(device_name, world, local_rank)
    dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    ctx = DistContext(device, dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)
    logger.info("process %d of %d on %s (%s)", ctx.rank, ctx.world_size, device, dist.get_backend())
    return ctx


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if ``init_distributed`` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- wrapping
def _fsdp_units(network: nn.Module):
    """The sub-modules sharded on their own: the stages of a ResNet trunk (``backbone.layer1`` ...)."""
    backbone = getattr(network, 'backbone', network)
    return [m for name, m in backbone.named_children() if name.startswith('layer')]


def wrap_for_training(network: nn.Module, strategy: str, ctx: DistContext) -> nn.Module:
    """The module to run training passes through: ``network`` itself for one process, a DDP wrapper, or
    ``network`` sharded in place by FSDP2 ``fully_shard`` (each ResNet stage, then the rest).

    DDP does not broadcast BatchNorm buffers (``GlobalBatchStep`` merges their statistics over processes).
    """
    if not ctx.distributed:
        return network
    if strategy == 'ddp':
        from torch.nn.parallel import DistributedDataParallel
        ids = [ctx.device.index] if ctx.device.type == 'cuda' else None
        return DistributedDataParallel(network, device_ids=ids, broadcast_buffers=False)
    if strategy == 'fsdp':
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size, ))
        for unit in _fsdp_units(network):
            fully_shard(unit, mesh=mesh)
        fully_shard(network, mesh=mesh)
        return network
    raise OptionError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")


def is_sharded(strategy: str, ctx: DistContext) -> bool:
    """Whether the parameters are FSDP shards (a rank alone cannot run or save the network)."""
    return ctx.distributed and strategy == 'fsdp'


def gradient_sync(train_net: nn.Module, strategy: str, ctx: DistContext, sync: bool):
    """Context for one micro-batch's forward and backward: gradients are reduced over processes only when
    ``sync`` (the last micro-batch of a global batch); before, they accumulate locally."""
    if not ctx.distributed:
        return contextlib.nullcontext()
    if strategy == 'ddp':
        return contextlib.nullcontext() if sync else train_net.no_sync()
    train_net.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def full_state_dict(network: nn.Module, strategy: str, ctx: DistContext) -> Optional[Dict[str, torch.Tensor]]:
    """The whole network's state dict on rank 0 (None on the others). Under FSDP every rank must call it
    (the shards are gathered); otherwise it is rank 0's own copy."""
    if is_sharded(strategy, ctx):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(network, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if ctx.is_main else None
    return network.state_dict() if ctx.is_main else None


# ---------------------------------------------------------------------------------------- collectives
def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over processes, in place (it must live on ``ctx.device``)."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_strided(local: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Undo ``train_data.shard_positions``: rank r holds positions r, r + W, r + 2W ... of one sequence (all ranks
    the same length); returns the whole sequence in order, on the CPU."""
    if not ctx.distributed:
        return local.cpu()
    parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(parts, local.contiguous())
    return torch.stack(parts, dim=1).reshape(-1, *local.shape[1:]).cpu()


def broadcast_from_main(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (decisions all ranks must share: a new best model, stopping)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
