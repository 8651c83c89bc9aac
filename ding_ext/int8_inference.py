"""Int8 scoring on CPU: post-training static quantisation of the reward network, kept only where it agrees with fp32.

``precision='int8'`` (CPU, frozen models): the eval-mode network (BatchNorm folded) is quantised with PyTorch's FX
graph mode for the x86 backend (fbgemm's int8 kernels: per-channel int8 weights, int8 activations whose ranges are
observed on calibration images); the classifier head stays fp32. The calibration images come from
``int8_calibration_data``, a success/ + failure/ folder of the images the model scores (the collected data). The
quantised copy is then checked on up to ``int8_check_images`` images of that folder: at the model's threshold, its
precision and recall against the folder's labels must stay within ``int8_tolerance`` (0.005) of the fp32 network's;
otherwise scoring stays fp32. Either way the outcome, with the numbers, is logged and kept in the model's
``precision_choice``. A copy is built when the model first scores, and again whenever its weights change (a load).

Why: on CPUs without native bf16 (no AVX512_BF16 or AMX), bf16 is emulated and slower than fp32, while fbgemm's int8
kernels run on AVX2 (bench/reward_inference.py measures it: ``--precisions fp32,int8``).
"""
import copy
import logging
import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

BACKEND = 'x86'  # fbgemm on AVX2 / AVX-512 CPUs, oneDNN where it is faster


def int8_unavailable() -> Optional[str]:
    """Why int8 scoring cannot run in this PyTorch (None when it can)."""
    try:
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: F401
    except ImportError as e:  # PyTorch builds whose FX quantisation moved out (to torchao)
        return f"torch.ao.quantization.quantize_fx is not available in torch {torch.__version__}: {e}"
    engines = torch.backends.quantized.supported_engines
    if BACKEND not in engines and 'fbgemm' not in engines:
        return f"this PyTorch build has no x86/fbgemm quantised engine (engines: {engines})"
    return None


def quantize_network(network: nn.Module, calibration: torch.Tensor, batch_size: int = 64) -> nn.Module:
    """An int8 copy of the eval-mode float ``network`` (on the CPU), its activation ranges observed on the
    preprocessed NCHW ``calibration`` images."""
    reason = int8_unavailable()
    if reason:
        raise RuntimeError(f"int8 scoring is unavailable: {reason}")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    engine = BACKEND if BACKEND in torch.backends.quantized.supported_engines else 'fbgemm'
    torch.backends.quantized.engine = engine
    x = calibration.float().contiguous().cpu()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter('ignore')  # FX quantisation announces its move to torchao on every call
        # the classifier head (a few small linear layers deciding the logit) stays fp32: int8 there moves
        # probabilities near the threshold for no measurable speed
        mapping = get_default_qconfig_mapping(engine)
        if isinstance(getattr(network, 'head', None), nn.Module):
            mapping = mapping.set_module_name('head', None)
        prepared = prepare_fx(copy_for_quantization(network), mapping, (x[:1].clone(),))
        for i in range(0, len(x), batch_size):
            prepared(x[i:i + batch_size].clone())
        return convert_fx(prepared).eval()


def copy_for_quantization(network: nn.Module) -> nn.Module:
    """A float32 NCHW eval copy on the CPU (quantisation wants contiguous float weights, whatever the original's
    memory format and device)."""
    net = copy.deepcopy(network).float().cpu().eval()
    with torch.no_grad():
        for p in list(net.parameters()) + list(net.buffers()):
            if p.dim() == 4:
                p.data = p.data.contiguous()
    return net


def check_agreement(fp32_probs: Any, int8_probs: Any, labels: Any, threshold: float,
                    tolerance: float) -> Dict[str, Any]:
    """Precision and recall of both at ``threshold`` against ``labels``; ``accepted`` when both stay within
    ``tolerance`` of fp32's."""
    from .evaluation import metrics_from_probs
    a, b = np.asarray(fp32_probs, dtype=np.float64), np.asarray(int8_probs, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    m32, m8 = metrics_from_probs(a, y, threshold), metrics_from_probs(b, y, threshold)
    p32, r32, p8, r8 = m32['precision'], m32['recall'], m8['precision'], m8['recall']
    return dict(images=int(len(y)), success=int(y.sum()), threshold=float(threshold), tolerance=float(tolerance),
                fp32=dict(precision=p32, recall=r32), int8=dict(precision=p8, recall=r8),
                decisions_agree=float(np.mean((a > threshold) == (b > threshold))) if len(y) else float('nan'),
                max_prob_diff=float(np.max(np.abs(a - b))) if len(y) else float('nan'),
                accepted=bool(abs(p8 - p32) <= tolerance and abs(r8 - r32) <= tolerance))


def spread(n: int, k: int) -> np.ndarray:
    """At most ``k`` indices of ``range(n)``, evenly spread (the folder's order: classes, episodes, steps)."""
    return np.unique(np.linspace(0, n - 1, min(n, int(k))).round().astype(int)) if n else np.zeros(0, int)


def build_int8_copy(model: Any, network: nn.Module) -> Tuple[Optional[nn.Module], Dict[str, Any]]:
    """For a reward model with ``precision='int8'``: the int8 copy of its eval-mode ``network`` and the check's
    outcome, or (None, outcome) where the check refused it. Of ``int8_calibration_data``, up to
    ``int8_check_images`` images (spread over the folder) check it, and up to ``int8_calibration_images`` of those
    calibrate it."""
    from .image_folder_dataset import ImageFolderDataset, scan_image_folder
    cfg = model.cfg
    scan = scan_image_folder(cfg.int8_calibration_data, cache=False)  # raises unless both classes have images
    check = spread(len(scan.labels), int(cfg.int8_check_images))  # both classes in proportion (the folder's order)
    data = ImageFolderDataset(scan, check)
    step = int(cfg.inference_batch_size)

    def batches(indices):
        for i in range(0, len(indices), step):
            images = np.stack([data[int(j)][0] for j in indices[i:i + step]])
            yield model.preprocess_images(images).float().cpu().contiguous()

    with torch.inference_mode(False), torch.no_grad():
        calibration = spread(len(check), int(cfg.int8_calibration_images))
        q = quantize_network(network, torch.cat(list(batches(calibration))))
        ref = copy_for_quantization(network)
        p32, p8 = [], []
        for x in batches(np.arange(len(check))):
            p32.append(torch.sigmoid(ref(x).float()).view(-1))
            p8.append(torch.sigmoid(q(x).float()).view(-1))
    result = check_agreement(torch.cat(p32).numpy(), torch.cat(p8).numpy(), data.labels > 0.5, model.threshold,
                             float(cfg.int8_tolerance))
    result.update(data=str(cfg.int8_calibration_data), calibration_images=int(len(calibration)))
    f32, i8 = result['fp32'], result['int8']
    summary = (f"fp32 precision {f32['precision']:.4f} recall {f32['recall']:.4f}, int8 precision "
               f"{i8['precision']:.4f} recall {i8['recall']:.4f} on {result['images']} images of {result['data']} at "
               f"threshold {result['threshold']:.4g} (tolerance {result['tolerance']})")
    if result['accepted']:
        logger.info("reward model scores in int8: %s", summary)
        return q, result
    logger.warning("int8 copy refused, scoring in fp32: %s", summary)
    return None, result
