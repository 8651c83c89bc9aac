"""The success classifier as a plain torch module: a torchvision ResNet trunk and a small head."""
import os
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn
import torchvision

from .checkpoint_io import load_state_dict_file

RESNET_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
FUSIONS = ("early", "late", "motion")
# 'motion' fusion: the frame differences are scaled by this before the first convolution. Near a "robot static"
# threshold the arm moves less than a pixel per frame (PickCube at 0.2 rad/s: 0.3-1.3 px at 128 px), so the
# differences are small next to the image itself; scaled, they start on the same footing.
MOTION_GAIN = 8.0


class ResNetClassifier(nn.Module):
    """ResNet backbone -> global pooled features -> head -> one logit per image (success vs failure).

    ``hidden_dim`` None gives a linear head; an int gives Linear -> ReLU -> Dropout -> Linear.
    ``pretrained`` is False or the path of a local torchvision ResNet weights file (``.pth``/``.pt``
    /``.safetensors`` with the backbone's keys); nothing is downloaded.

    ``frames`` > 1 classifies a clip: the input is [B, 3 * frames, H, W] (the frames stacked on channels, oldest
    first). ``fusion`` 'early': the first convolution sees all frames at once (pixel-level motion; pretrained
    weights are spread over the frames); 'late': one shared trunk per frame, the head sees all frames' features;
    'motion': the first convolution sees the last frame and the differences between consecutive frames, scaled by
    ``MOTION_GAIN`` (the same linear span as 'early', with motion given explicitly instead of left for training to
    find: early fusion starts from filters that add the frames, which cancels motion).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        hidden_dim: Optional[int] = 256,
        dropout: float = 0.0,
        pretrained: Union[bool, str, None] = False,
        frames: int = 1,
        fusion: str = "early",
    ) -> None:
        super().__init__()
        if arch not in RESNET_ARCHS:
            raise ValueError(f"arch must be one of {RESNET_ARCHS}, got {arch!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if int(frames) < 1:
            raise ValueError(f"frames must be >= 1, got {frames!r}")
        self.frames, self.fusion = int(frames), fusion
        backbone = getattr(torchvision.models, arch)(weights=None)
        if pretrained:
            if pretrained is True or not isinstance(pretrained, (str, os.PathLike)):
                raise ValueError(
                    "pretrained must be false or the path of a local torchvision weights file "
                    f"(nothing is downloaded), got {pretrained!r}"
                )
            state = load_state_dict_file(str(pretrained))
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = backbone.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(
                    f"pretrained weights {pretrained} do not fit {arch}: "
                    f"missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        if self.frames > 1 and fusion in ("early", "motion"):
            conv = backbone.conv1
            early = nn.Conv2d(3 * self.frames, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              bias=False)
            with torch.no_grad():
                if fusion == "early":  # each frame starts with the single-image filters, scaled to keep activations
                    early.weight.copy_(conv.weight.repeat(1, self.frames, 1, 1) / self.frames)
                else:  # the last frame gets the single-image filters, each difference the same filters
                    early.weight.copy_(conv.weight.repeat(1, self.frames, 1, 1))
            backbone.conv1 = early
        feat_dim = backbone.fc.in_features * (self.frames if fusion == "late" else 1)
        backbone.fc = nn.Identity()
        self.backbone = backbone
        if hidden_dim:
            self.head = nn.Sequential(
                nn.Linear(feat_dim, int(hidden_dim)), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(int(hidden_dim), 1)
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feat_dim, 1))

    @property
    def output_layer(self) -> nn.Linear:
        """The final Linear layer (its bias sets the prior logit)."""
        return self.head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (unflatten / flatten, not reshapes built from x.shape: the int8 path traces this with torch.fx)
        if self.frames > 1 and self.fusion == "motion":
            clips = x.unflatten(1, (self.frames, -1))  # [B, T, C, H, W]
            motion = (clips[:, 1:] - clips[:, :-1]).flatten(1, 2) * MOTION_GAIN  # oldest difference first
            x = torch.cat([clips[:, -1], motion], dim=1)
        if self.frames > 1 and self.fusion == "late":
            feats = self.backbone(x.unflatten(1, (self.frames, -1)).flatten(0, 1))  # [B * T, C, H, W]
            return self.head(feats.unflatten(0, (-1, self.frames)).flatten(1)).squeeze(-1)
        return self.head(self.backbone(x)).squeeze(-1)


# residual blocks per stage (layer1..layer4) and whether blocks are bottlenecks (have conv3), as torchvision builds them
_RESNET_LAYOUTS = {
    ((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152",
}


def infer_classifier_settings(state: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """``arch`` and ``hidden_dim`` of a ``ResNetClassifier`` state dict, read from its keys and shapes (a key is
    left out when the state dict does not show it)."""
    out: Dict[str, Any] = {}
    blocks = [len({k.split(".")[2] for k in state if k.startswith(f"backbone.layer{i}.")}) for i in range(1, 5)]
    bottleneck = any(".conv3." in k for k in state if k.startswith("backbone.layer"))
    arch = _RESNET_LAYOUTS.get((tuple(blocks), bottleneck))
    if arch:
        out["arch"] = arch
    if "head.3.weight" in state and "head.0.weight" in state:
        out["hidden_dim"] = int(state["head.0.weight"].shape[0])
    elif "head.1.weight" in state:
        out["hidden_dim"] = None
    return out
