"""A small conv encoder for pixel SAC: uint8 camera images plus a state vector -> one feature vector.

The DrQ / RLinf ``cnn`` shape: four 3x3 conv layers (ReLU), flattened, projected to ``feature_dim`` with a
LayerNorm and tanh; the state vector is appended to the projection. Used by ``rlpd_qac`` (``ding_ext.rlpd_policy``)
when its model config has ``image_shape``; actor and critics share one encoder, which the critic loss trains (the
actor reads detached features).

Input: ``dict(state=(B, S) float, image=(B, C, H, W))`` with pixel values in [0, 255] (uint8 as replay buffers store
them, or float as DI-engine's collectors pass observations to the policy). ``random_shift`` pixels of random
translation (DrQ's augmentation) apply in training mode only.
"""
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from .image_utils import random_shift

OBS_IMAGE_KEY, OBS_STATE_KEY = 'image', 'state'


def check_image_obs(obs: Any, where: str) -> None:
    """A clear error for an observation that is not ``dict(state=..., image=...)``."""
    if not isinstance(obs, Mapping) or OBS_IMAGE_KEY not in obs or OBS_STATE_KEY not in obs:
        got = sorted(obs) if isinstance(obs, Mapping) else type(obs).__name__
        raise ValueError(f"{where}: the model has an image encoder (model.image_shape) and needs observations "
                         f"dict(state=..., image=...), got {got}; use the env's obs_mode 'state_image' and demos "
                         "loaded with demo_obs_image=True")


class ImageStateEncoder(nn.Module):
    """Conv features of the image (LayerNorm'd projection) concatenated with the state; see the module docstring."""

    def __init__(self, image_shape: Sequence[int], state_dim: int, channels: int = 32,
                 strides: Sequence[int] = (2, 2, 2, 1), feature_dim: int = 64, random_shift: int = 0) -> None:
        super().__init__()
        image_shape = tuple(int(v) for v in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be [C, H, W], got {list(image_shape)}")
        self.image_shape, self.state_dim = image_shape, int(state_dim)
        self.random_shift = int(random_shift)
        layers, c_in = [], image_shape[0]
        for stride in strides:
            layers += [nn.Conv2d(c_in, int(channels), kernel_size=3, stride=int(stride)), nn.ReLU()]
            c_in = int(channels)
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            try:
                n_flat = self.convs(torch.zeros(1, *image_shape)).numel()
            except RuntimeError as e:
                raise ValueError(f"image_shape {list(image_shape)} is too small for conv strides {list(strides)} "
                                 f"(3x3 kernels): {e}") from e
        self.projection = nn.Sequential(nn.Linear(n_flat, int(feature_dim)), nn.LayerNorm(int(feature_dim)), nn.Tanh())
        self.out_dim = int(feature_dim) + self.state_dim

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        image, state = obs[OBS_IMAGE_KEY], obs[OBS_STATE_KEY]
        if tuple(image.shape[-3:]) != self.image_shape:
            raise ValueError(f"observation images have shape {list(image.shape[-3:])}, the encoder expects "
                             f"{list(self.image_shape)} (model.image_shape; the env's obs image size)")
        if state.shape[-1] != self.state_dim:
            raise ValueError(f"observation states have {state.shape[-1]} entries, the encoder expects "
                             f"{self.state_dim} (model.obs_shape)")
        x = image.float() / 255.0 - 0.5
        if self.training and self.random_shift > 0:
            x = random_shift(x, self.random_shift)
        features = self.projection(self.convs(x).flatten(1))
        return torch.cat([features, state.float()], dim=-1)
