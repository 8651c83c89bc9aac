"""How far our probabilities stray from RLinf's on the same RLinf checkpoint, with and without antialiasing.

    PYTHONPATH=$PWD python bench/rlinf_resize_agreement.py      # -> bench/results/rlinf_resize_agreement.json

RLinf resizes images with plain bilinear interpolation; ours antialiases a shrinking resize unless
``resize_antialias: false`` (which ``ding_ext.rlinf_migration`` sets). A module with RLinf's structure and key names
(the one the tests use: random weights and batch-norm statistics, its head scaled so the probabilities spread over
(0, 1) on these images) is saved as RLinf saves it and loaded here through a migrated config. The images are
smooth synthetic scenes (8x8 colour noise upsampled bicubically, plus pixel noise). For each image size -> model size
it prints the largest and mean |p_ours - p_rlinf| with antialiasing on and off, and how many decisions at 0.5 differ;
the rows at or above the model's size are the baseline (no shrinking, both must agree).
"""
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.ding_ext.test_rlinf_migration import RLinfLayoutResNetReward, load_migrated, save_like_rlinf  # noqa: E402

from ding_ext.checkpoint_io import write_json_atomic  # noqa: E402

SIZES = ((128, 64), (256, 128), (480, 224), (128, 128), (128, 224))
N_IMAGES = 32


def smooth_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    low = torch.from_numpy(rng.random((n, 3, 8, 8)).astype(np.float32))
    x = F.interpolate(low, size=(size, size), mode='bicubic', align_corners=False).clamp(0, 1).numpy()
    x = (x * 255 + rng.normal(0, 4, x.shape)).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def agreement(ours_p: torch.Tensor, rlinf_p: torch.Tensor) -> dict:
    d = (ours_p - rlinf_p).abs()
    return dict(max_abs_diff=float(d.max()), mean_abs_diff=float(d.mean()),
                decisions_differ=int(((ours_p > 0.5) != (rlinf_p > 0.5)).sum()))


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for src, dst in SIZES:
            x = smooth_images(N_IMAGES, src, rng)
            rlinf = RLinfLayoutResNetReward(hidden_dim=64, image_size=(3, dst, dst)).randomise()
            head = rlinf.backbone.fc[3]
            with torch.no_grad():  # spread the probabilities over (0, 1) on these images
                head.weight.mul_(2.0 / rlinf.logits(x).std())
                head.bias.sub_(rlinf.logits(x).mean())
            folder = Path(tmp) / f"{src}_{dst}"
            folder.mkdir()
            path = save_like_rlinf(rlinf, folder, 'safetensors')
            migrated = load_migrated(path, hidden_dim=64, image_size=(3, dst, dst))
            want = rlinf.probabilities(x)
            row = dict(image_px=src, model_px=dst, rlinf_p_min=float(want.min()), rlinf_p_max=float(want.max()),
                       antialias_off=agreement(migrated.predict_proba(x), want))
            migrated.cfg.resize_antialias = True
            row['antialias_on'] = agreement(migrated.predict_proba(x), want)
            rows.append(row)
            print(f"{src:4d} px -> {dst:3d} px: antialias on  max |dp| {row['antialias_on']['max_abs_diff']:.4f}, "
                  f"mean {row['antialias_on']['mean_abs_diff']:.4f}, decisions differ "
                  f"{row['antialias_on']['decisions_differ']}/{N_IMAGES}; off (migrated) max |dp| "
                  f"{row['antialias_off']['max_abs_diff']:.2e}", flush=True)
    result = dict(machine=dict(cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                               python=platform.python_version(), torch=torch.__version__, numpy=np.__version__),
                  n_images=N_IMAGES, rows=rows)
    out = Path(__file__).resolve().parent / 'results' / 'rlinf_resize_agreement.json'
    write_json_atomic(str(out), result)
    print(f"wrote {out}")


if __name__ == '__main__':
    main()
