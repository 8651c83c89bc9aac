"""One image preprocessing path, used by training and inference alike.

``preprocess_images`` accepts a batch (or a single image) as numpy array or torch tensor, in NHWC or
NCHW layout, uint8 in [0, 255] or float in [0, 1], and returns a float NCHW tensor on the target
device, resized to ``image_size`` and optionally normalised with the ImageNet statistics. The batch moves to
the target device as it comes (uint8 stays uint8: a quarter of float32's bytes), and the conversion, the resize
and the normalisation (one fused pass, written in the requested memory format) run there, once per batch.
"""
from typing import List, Optional, Sequence, Tuple, Union

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


def _list_parts(images: Sequence, channels: int) -> List[torch.Tensor]:
    """A list of single images as NCHW tensors: one stacked batch when all agree in shape and dtype, else
    one 1xCxHxW tensor per image (``preprocess_images`` resizes each). Each item is one HWC or CHW image."""
    if len(images) == 0:
        raise ValueError("empty image batch: got a list with no images")
    items = [to_tensor(im) for im in images]
    for i, t in enumerate(items):
        if t.dim() != 3 or channels not in (t.shape[0], t.shape[-1]):
            raise ValueError(
                f"image {i} of the list has shape {tuple(t.shape)}: each image in a list must be 3-d HWC or CHW "
                f"with {channels} channels"
            )
    first = items[0]
    if all(t.shape == first.shape and t.dtype == first.dtype for t in items[1:]):
        return [_layout_to_nchw(torch.stack(items), channels)]
    return [_layout_to_nchw(t.unsqueeze(0), channels) for t in items]


def _layout_to_nchw(x: torch.Tensor, channels: int) -> torch.Tensor:
    """A 4-d batch as NCHW; the channel axis is the last one (NHWC, preferred) or axis 1 (NCHW)."""
    if x.shape[0] == 0:
        raise ValueError(f"empty image batch: shape {tuple(x.shape)}")
    if x.shape[-1] == channels:
        return x.permute(0, 3, 1, 2)
    if x.shape[1] != channels:
        raise ValueError(
            f"images must have {channels} channels (NHWC or NCHW), got shape {tuple(x.shape)}: "
            f"neither axis 1 ({x.shape[1]}) nor the last axis ({x.shape[-1]}) is {channels}"
        )
    return x


def _nchw_parts(images: ImageBatch, channels: int) -> List[torch.Tensor]:
    """Validated NCHW tensors making up the batch (several only for a list of differently sized images)."""
    if isinstance(images, (list, tuple)):
        return _list_parts(images, channels)
    x = to_tensor(images)
    if x.dim() == 3:
        if x.shape[-1] == channels:  # one HWC image
            x = x.unsqueeze(0)
        elif x.shape[0] == channels:
            raise ValueError(
                f"ambiguous image shape {tuple(x.shape)}: it could be one CHW image or a batch of {channels} "
                f"grayscale frames; pass a 4-d batch (NCHW or NHWC, e.g. x[None] for one CHW image) "
                f"or one HWC image"
            )
        else:
            raise ValueError(
                f"a 3-d image must be HWC with {channels} channels, got shape {tuple(x.shape)}: "
                f"the last axis ({x.shape[-1]}) is not {channels}"
            )
    elif x.dim() == 2:
        raise ValueError(
            f"images must be 3-d (one HWC image) or 4-d (NHWC/NCHW), got a 2-d shape {tuple(x.shape)}: "
            f"grayscale images are not supported; repeat the gray channel {channels} times (HxWx{channels})"
        )
    elif x.dim() != 4:
        raise ValueError(f"images must be 3-d (one HWC image) or 4-d (NHWC/NCHW), got shape {tuple(x.shape)}")
    return [_layout_to_nchw(x, channels)]


def to_nchw(images: ImageBatch, channels: int = 3) -> torch.Tensor:
    """Validate layout and channel count; return an NCHW tensor (dtype unchanged).

    A 4-d input is a batch: the channel axis is the one (axis 1 or the last) whose size equals
    ``channels``; when both do NHWC wins, as cameras produce it. A 3-d input is one HWC image; a
    (C, H, W) array is refused as ambiguous (one CHW image or C grayscale frames). A list holds single
    HWC or CHW images of one shape (``preprocess_images`` also takes lists of different sizes).
    """
    parts = _nchw_parts(images, channels)
    if len(parts) > 1:
        shapes = sorted({tuple(p.shape[1:]) for p in parts})
        raise ValueError(f"images of different shapes or dtypes {shapes} cannot form one tensor; "
                         "preprocess_images resizes them to image_size")
    return parts[0]


