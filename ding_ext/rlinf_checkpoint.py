"""RLinf ResNet reward checkpoints -> ``ResNetClassifier`` state dicts.

RLinf's ``ResNetRewardModel`` (``rlinf/models/embodiment/reward/resnet_reward_model.py``) is a torchvision ResNet
whose ``fc`` is replaced by the reward head, so its state dict holds ``backbone.*`` only: the head is
``backbone.fc.0`` / ``backbone.fc.3`` (Linear, ReLU, Dropout, Linear with ``hidden_dim``) or ``backbone.fc`` (one
Linear without). RLinf saves it as a raw state dict (its FSDP ``.../model_state_dict/full_weights.pt``), as
``.safetensors``, or wrapped in a dict under ``model_state_dict``; its loader strips ``module.`` / ``_orig_mod.`` /
``model.`` prefixes and skips the ``_mean`` / ``_std`` normalisation buffers. Our ``ResNetClassifier`` has the same
``backbone.*`` keys with ``fc`` left empty and the head under ``head.*`` (``head.0`` / ``head.3``, or ``head.1``
behind a Dropout for a linear head), so the conversion only renames the head.
"""
from typing import Dict, Mapping

import torch

RLINF_HEAD_PREFIX = "backbone.fc."
# normalisation constants RLinf keeps as (non-persistent) buffers; older files may hold them
RLINF_BUFFER_KEYS = ("_mean", "_std", "mean", "std")
# RLinf's first reward model (a ResNet-10 with GroupNorm and a separate ``classifier`` head) has no counterpart here
RLINF_RESNET10_HEAD_PREFIX = "classifier."


def is_rlinf_resnet_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True when ``state`` is laid out as RLinf's ResNetRewardModel (the head inside ``backbone.fc``)."""
    return any(k.startswith(RLINF_HEAD_PREFIX) for k in _strip_model_prefix(state))


def from_rlinf_resnet(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """``state`` with RLinf's ResNetRewardModel keys renamed to ``ResNetClassifier``'s; any other state dict is
    returned as it is. Raises ``ValueError`` for RLinf's ResNet-10 reward model, which has no counterpart here."""
    state = _strip_model_prefix(state)
    keys = list(state)
    if any(k.startswith(RLINF_RESNET10_HEAD_PREFIX) for k in keys) and any(k.startswith("backbone.") for k in keys):
        raise ValueError(
            f"{source} holds RLinf's first ResNet reward model (a ResNet-10 with GroupNorm and a 'classifier.*' head), "
            "which has no counterpart here; retrain it here (python -m ding_ext.train_reward_model --data DIR). "
            "RLinf's later torchvision-ResNet reward model (head under backbone.fc) loads here"
        )
    if not is_rlinf_resnet_state(state):
        return dict(state)
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in RLINF_BUFFER_KEYS:
            continue
        if key.startswith(RLINF_HEAD_PREFIX):
            rest = key[len(RLINF_HEAD_PREFIX):]
            if rest in ("weight", "bias"):  # a linear head: ours sits behind a Dropout (head.1)
                key = f"head.1.{rest}"
            else:  # head.<index>.<param>: the same Sequential layout
                key = f"head.{rest}"
        out[key] = value
    return out


def _strip_model_prefix(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """RLinf's loader also strips ``model.`` (a wrapper's attribute), here when every key has it; ``module.`` /
    ``_orig_mod.`` are stripped by ``checkpoint_io.load_checkpoint`` already."""
    if state and all(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items()}
    return dict(state)
