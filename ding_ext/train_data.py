"""Which images the reward-model trainer sees, and in which order, in one process or many.

* ``epoch_order``: one global order per epoch (class-balanced draws or a shuffle), from the seed and the epoch only,
  so it is the same for any number of processes; its length is a whole number of global batches.
* ``MicroBatchSampler``: cuts that order into global batches and each global batch into micro-batches; micro-batch
  k of a global batch goes to process k % world_size. The union over processes is the same set of micro-batches
  whatever the process count, which is what lets 2 processes reproduce the weights of 1.
* ``shard_positions``: the validation split dealt to the processes in equal shares (padded), for sharded evaluation.
* ``frames_per_episode_subset``: at most N evenly spaced frames of each training episode.
* ``training_split``: the training and validation indices of a scanned folder (split, caps, joint-speed gate).
* ``build_loaders``: the training and validation ``DataLoader`` of one process (workers, pinned memory).
* ``write_debug_images``: the images as the network sees them, for a look before training.
"""
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .image_folder_dataset import DataError


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (seed, epoch, step, micro-batch ...), well spread."""
    state = np.random.SeedSequence([int(v) % (1 << 64) for v in values]).generate_state(1, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def class_draw_weights(labels: np.ndarray, fail_success_ratio: float = 1.0) -> torch.Tensor:
    """Per-image draw weights giving successes 1 / (1 + r) and failures r / (1 + r) of the draws (r = the ratio)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        raise DataError(f"the training split has {n_pos} success and {n_neg} failure images: both are needed")
    r = float(fail_success_ratio)
    return torch.as_tensor(np.where(labels, 1.0 / (1 + r) / n_pos, r / (1 + r) / n_neg), dtype=torch.double)


def epoch_order(labels: Sequence[int], balance: str, seed: int, epoch: int, batch_size: int,
                fail_success_ratio: float = 1.0) -> np.ndarray:
    """The images (indices into ``labels``) of one epoch, in training order: ceil(n / batch_size) global batches.

    ``balance='sampler'`` draws with replacement, each class with the share ``fail_success_ratio`` sets; otherwise a
    shuffle, wrapped around to fill the last global batch (a few images are seen twice).
    """
    n = len(labels)
    total = math.ceil(n / batch_size) * batch_size
    gen = torch.Generator().manual_seed(mix_seed(seed, epoch))
    if balance == 'sampler':
        order = torch.multinomial(class_draw_weights(np.asarray(labels), fail_success_ratio), total, replacement=True,
                                  generator=gen)
    else:
        order = torch.randperm(n, generator=gen).repeat(math.ceil(total / n))[:total]
    return order.numpy()


