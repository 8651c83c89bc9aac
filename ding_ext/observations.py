"""Reading reward-model input out of an observations dict (RLinf's ``compute_reward`` contract).

An observations dict holds the reward images under ``images`` (or ``main_images``, the key RLinf's envs use), in
any layout and dtype ``ding_ext.image_utils.preprocess_images`` accepts, and optionally ``states`` (one row per
image: the robot's reward state, which a clip model's joint-speed gate reads; other models check its length and do
not use it). Bare images (an array, a tensor or a list of
images) are accepted too.
"""
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

IMAGE_KEYS = ("images", "main_images")
STATES_KEY = "states"

TaskDescriptions = Optional[Union[str, Sequence[str]]]


def images_from_observations(observations: Any) -> Any:
    """The image batch of ``observations``: its ``images`` or ``main_images`` entry, or ``observations`` itself when
    it is not a mapping. Raises ``ValueError`` naming the problem for a dict with neither (or both) keys, an image
    entry that is None, or ``states`` whose length differs from the number of images."""
    if not isinstance(observations, Mapping):
        return observations
    present = [k for k in IMAGE_KEYS if k in observations and observations[k] is not None]
    if not present:
        raise ValueError(
            f"observations must hold the reward images under 'images' or 'main_images'; got keys "
            f"{sorted(map(str, observations.keys()))}"
        )
    if len(present) > 1:
        raise ValueError(
            "observations hold both 'images' and 'main_images'; pass one of them (which one to score is ambiguous)"
        )
    images = observations[present[0]]
    states = observations.get(STATES_KEY)
    if states is not None:
        n_images, n_states = batch_size(images), _leading_length(states, STATES_KEY)
        if n_images != n_states:
            raise ValueError(
                f"observations['{STATES_KEY}'] has {n_states} rows but observations['{present[0]}'] holds "
                f"{n_images} images; give one state row per image"
            )
    return images


def states_from_observations(observations: Any) -> Any:
    """The ``states`` entry of an observations dict (None when absent, or for bare images)."""
    return observations.get(STATES_KEY) if isinstance(observations, Mapping) else None


def batch_size(images: Any) -> int:
    """Number of images in a batch as ``preprocess_images`` reads it (one 3-d HWC image counts as one)."""
    if isinstance(images, (list, tuple)):
        return len(images)
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return 1 if images.ndim == 3 else int(images.shape[0]) if images.ndim > 0 else 0
    raise TypeError(f"images must be a numpy array, a torch tensor or a list of them, got {type(images).__name__}")


def _leading_length(value: Any, name: str) -> int:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        if value.ndim == 0:
            raise ValueError(f"observations['{name}'] must have one row per image, got a scalar")
        return int(value.shape[0])
    if isinstance(value, (list, tuple)):
        return len(value)
    raise TypeError(f"observations['{name}'] must be an array, a tensor or a list, got {type(value).__name__}")


def check_task_descriptions(task_descriptions: TaskDescriptions, n: int) -> None:
    """None, one string for the whole batch, or one string per image; anything else is a ``ValueError``."""
    if task_descriptions is None or isinstance(task_descriptions, str):
        return
    if not isinstance(task_descriptions, Sequence) or not all(isinstance(t, str) for t in task_descriptions):
        raise ValueError(
            f"task_descriptions must be None, a string or a list of strings, got {type(task_descriptions).__name__}"
        )
    if len(task_descriptions) != n:
        raise ValueError(f"task_descriptions has {len(task_descriptions)} entries for {n} images; give one per image "
                         "(or one string for all)")
