"""The ResNet stem (7x7 convolution, stride 2, padding 3, on 3 channels) rewritten as an exact 4x4 stride-1
convolution on a 2x2 space-to-depth image (12 channels), for scoring on GPUs.

With 3 input channels and stride 2 the stem suits tensor cores badly: on an H100 at batch 256 / 128 px in bf16,
cuDNN spent about 0.93 ms of a 2.2 ms ResNet-18 forward on it, and the whole network took 1.56 ms with this stem
(bench/reward_inference_gpu.py --profile; bench/results/reward_inference_cuda_gpu_target_variants.json). Splitting every output position's 7x7 window by the parity of its rows and columns gives the same sums
as a 4x4 window over the four parity planes of the zero-padded image:

    y[o, i, j] = sum_{c, u, v} W[o, c, u, v] * xp[c, 2i + u, 2j + v]                       (u, v in 0..6)
               = sum_{c, p, q, a, b} W'[o, 4c + 2p + q, a, b] * S[4c + 2p + q, i + a, j + b]   (a, b in 0..3)

with xp the image padded by 3, S = pixel_unshuffle(xp, 2) and W'[o, 4c + 2p + q, a, b] = W[o, c, 2a + p, 2b + q]
(zero where 2a + p or 2b + q is 7). The results agree with the plain convolution to rounding.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def is_resnet_stem(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.kernel_size == (7, 7)
            and module.stride == (2, 2) and module.padding == (3, 3) and module.dilation == (1, 1)
            and module.groups == 1 and module.padding_mode == 'zeros')


class SpaceToDepthStem(nn.Module):
    """``conv`` (a ResNet stem, see ``is_resnet_stem``) as a 4x4 convolution on the 2x2 space-to-depth image."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not is_resnet_stem(conv):
            raise ValueError(f"not a 7x7 / stride 2 / padding 3 convolution on 3 channels: {conv}")
        w = F.pad(conv.weight.detach(), (0, 1, 0, 1))  # [O, 3, 8, 8], row and column 7 zero
        o = w.shape[0]
        # [O, c, a, p, b, q] -> [O, c, p, q, a, b] -> [O, 12, 4, 4]: channel 4c + 2p + q, as pixel_unshuffle orders
        w = w.view(o, 3, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4).reshape(o, 12, 4, 4)
        self.conv = nn.Conv2d(12, o, 4, bias=conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(w)
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (3, 3 + w % 2, 3, 3 + h % 2))  # an even size; the extra zero row/column meets zero weights only
        return self.conv(F.pixel_unshuffle(x, 2))


def replace_resnet_stem(network: nn.Module) -> Optional[str]:
    """Swap the first ResNet stem of ``network`` (in place) for a ``SpaceToDepthStem``; its name, or None if none."""
    for name, module in network.named_modules():
        if is_resnet_stem(module):
            parent_name, _, attr = name.rpartition('.')
            parent = network.get_submodule(parent_name) if parent_name else network
            setattr(parent, attr, SpaceToDepthStem(module))
            return name
    return None