class MicroBatchSampler(Sampler):
    """This process's micro-batches of an epoch (a batch sampler for ``DataLoader``), in the order they are trained.

    The epoch's ``epoch_order`` is cut into global batches of ``batch_size``; each into ``batch_size /
    micro_batch_size`` micro-batches; micro-batch k goes to process ``k % world_size``, which therefore trains
    ``accumulation = batch_size / (micro_batch_size * world_size)`` micro-batches per optimiser step. Call
    ``set_epoch`` before each epoch.
    """

    def __init__(self, labels: Sequence[int], balance: str, seed: int, batch_size: int, micro_batch_size: int,
                 rank: int = 0, world_size: int = 1, fail_success_ratio: float = 1.0) -> None:
        if batch_size % (micro_batch_size * world_size):
            raise ValueError(f"batch_size {batch_size} is not a multiple of {micro_batch_size} x {world_size}")
        self.labels = np.asarray(labels)
        self.balance, self.seed, self.fail_success_ratio = balance, int(seed), float(fail_success_ratio)
        self.batch_size, self.micro_batch_size = int(batch_size), int(micro_batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.accumulation = batch_size // (micro_batch_size * world_size)
        self.steps_per_epoch = math.ceil(len(self.labels) / batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accumulation

    def __iter__(self):
        order = epoch_order(self.labels, self.balance, self.seed, self.epoch, self.batch_size, self.fail_success_ratio)
        m = self.micro_batch_size
        for step in range(self.steps_per_epoch):
            start = step * self.batch_size
            for a in range(self.accumulation):
                k = a * self.world_size + self.rank
                yield order[start + k * m:start + (k + 1) * m].tolist()


def micro_batch_index(a: int, rank: int, world_size: int) -> int:
    """The global index k (within its global batch) of a process's a-th micro-batch (see ``MicroBatchSampler``)."""
    return a * world_size + rank


def shard_positions(n: int, rank: int, world_size: int) -> Tuple[List[int], np.ndarray]:
    """Rank ``rank``'s share of n positions: r, r + W, r + 2W ...; every rank gets ceil(n / W) of them (positions past
    the end stand in as 0), so all ranks run the same number of batches. Returns (positions, mask of the real ones)."""
    per_rank = math.ceil(n / world_size)
    pos = np.arange(per_rank) * world_size + rank
    valid = pos < n
    return np.where(valid, pos, 0).tolist(), valid


def frames_per_episode_subset(indices: Sequence[int], frames: Sequence[Dict[str, Any]],
                              episode_ids: Optional[Sequence[str]], limit: Optional[int]) -> List[int]:
    """At most ``limit`` frames of each episode among ``indices``: evenly spaced by the sidecar's ``step`` (file order
    where a frame has none), the first and last kept. ``episode_ids``: per scanned file (None without a sidecar)."""
    if limit is None:
        return list(indices)
    if episode_ids is None:
        raise DataError(f"frames_per_episode={limit} needs the episode of each frame: the data folder has no "
                        "frames.jsonl sidecar with episode_id rows")
    episodes: Dict[str, List[int]] = {}
    for i in indices:
        episodes.setdefault(episode_ids[i], []).append(i)
    kept: List[int] = []
    for members in episodes.values():
        members.sort(key=lambda i: (frames[i].get('step') is None, frames[i].get('step') or 0, i))
        if len(members) > limit:
            members = [members[j] for j in np.unique(np.round(np.linspace(0, len(members) - 1, limit)).astype(int))]
        kept += members
    return sorted(kept)


def cap_failures(indices: Sequence[int], labels: Sequence[int], ratio: float, seed: int) -> List[int]:
    """``indices`` with at most ``ceil(ratio * successes)`` failures (a seeded subsample), in their order."""
    labels = np.asarray(labels)
    failures = [i for i in indices if labels[i] == 0]
    keep = int(np.ceil(ratio * (len(indices) - len(failures))))
    if len(failures) <= keep:
        return list(indices)
    kept = set(np.random.default_rng(seed).choice(failures, size=keep, replace=False).tolist())
    return [i for i in indices if labels[i] == 1 or i in kept]


def training_split(scan: Any, opts: Mapping[str, Any], joint_keep: Optional[float], data_dir: str):
    """The trainer's (train indices, validation indices, joint-speed calibration or None) of a scanned folder: split
    by episode where the sidecar has ids, failures capped (``fail_success_ratio``), at most ``frames_per_episode``
    per training episode, and with ``joint_keep`` only the clips the calibrated joint-speed gate passes
    (``ding_ext.joint_speed_gate``)."""
    from .image_folder_dataset import split_train_val
    from .joint_speed_gate import gate_training_split
    train_idx, val_idx = split_train_val(scan.files, scan.labels, opts['val_split'], opts['seed'],
                                         groups=scan.episode_ids)
    if opts['fail_success_ratio'] is not None:
        train_idx = cap_failures(train_idx, scan.labels, float(opts['fail_success_ratio']), opts['seed'])
    train_idx = frames_per_episode_subset(train_idx, scan.frames, scan.episode_ids, opts['frames_per_episode'])
    if joint_keep is None:
        return train_idx, val_idx, None
    try:
        gate, train_idx, val_idx = gate_training_split(scan.frames, scan.labels, train_idx, val_idx, joint_keep,
                                                       data_dir)
    except ValueError as e:
        raise DataError(str(e)) from e
    return train_idx, val_idx, gate


def default_num_workers(num_workers: Optional[int], cache_images: bool) -> int:
    """DataLoader workers per training process: ``num_workers`` when given; else none for images cached in memory (a
    worker only copies them through shared memory: 8x fewer images/s than the main process in
    bench/reward_training.py), and to decode PNGs (``cache_images=false``) up to 4, leaving one core per process to
    the training itself (none on a machine with one core per process)."""
    if num_workers is not None:
        return int(num_workers)
    if cache_images:
        return 0
    per_process = (os.cpu_count() or 1) // max(1, int(os.environ.get('LOCAL_WORLD_SIZE', 1)))
    return max(0, min(4, per_process - 1))


@dataclass
class Loaders:
    sampler: MicroBatchSampler
    train: DataLoader
    val: Optional[DataLoader]
    num_workers: int
    pin_memory: bool


def build_loaders(train_set: Any, val_set: Any, opts: Mapping[str, Any], micro_batch_size: int, rank: int,
                  world_size: int, device_type: str) -> Loaders:
    """This process's loaders: training micro-batches from ``MicroBatchSampler``, validation batches of
    2 x micro_batch_size over its ``shard_positions`` (None without validation images). ``opts``: the trainer's
    options (batch_size, balance, seed, sampler_fail_ratio, num_workers, cache_images, pin_memory)."""
    workers = default_num_workers(opts['num_workers'], bool(opts['cache_images']))
    pin = opts['pin_memory'] if opts['pin_memory'] is not None else device_type == 'cuda'
    common = dict(num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    sampler = MicroBatchSampler(train_set.labels, opts['balance'], opts['seed'], int(opts['batch_size']),
                                micro_batch_size, rank, world_size, opts['sampler_fail_ratio'])
    val = None
    if len(val_set):
        positions, _ = shard_positions(len(val_set), rank, world_size)
        val = DataLoader(val_set, batch_size=2 * micro_batch_size, sampler=positions, **common)
    return Loaders(sampler, DataLoader(train_set, batch_sampler=sampler, **common), val, workers, pin)


def write_debug_images(dataset: Any, out_dir: str, image_size: Sequence[int], crop: Optional[Sequence[float]],
                       positions: Optional[Sequence[int]] = None, batch_size: int = 256) -> Dict[str, int]:
    """Write images of ``dataset`` (those at ``positions``; default all) as the network sees them (``image_crop`` and
    the resize to ``image_size``; no normalisation, no augmentation) to ``<out_dir>/{success,failure}/<position>.png``;
    returns the counts per class. Processes can write disjoint ``positions`` of one dataset side by side."""
    from .image_utils import preprocess_images
    from .png_writer import write_png
    positions = list(range(len(dataset)) if positions is None else positions)
    counts = {'success': 0, 'failure': 0}
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        items = [dataset[i] for i in chunk]
        x = preprocess_images(np.stack([im for im, _ in items]), image_size, normalize=False, crop=crop)
        pixels = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for j, (position, (_, label)) in enumerate(zip(chunk, items)):
            cls = 'success' if label > 0.5 else 'failure'
            write_png(os.path.join(out_dir, cls, f'{position:06d}.png'), pixels[j])
            counts[cls] += 1
    return counts
