"""Image reward models; importing this package registers them in DI-engine's REWARD_MODEL_REGISTRY."""
from .base_image_reward_model import BaseImageRewardModel
from .resnet_reward_model import ResNetRewardModel
from .base_video_reward_model import BaseVideoRewardModel, ResNetVideoRewardModel
from .vlm_reward_model import VLMRewardModel

__all__ = [
    "BaseImageRewardModel", "ResNetRewardModel", "BaseVideoRewardModel", "ResNetVideoRewardModel", "VLMRewardModel"
]
