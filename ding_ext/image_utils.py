"""One image preprocessing path, used by training and inference alike.

``preprocess_images`` accepts a batch (or a single image) as numpy array or torch tensor, in NHWC or
NCHW layout, uint8 in [0, 255] or float in [0, 1], and returns a float NCHW tensor on the target
device, resized to ``image_size`` and optionally normalised with the ImageNet statistics. The uint8
to float conversion and the resize happen once, on the target device.
"""
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageBatch = Union[np.ndarray, torch.Tensor, Sequence]


def to_tensor(images: ImageBatch) -> torch.Tensor:
    """Turn a numpy array, a tensor or a list of equally shaped images into one tensor (no copy where possible)."""
    if isinstance(images, torch.Tensor):
        return images
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("empty image batch: got a list with no images")
        return torch.stack([to_tensor(im) for im in images])
    raise TypeError(f"images must be a numpy array, a torch tensor or a list of them, got {type(images).__name__}")


def to_nchw(images: ImageBatch, channels: int = 3) -> torch.Tensor:
    """Validate layout and channel count; return an NCHW tensor (dtype unchanged).

    A 3-d input is one image. The channel axis is the one (axis 1 or the last) whose size equals
    ``channels``; when both do (e.g. a 3x3x3 image) NHWC wins, as cameras produce it.
    """
    x = to_tensor(images)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"images must be 3-d (HWC/CHW) or 4-d (NHWC/NCHW), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"empty image batch: shape {tuple(x.shape)}")
    if x.shape[-1] == channels:
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] != channels:
        raise ValueError(
            f"images must have {channels} channels (NHWC or NCHW), got shape {tuple(x.shape)}: "
            f"neither axis 1 ({x.shape[1]}) nor the last axis ({x.shape[-1]}) is {channels}"
        )
    return x


def preprocess_images(
    images: ImageBatch,
    image_size: Sequence[int] = (3, 128, 128),
    normalize: bool = True,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """Validate and convert images to a float NCHW batch ready for the network.

    Raises ``ValueError`` naming the problem for: a wrong channel count, an empty batch, a float image
    with values outside [0, 1], NaN or infinite values, or an unsupported dtype.
    """
    c, h, w = int(image_size[0]), int(image_size[1]), int(image_size[2])
    x = to_nchw(images, channels=c)
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).div_(255.0)
    elif x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = x.to(torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                "pass uint8 images in [0, 255] or divide by 255"
            )
    else:
        raise ValueError(f"images must be uint8 or float, got dtype {x.dtype}")
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def random_shift(x: torch.Tensor, pad: int, generator: "torch.Generator | None" = None) -> torch.Tensor:
    """Training augmentation: shift each image of an NCHW batch by up to ``pad`` pixels (edges replicated)."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offsets)])


def to_uint8_hwc(image: ImageBatch) -> np.ndarray:
    """One image (HWC/CHW, uint8 or float in [0,1]) as a uint8 HxWx3 numpy array, e.g. for PNG files."""
    x = to_nchw(image)[0].permute(1, 2, 0)
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return x.cpu().numpy()
