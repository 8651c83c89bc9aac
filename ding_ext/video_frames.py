"""Clips of reward frames: how an env keeps its last frames, how a clip travels (a filmstrip image), and how a
model picks the frames it looks at.

A clip of T frames, each H x W x C, travels as ONE image: the frames side by side, oldest first, H x (T*W) x C
(a *filmstrip*). Everything that handles reward images (transitions, the PNG dataset writer, hard-negative mining,
debug images, replay buffers) handles clips unchanged; only a video reward model splits them again.
"""
from collections import deque
from typing import Optional, Sequence

import numpy as np
import torch

FRAME_SAMPLING = ('uniform', 'last', 'random')


def to_filmstrip(frames: Sequence[np.ndarray]) -> np.ndarray:
    """T frames (each H x W x C, the same shape) -> one H x (T*W) x C image, oldest frame on the left."""
    if len(frames) == 0:
        raise ValueError("a clip needs at least one frame")
    shapes = {np.shape(f) for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"the frames of a clip must share one shape, got {sorted(shapes)}")
    return np.ascontiguousarray(np.concatenate(list(frames), axis=1))


def split_filmstrip(x: torch.Tensor, clip_length: int) -> torch.Tensor:
    """NCHW batch of filmstrips [B, C, H, T*W] -> [B, T, C, H, W] (T = ``clip_length``)."""
    b, c, h, w = x.shape
    if w % clip_length:
        raise ValueError(
            f"an image of width {w} is not a clip of {clip_length} frames side by side "
            f"(the width must be a multiple of {clip_length}); check reward_frames of the env against "
            "clip_length of the reward model"
        )
    return x.view(b, c, h, clip_length, w // clip_length).permute(0, 3, 1, 2, 4)


def frame_indices(clip_length: int, k: int, strategy: str = 'uniform',
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Which ``k`` of ``clip_length`` frames (indices in time order) a model looks at.

    uniform: evenly spaced from the first to the last frame (the last is always included); last: the last k;
    random: k distinct frames drawn at random (always including the last, the frame the reward is about)."""
    if strategy not in FRAME_SAMPLING:
        raise ValueError(f"frame sampling strategy must be one of {FRAME_SAMPLING}, got {strategy!r}")
    if not 1 <= k <= clip_length:
        raise ValueError(f"cannot sample k={k} frames from a clip of {clip_length}: need 1 <= k <= clip_length")
    if strategy == 'last' or k == clip_length:
        return torch.arange(clip_length - k, clip_length)
    if strategy == 'uniform':
        if k == 1:
            return torch.tensor([clip_length - 1])
        return torch.round(torch.linspace(0, clip_length - 1, k)).long()
    earlier = torch.randperm(clip_length - 1, generator=generator)[:k - 1]
    return torch.cat([torch.sort(earlier).values, torch.tensor([clip_length - 1])])


def sample_frames(images, strategy: str = 'uniform', k: int = 2, generator: Optional[torch.Generator] = None):
    """Pick ``k`` frames of a clip along its time axis: [T, ...] -> [k, ...], or [B, T, ...] -> [B, k, ...] when
    ``images`` has a batch axis (tensors and numpy arrays with ndim 5; ndim 4 is one clip [T, H, W, C] or
    [T, C, H, W])."""
    ndim = np.ndim(images) if not torch.is_tensor(images) else images.dim()
    if ndim not in (4, 5):
        raise ValueError(f"a clip is [T, H, W, C] / [T, C, H, W] or a batch [B, T, ...]; got {ndim} dims")
    axis = 1 if ndim == 5 else 0
    length = images.shape[axis]
    idx = frame_indices(length, k, strategy, generator)
    if torch.is_tensor(images):
        return images.index_select(axis, idx.to(images.device))
    return np.take(images, idx.numpy(), axis=axis)


class FrameHistory:
    """The last frames an env rendered, as clips of ``clip_length`` frames ``stride`` steps apart.

    ``clip()`` ends at the newest frame; before enough frames exist, the oldest one stands in for the missing
    earlier ones (at an episode's start the robot has not moved yet)."""

    def __init__(self, clip_length: int = 1, stride: int = 1) -> None:
        if int(clip_length) < 1 or int(stride) < 1:
            raise ValueError(f"clip_length and stride must be >= 1, got {clip_length}, {stride}")
        self.clip_length, self.stride = int(clip_length), int(stride)
        self._frames = deque(maxlen=(self.clip_length - 1) * self.stride + 1)

    def clear(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: np.ndarray) -> None:
        self._frames.append(frame)

    def clip(self) -> np.ndarray:
        """The newest clip as a filmstrip (the frame itself when clip_length is 1)."""
        if not self._frames:
            raise RuntimeError("no frame has been rendered yet: push a frame before asking for a clip")
        n = len(self._frames)
        picks = [max(0, n - 1 - self.stride * j) for j in reversed(range(self.clip_length))]
        return to_filmstrip([self._frames[i] for i in picks]) if self.clip_length > 1 else self._frames[-1]
