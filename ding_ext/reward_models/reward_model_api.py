"""``RewardModelAPI``: the reward-model calls RLinf users know, on top of DI-engine's contract.

RLinf's ``BaseRewardModel`` has ``compute_reward(observations, task_descriptions)``, ``load_checkpoint(path)``,
``scale_reward(reward)`` and ``to_device(device)``. This mixin provides them for any reward model that has
``compute_rewards(images)`` (thresholded model reward per image), ``load(path)``, ``network``, ``optimizer`` and
``cfg.reward_weight`` / ``cfg.precision``, as ``BaseImageRewardModel`` does.
"""
from typing import Any, Dict

import torch

from ..observations import (TaskDescriptions, batch_size, check_task_descriptions, images_from_observations,
                            states_from_observations)
from ..precision import PRECISIONS, resolve_precision


class RewardModelAPI:
    """``compute_reward`` / ``scale_reward`` / ``load_checkpoint`` / ``to_device`` with RLinf's signatures."""

    def compute_reward(self, observations: Any, task_descriptions: TaskDescriptions = None) -> torch.Tensor:
        """Scaled model reward per image, shape [B], float32 on CPU: ``scale_reward(apply_threshold(p))``.

        ``observations``: a dict with ``images`` or ``main_images`` (any layout and dtype ``preprocess_images``
        accepts) and optional ``states`` (one row per image: the robot's reward state, which a clip model's joint-speed
        gate reads; other models do not use them), or bare images.
        ``task_descriptions``: None, one string, or one per image (image models do not use them).
        """
        images = images_from_observations(observations)
        if task_descriptions is not None and not isinstance(task_descriptions, str):
            check_task_descriptions(task_descriptions, batch_size(images))
        return self.scale_reward(self.compute_rewards(images, states=states_from_observations(observations)))

    def scale_reward(self, reward: Any) -> torch.Tensor:
        """``reward_weight * reward`` (RLinf's ``alpha``). ``combine`` applies it before adding the env reward."""
        if not isinstance(reward, torch.Tensor):
            reward = torch.as_tensor(reward, dtype=torch.float32)
        return float(self.cfg.reward_weight) * reward

    def load_checkpoint(self, checkpoint_path: str) -> Dict[str, Any]:
        """Load weights from a checkpoint (ours, or a state dict saved by RLinf's ResNetRewardModel, .pt or
        .safetensors); returns its metadata. A file without metadata loads with a warning: the config's settings
        (image size, normalisation, architecture) then go unchecked."""
        return self.load(checkpoint_path)

    def to_device(self, device: Any = None) -> "RewardModelAPI":
        """Move the network and the optimiser state to ``device`` (None: stay where it is) and choose 'auto'
        precision again for it. Returns self."""
        if device is None:
            return self
        self.device = torch.device(device)
        self.network.to(self.device)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:  # Adam's step counter stays on the CPU
                    state[key] = value.to(self.device)
        precision, reason = resolve_precision(self.cfg.precision, self.device)
        self.precision_choice = dict(precision=precision, reason=reason)
        self.dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16 and self.device.type == 'cuda')
        return self
