"""Helpers shared by the ding_ext tests: small reward models with a forced output, synthetic images."""
import math

import numpy as np
import torch
from easydict import EasyDict


def make_model(tb_logger=None, **overrides):
    import ding_ext  # noqa: F401  (registers 'resnet')
    from ding.reward_model import create_reward_model
    cfg = dict(type='resnet', image_size=[3, 32, 32], hidden_dim=16)
    cfg.update(overrides)
    return create_reward_model(EasyDict(cfg), 'cpu', tb_logger)


def force_probability(model, p):
    """Make the classifier output probability ``p`` for every image (zero last-layer weights, bias = logit(p))."""
    layer = model.network.output_layer
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(math.log(p / (1 - p)))


def separable_images(n, size=32, seed=0):
    """n success images (bright square in the centre) and n failure images (no square), with noise, NHWC uint8."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 90, size=(2 * n, size, size, 3), dtype=np.uint8)
    q = size // 4
    base[:n, q:3 * q, q:3 * q, :] = rng.integers(180, 255, size=(n, 2 * q, 2 * q, 3), dtype=np.uint8)
    labels = np.array([1] * n + [0] * n, dtype=bool)
    return base, labels


def count_forward_calls(model, calls):
    """Append the batch size of every forward pass of ``model``'s scoring network to ``calls``."""
    real = model.inference_network

    def counted(x):
        calls.append(x.shape[0])
        return real(x)
    model.inference_network = counted
