"""``RewardManager``: batch reward computation over DI-engine's reward-model registry."""
from typing import Any, List, Optional, Type

import torch
from ding.reward_model import create_reward_model
from ding.utils import REWARD_MODEL_REGISTRY
from easydict import EasyDict

from .observations import TaskDescriptions, images_from_observations, states_from_observations
from .reward_models import BaseImageRewardModel


class RewardManager:
    """Owns one image reward model built from ``config`` through DI-engine's registry.

    >>> manager = RewardManager(EasyDict(type='resnet', checkpoint_path='best_model.safetensors'))
    >>> rewards = manager.compute_rewards({'images': images_nhwc_uint8})  # tensor of shape (N,); bare images work too

    The calls of RLinf's ``RewardManager``: ``compute_rewards(observations, task_descriptions)``, ``to_device``,
    ``register_model``, ``get_available_models``. An RLinf ``reward:`` YAML block becomes a config here through
    ``ding_ext.rlinf_migration``.
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

    def compute_rewards(self, observations: Any, task_descriptions: TaskDescriptions = None) -> torch.Tensor:
        """The model's ``compute_reward``: scaled model reward per image, shape (N,). ``observations`` is a dict with
        ``images`` or ``main_images`` (NHWC or NCHW, numpy or torch, uint8 or float in [0, 1]) and optional
        ``states``, or bare images."""
        return self._require_model().compute_reward(observations, task_descriptions)

    def compute_probabilities(self, observations: Any) -> torch.Tensor:
        """Success probabilities for an observations dict or bare images."""
        return self._require_model().predict_proba(images_from_observations(observations),
                                                   states=states_from_observations(observations))

    def to_device(self, device: str) -> "RewardManager":
        self._require_model().to_device(device)
        self.device = device
        return self
