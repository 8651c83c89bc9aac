"""Reading reward images and success labels out of DI-engine transitions."""
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import numpy as np
import torch

# where a transition holds the env's reward-camera frame
IMAGE_KEY = "reward_image"
# where a transition holds the env's per-frame facts for the dataset sidecar (episode id, step, label facts)
FRAME_INFO_KEY = "frame_info"
# the key in a transition's ``frame_info`` (and in the dataset sidecar) holding the robot's joint velocities at the
# reward image's step, for the joint-speed gate of clip reward models
REWARD_STATE_KEY = "reward_state"
# where a stored transition keeps its success probability (a ``StoredScore``) for the reward model's ``estimate()``
SCORE_KEY = "reward_score"
# keys the learner must not receive (its collate cannot batch images, per-frame dicts of strings or stored scores)
NON_LEARNER_KEYS = (IMAGE_KEY, FRAME_INFO_KEY, SCORE_KEY)


class StoredScore:
    """A transition's success probability and the model version that gave it.

    One mutable object per stored transition: shallow copies of the transition (a replay buffer's sampled batches)
    share it, so a probability stored through a copy reaches the stored transition.
    """
    __slots__ = ('prob', 'version')

    def __init__(self, prob: float = float('nan'), version: Any = None) -> None:
        self.prob, self.version = prob, version

    def __getstate__(self):
        return self.prob, self.version

    def __setstate__(self, state) -> None:
        self.prob, self.version = state

    def __repr__(self) -> str:
        return f"StoredScore(prob={self.prob:.4f}, version={self.version!r})"


def attach_score(transition: Dict[str, Any]) -> "StoredScore":
    """The transition's ``StoredScore``, added (empty) when it has none."""
    score = transition.get(SCORE_KEY)
    if score is None:
        score = transition[SCORE_KEY] = StoredScore()
    return score


def strip_images(data: Iterable[Mapping[str, Any]], keep_scores: bool = False) -> List[Mapping[str, Any]]:
    """Shallow copies without the reward image, the frame info and (unless ``keep_scores``) the stored score (the
    learner's collate cannot batch them); transitions without any of them are passed as they are."""
    drop = tuple(k for k in NON_LEARNER_KEYS if not (keep_scores and k == SCORE_KEY))
    return [{k: v for k, v in t.items() if k not in drop} if any(k in t for k in drop) else t for t in data]


def lookup(transition: Mapping, key: str) -> Any:
    """Value at ``key`` in a transition: a top-level key, or a dotted path into nested dicts
    (``next_obs.image``); a plain key is also looked up in ``info``. None when absent."""
    node: Any = transition
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            node = None
            break
    if node is None and "." not in key and isinstance(transition.get("info"), Mapping):
        node = transition["info"].get(key)
    return node


def as_bool(v: Any) -> bool:
    """A flag that may be a python bool, a numpy array or a (one-element) tensor."""
    if isinstance(v, torch.Tensor):
        return bool(v.reshape(-1)[0].item()) if v.numel() else False
    if isinstance(v, np.ndarray):
        return bool(v.reshape(-1)[0]) if v.size else False
    return bool(v)


def labelled_images(transitions: Iterable[Mapping], image_key: str, success_key: str) -> Tuple[List[Any], List[bool]]:
    """(images, success labels) of the transitions that carry both an image and a label."""
    images, labels = [], []
    for t in transitions:
        image, label = lookup(t, image_key), lookup(t, success_key)
        if image is not None and label is not None:
            images.append(image)
            labels.append(as_bool(label))
    return images, labels