def _to_float(x: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """``(tensor, scale)`` with ``tensor * scale`` in [0, 1]: uint8 [0, 255] stays uint8 (the normalisation's one
    pass reads it and applies the 1/255; a resize converts it first), float [0, 1] is range- and finiteness-checked
    and converted to float32."""
    if x.dtype == torch.uint8:
        return x, 1.0 / 255.0
    if x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = x.to(torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
                "pass uint8 images in [0, 255] or divide by 255"
            )
        return x, 1.0
    raise ValueError(f"images must be uint8 or float, got dtype {x.dtype}")


def preprocess_images(
    images: ImageBatch,
    image_size: Sequence[int] = (3, 128, 128),
    normalize: bool = True,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    crop: Optional[Sequence[float]] = None,
    antialias: bool = True,
) -> torch.Tensor:
    """Validate and convert images to a float NCHW batch ready for the network.

    ``crop``: [top, left, height, width] as fractions of each image, cut out before the resize (spend the
    network's pixels on the workspace, as per-camera crops do on real robots); None keeps the whole image.
    ``antialias``: low-pass filter when the resize shrinks an image (False: plain bilinear, as RLinf resizes).

    A list may hold images of different sizes: each is resized to ``image_size`` on its own. Raises
    ``ValueError`` naming the problem for: a wrong channel count, an ambiguous or 2-d shape, an empty
    batch, a float image with values outside [0, 1], NaN or infinite values, or an unsupported dtype.
    """
    c, h, w = int(image_size[0]), int(image_size[1]), int(image_size[2])
    parts, scales = [], []
    for x in _nchw_parts(images, channels=c):
        x = x.to(device, non_blocking=True)  # uint8 moves as uint8; everything below runs on the device
        if crop is not None:
            x = crop_images(x, crop)  # a view, before the conversion
        x, scale = _to_float(x)
        if x.shape[-2:] != (h, w):  # linear, so it commutes with the scaling below
            x = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)
        parts.append(x)
        scales.append(scale)
    if len(set(scales)) > 1:  # uint8 and float images in one list
        parts = [p * s for p, s in zip(parts, scales)]
        scales = [1.0]
    if len({p.dtype for p in parts}) > 1:  # resized and unresized uint8 parts
        parts = [p.float() for p in parts]
    x = parts[0] if len(parts) == 1 else torch.cat(parts)
    # one pass: x * scale / std - mean / std (or x * scale), written in the requested memory format
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(x.shape, dtype=dtype, device=x.device, memory_format=fmt)  # computed in float32, stored so
    if normalize:  # uint8 is read as it is: no float32 copy of the batch before this pass
        shift, gain = _normalisation(x.device, scales[0])
        torch.addcmul(shift, x, gain, out=out)
    elif scales[0] != 1.0:
        torch.mul(x, scales[0], out=out)
    else:
        out.copy_(x)
    return out


_NORMALISATION = {}


def _normalisation(device: torch.device, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(-mean / std, scale / std)`` as [1, 3, 1, 1] float32 tensors on ``device``, made once per device and scale
    (a tensor built from Python numbers on a GPU is a blocking host-to-device copy on every call)."""
    key = (str(device), scale)
    if key not in _NORMALISATION:
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        _NORMALISATION[key] = ((-mean / std).to(device), (scale / std).to(device))
    return _NORMALISATION[key]


def check_crop(crop: Optional[Sequence[float]]) -> None:
    """A crop is None or [top, left, height, width] fractions with the box inside the image."""
    if crop is None:
        return
    if len(crop) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in crop):
        raise ValueError(f"image_crop must be [top, left, height, width] fractions of the image, got {crop!r}")
    top, left, height, width = (float(v) for v in crop)
    if min(top, left) < 0 or height <= 0 or width <= 0 or top + height > 1 + 1e-9 or left + width > 1 + 1e-9:
        raise ValueError(f"image_crop {list(crop)} must lie inside the image: top, left >= 0, height, width > 0, "
                         "top + height <= 1 and left + width <= 1")


def crop_images(x: torch.Tensor, crop: Sequence[float]) -> torch.Tensor:
    """The [top, left, height, width] fraction box of an NCHW batch (at least one pixel each way)."""
    H, W = x.shape[-2:]
    top, left = int(round(float(crop[0]) * H)), int(round(float(crop[1]) * W))
    height = max(1, min(H - top, int(round(float(crop[2]) * H))))
    width = max(1, min(W - left, int(round(float(crop[3]) * W))))
    return x[..., top:top + height, left:left + width]


def random_shift(x: torch.Tensor, pad: int, generator: "torch.Generator | None" = None) -> torch.Tensor:
    """Training augmentation: shift each image of an NCHW batch by up to ``pad`` pixels (edges replicated)."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offsets)])


def to_uint8_hwc(image: ImageBatch) -> np.ndarray:
    """One image (HWC/CHW or a batch of one, uint8 or float in [0,1]) as a uint8 HxWx3 numpy array, e.g. for PNGs.

    The input is known to be one image, so a (3, H, W) array is read as CHW here.
    """
    x = to_tensor(image)
    if x.dim() == 3 and x.shape[-1] != 3 and x.shape[0] == 3:
        x = x.unsqueeze(0)  # one CHW image
    x = to_nchw(x)
    if x.shape[0] != 1:
        raise ValueError(f"expected one image, got a batch of shape {tuple(x.shape)}")
    x = x[0].permute(1, 2, 0)
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return x.cpu().numpy()


def resize_rgb(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxWx3 uint8 resized to (height, width) (area interpolation when shrinking); unchanged when already so. The
    Franka env resizes camera frames with it, and the demo loader resizes recorded frames to the policy's image size
    with it (one path for online and demo observations)."""
    if frame.shape[:2] == (height, width):
        return np.ascontiguousarray(frame, dtype=np.uint8)
    import cv2
    shrinking = frame.shape[0] > height or frame.shape[1] > width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(frame, (width, height), interpolation=interpolation), dtype=np.uint8)
