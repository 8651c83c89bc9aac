"""``RewardManager``: batch reward computation over DI-engine's reward-model registry."""
from typing import Any, List, Optional, Type

import torch
from ding.reward_model import create_reward_model
from ding.utils import REWARD_MODEL_REGISTRY
from easydict import EasyDict

from .reward_models import BaseImageRewardModel


class RewardManager:
    """Owns one image reward model built from ``config`` through DI-engine's registry.

    >>> manager = RewardManager(EasyDict(type='resnet', checkpoint_path='best_model.safetensors'))
    >>> rewards = manager.compute_rewards(images_nhwc_uint8)  # tensor of shape (N,)
    """

    def __init__(self, config: Optional[dict] = None, device: str = 'cpu', tb_logger: Any = None) -> None:
        self.device = device
        self.model: Optional[BaseImageRewardModel] = None
        if config is not None:
            self.model = create_reward_model(EasyDict(config), device, tb_logger)

    @staticmethod
    def register_model(name: str, cls: Type[BaseImageRewardModel]) -> None:
        """Register ``cls`` under ``name`` in DI-engine's REWARD_MODEL_REGISTRY (an error if the name is taken by another class)."""
        if not (isinstance(cls, type) and issubclass(cls, BaseImageRewardModel)):
            raise TypeError(f"{cls!r} is not a BaseImageRewardModel subclass")
        existing = REWARD_MODEL_REGISTRY.get(name) if name in REWARD_MODEL_REGISTRY else None
        if existing is cls:
            return
        if existing is not None:
            raise ValueError(f"reward model name {name!r} is already registered to {existing.__name__}")
        REWARD_MODEL_REGISTRY.register(name)(cls)

    @staticmethod
    def get_available_models() -> List[str]:
        """Names of the image reward models in DI-engine's registry."""
        return sorted(
            name for name in REWARD_MODEL_REGISTRY.keys()
            if isinstance(REWARD_MODEL_REGISTRY.get(name), type)
            and issubclass(REWARD_MODEL_REGISTRY.get(name), BaseImageRewardModel)
        )

    def _require_model(self) -> BaseImageRewardModel:
        if self.model is None:
            raise RuntimeError("RewardManager has no model: pass a config when constructing it")
        return self.model

    def compute_rewards(self, observations: Any) -> torch.Tensor:
        """Model rewards for a batch of images (NHWC or NCHW, numpy or torch, uint8 or float in [0, 1])."""
        return self._require_model().compute_rewards(observations)

    def compute_probabilities(self, observations: Any) -> torch.Tensor:
        """Success probabilities for a batch of images."""
        return self._require_model().predict_proba(observations)

    def to_device(self, device: str) -> "RewardManager":
        self._require_model().to_device(device)
        self.device = device
        return self
