"""DI-engine extension: image success classifiers as reward models.

Importing ``ding_ext`` registers ``resnet`` in DI-engine's ``REWARD_MODEL_REGISTRY`` so that
``ding.reward_model.create_reward_model(EasyDict(type='resnet', ...), device, tb_logger)`` builds it.
"""
from . import policies  # noqa: F401  (registers ppo_reward_image / sac_reward_image and *_command)
from .reward_models import BaseImageRewardModel, ResNetRewardModel
from .reward_manager import RewardManager

__all__ = ["BaseImageRewardModel", "ResNetRewardModel", "RewardManager"]
