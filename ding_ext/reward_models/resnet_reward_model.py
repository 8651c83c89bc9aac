"""``ResNetRewardModel``: a torchvision ResNet success classifier, registered as ``resnet``."""
from typing import Any, Dict, Mapping

import torch
import torch.nn as nn
from ding.utils import REWARD_MODEL_REGISTRY

from ..networks import ResNetClassifier, infer_classifier_settings
from ..rlinf_checkpoint import from_rlinf_resnet
from .base_image_reward_model import BaseImageRewardModel


@REWARD_MODEL_REGISTRY.register('resnet')
class ResNetRewardModel(BaseImageRewardModel):
    """Binary success classifier (ResNet trunk + MLP head) as a DI-engine reward model.

    Build it with ``create_reward_model(EasyDict(type='resnet', ...), device, tb_logger)`` after
    ``import ding_ext``; ``default_config()`` lists every key with its meaning. Checkpoints saved by RLinf's
    ResNetRewardModel load too (``ding_ext.rlinf_checkpoint``).
    """

    config = dict(
        BaseImageRewardModel.config,
        type='resnet',
        # (str) Backbone: resnet18 | resnet34 | resnet50 | resnet101 | resnet152.
        arch='resnet18',
        # (bool|str) False (random init) or the path of a local torchvision weights file; nothing is downloaded.
        pretrained=False,
        # (int|None) Hidden units of the MLP head; None gives a linear head.
        hidden_dim=256,
        # (float) Dropout in the head.
        dropout=0.0,
    )

    def build_network(self) -> nn.Module:
        return ResNetClassifier(self.cfg.arch, self.cfg.hidden_dim, self.cfg.dropout, self.cfg.pretrained)

    def network_metadata(self) -> Dict[str, Any]:
        meta = super().network_metadata()
        meta.update(arch=self.cfg.arch, hidden_dim=self.cfg.hidden_dim)
        return meta

    def checkpoint_weights(self, weights: Mapping[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
        return from_rlinf_resnet(weights, source)

    def describe_weights(self, weights: Mapping[str, torch.Tensor]) -> str:
        found = infer_classifier_settings(weights)
        if not found:
            return ''
        config = {k: self.cfg[k] for k in found}
        return f"the checkpoint looks like {found}, the config says {config}"
