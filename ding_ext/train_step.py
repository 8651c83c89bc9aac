"""One optimiser step of the reward-model trainer over a global batch, and sharded evaluation.

A global batch of ``batch_size`` images is cut into micro-batches (``train_data.MicroBatchSampler``); each process
runs forward and backward on its share, gradients accumulate locally and are reduced over the processes on the last
micro-batch (DDP all-reduce or FSDP2 reduce-scatter), then the optimiser steps once. The update does not depend on
the number of processes:

* the loss of a micro-batch is its summed BCE times ``world_size / batch_size``: after the reduction's average over
  processes, the gradient is the mean over the whole global batch;
* the random shift augmentation and dropout of micro-batch k are seeded from (seed, step, k), not from the process;
* BatchNorm running statistics are merged over processes as if one process had run the micro-batches in order
  (``BatchNormMerge``); one process keeps BatchNorm's own updates.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import DistContext, all_reduce_sum, gather_strided, gradient_sync
from .evaluation import binary_metrics
from .image_utils import random_shift
from .train_data import micro_batch_index, mix_seed


class BatchNormMerge:
    """BatchNorm running statistics of a global batch whose micro-batches ran on several processes.

    One process running micro-batches 0..K-1 in order ends with ``(1 - m)^K r0 + sum_k (1 - m)^(K-1-k) m x_k`` (m the
    momentum, x_k micro-batch k's statistics). Here each process zeroes the buffers before a micro-batch, so
    BatchNorm's update leaves ``m x_k`` in them, weights it by ``(1 - m)^(K-1-k)``, and the sums are added over
    processes at the end of the step.
    """

    def __init__(self, network: nn.Module, micro_batches_per_step: int) -> None:
        self.layers = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                       and m.track_running_stats]
        for bn in self.layers:
            if bn.momentum is None:
                raise ValueError(f"BatchNorm layer {bn} uses a cumulative average (momentum=None); its running "
                                 "statistics cannot be merged over processes")
        self.K = int(micro_batches_per_step)
        self.start: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.start_count: List[torch.Tensor] = []
        self.sums: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def begin_step(self) -> None:
        self.start = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in self.layers]
        self.start_count = [bn.num_batches_tracked.clone() for bn in self.layers]
        self.sums = [(torch.zeros_like(mean), torch.zeros_like(var)) for mean, var in self.start]

    def before_micro_batch(self) -> None:
        for bn in self.layers:
            bn.running_mean.zero_()
            bn.running_var.zero_()

    def after_micro_batch(self, k: int) -> None:
        for bn, (s_mean, s_var) in zip(self.layers, self.sums):
            w = (1.0 - bn.momentum) ** (self.K - 1 - k)
            s_mean.add_(bn.running_mean, alpha=w)
            s_var.add_(bn.running_var, alpha=w)

    def end_step(self, ctx: DistContext) -> None:
        if not self.layers:
            return
        flat = torch.cat([t.reshape(-1) for pair in self.sums for t in pair]).to(ctx.device)
        all_reduce_sum(flat, ctx)
        offset = 0
        with torch.no_grad():
            for bn, (mean0, var0) in zip(self.layers, self.start):
                decay = (1.0 - bn.momentum) ** self.K
                for buf, start in ((bn.running_mean, mean0), (bn.running_var, var0)):
                    n = buf.numel()
                    buf.copy_(start * decay + flat[offset:offset + n].view_as(buf))
                    offset += n
            for bn, count in zip(self.layers, self.start_count):
                bn.num_batches_tracked.copy_(count + self.K)


class GlobalBatchStep:
    """``step(micro_batches, step_index)``: one optimiser step on this process's micro-batches of a global batch.

    ``model``: the image reward model (its ``preprocess_images``, autocast, grad scaler, ``augment_shift``);
    ``train_net``: the module training passes run through (the network, its DDP wrapper, or the FSDP-sharded
    network). Returns the global batch's mean loss and accuracy (the same on every process).
    """

    def __init__(self, model: Any, train_net: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext,
                 strategy: str, batch_size: int, micro_batch_size: int, pos_weight: Optional[float] = None,
                 seed: int = 0, tb_logger: Any = None) -> None:
        self.model, self.train_net, self.optimizer, self.ctx, self.strategy = model, train_net, optimizer, ctx, strategy
        self.batch_size, self.micro_batch_size, self.seed = int(batch_size), int(micro_batch_size), int(seed)
        self.accumulation = batch_size // (micro_batch_size * ctx.world_size)
        self.pos_weight = None if pos_weight is None else torch.tensor(float(pos_weight), device=ctx.device)
        self.bn_merge = BatchNormMerge(model.network, batch_size // micro_batch_size) if ctx.distributed else None
        self.tb_logger = tb_logger

    def __call__(self, micro_batches: Sequence[Tuple[Any, Any]], step_index: int) -> Dict[str, float]:
        if len(micro_batches) != self.accumulation:
            raise ValueError(f"expected {self.accumulation} micro-batches per step, got {len(micro_batches)}")
        model, ctx = self.model, self.ctx
        self.train_net.train()
        if self.bn_merge is not None:
            self.bn_merge.begin_step()
        totals = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss sum, correct, images
        scale = ctx.world_size / self.batch_size
        for a, (images, labels) in enumerate(micro_batches):
            k = micro_batch_index(a, ctx.rank, ctx.world_size)
            torch.manual_seed(mix_seed(self.seed, step_index, k))  # augmentation and dropout of micro-batch k
            x = random_shift(model.preprocess_images(images), int(model.cfg.augment_shift))
            y = torch.as_tensor(labels, dtype=torch.float32).to(ctx.device, non_blocking=True).reshape(-1)
            with gradient_sync(self.train_net, self.strategy, ctx, sync=a == self.accumulation - 1):
                if self.bn_merge is not None:
                    self.bn_merge.before_micro_batch()
                with model._autocast():
                    logits = self.train_net(x).float()
                if self.bn_merge is not None:
                    self.bn_merge.after_micro_batch(k)
                loss_sum = F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight, reduction='sum')
                model.scaler.scale(loss_sum * scale).backward()
            totals[0] += loss_sum.detach().double()
            totals[1] += ((logits.detach() > 0) == (y > 0.5)).sum().double()
            totals[2] += len(y)
        if self.bn_merge is not None:
            self.bn_merge.end_step(ctx)
        model.scaler.step(self.optimizer)
        model.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, correct, seen = all_reduce_sum(totals, ctx).tolist()
        stats = {'reward_loss': loss_sum / seen, 'accuracy': correct / seen}
        if self.tb_logger is not None:
            for key, value in stats.items():
                self.tb_logger.add_scalar(f'reward_model/{key}', value, step_index)
        return stats


def evaluate_sharded(model: Any, loader: Any, num_images: int, ctx: DistContext) -> Dict[str, Any]:
    """``evaluation.binary_metrics`` of the whole validation split at ``model.threshold``, each process scoring its
    ``train_data.shard_positions`` share through ``model.network`` (eval mode, no gradients; under FSDP every process
    takes part in every forward). Every process gets the same metrics."""
    network = model.network
    network.eval()
    logits, labels = [], []
    with torch.no_grad(), model._autocast():
        for images, y in loader:
            logits.append(network(model.preprocess_images(images)).float())
            labels.append(torch.as_tensor(y, dtype=torch.float32).to(ctx.device))
    local = torch.stack([torch.cat(logits), torch.cat(labels)], dim=1)
    both = gather_strided(local, ctx)[:num_images]
    return binary_metrics(both[:, 0], both[:, 1], model.threshold)
