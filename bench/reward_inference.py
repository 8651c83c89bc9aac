"""Inference throughput (images/s) of ``ResNetRewardModel`` against a plain PyTorch model in the same process.

For every batch size x image size x precision x channels_last setting it times, on one random uint8 NHWC numpy batch
(as an env yields it):
  ours compute_rewards   ``model.compute_rewards(batch)``;
  ours estimate          ``model.estimate(transitions)``, one transition per image (reward_mode='per_step',
                         score_once off: every call scores every image);
  baseline               torchvision resnet18 + the same head, eval, ``torch.no_grad()``, input prepared per call on
                         the CPU (uint8 -> float /255, NHWC -> NCHW, ImageNet mean/std, then to the device), fp32 or
                         bf16 autocast, probabilities back on the CPU.
The functions of a row are timed in turns (each repeat times all of them), so load from other processes hits them
alike. ``int8`` times our quantised copy (``precision='int8'``, calibrated on random images, its agreement check
waived: the speed only) against the fp32 baseline. Ratios: ``*_ratio`` against the baseline of the same precision, ``*_ratio_fp32`` against the fp32 baseline
(the targets of issue 13 are stated against plain fp32). Model: resnet18, hidden_dim 256, random init, frozen (loaded from a checkpoint); image_size
[3, S, S] for S x S inputs. On CUDA a reference is added at batch 256 / 128 px: the baseline under torch.compile,
channels_last, bf16 autocast, timed with the baseline's CPU preparation and with the uint8 batch moved to the GPU
first (compile errors are recorded, not raised).

    python bench/reward_inference.py --device cuda                # full grid, 1 s per timed function
    python bench/reward_inference.py --device cpu --quick         # batches 1,16; 0.2 s per function
    python bench/reward_inference.py --device cpu --batches 64 --sizes 128 --precisions fp32 --channels-last true,false
    python bench/reward_inference.py --device cuda --gpu-target   # batch 256 / 128 px / bf16 / channels_last / compile
    python bench/reward_inference.py --device cpu --batches 64 --sizes 128 --precisions fp32,int8   # the CPU target

Writes ``bench/results/reward_inference_<device>.json`` (``--out``) after every row. Without DI-engine (a bare GPU
machine), install it from wheels first and put them on PYTHONPATH; if ``ding_ext`` still fails to import, the
traceback is printed and recorded, and the baseline rows are measured anyway.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn as nn
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.pop('DEBUG_IMAGE_SAVE_DIR', None)  # the model must not write the scored images while being timed

try:
    from ding_ext.checkpoint_io import write_json_atomic
    from ding_ext.reward_models import ResNetRewardModel
    IMPORT_ERROR = None
except Exception:  # noqa: BLE001  (a machine without a working DI-engine still gets the baseline rows)
    IMPORT_ERROR = traceback.format_exc()
    print(f"ding_ext failed to import; only the baseline is timed:\n{IMPORT_ERROR}", file=sys.stderr, flush=True)
    ResNetRewardModel = None

    def write_json_atomic(path, obj):
        with open(path + '.tmp', 'w', encoding='utf-8') as f:
            json.dump(obj, f, indent=2)
        os.replace(path + '.tmp', path)

from bench.machine import machine  # noqa: E402
from bench.timing import images_per_second, time_in_turns  # noqa: E402

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
# the baseline's autocast dtype per precision; int8 (ours: a quantised copy) is measured against the plain fp32 model
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'int8': torch.float32}


def plain_model(device: torch.device) -> nn.Module:
    """torchvision resnet18 with ResNetClassifier's head (Linear 512->256, ReLU, Dropout, Linear 256->1)."""
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(0.0), nn.Linear(256, 1))
    return net.eval().to(device)


def baseline_fn(net: nn.Module, batch: np.ndarray, device: torch.device, dtype: torch.dtype, on_device_prep=False,
                channels_last=False):
    prep = device if on_device_prep else torch.device('cpu')
    mean, std = MEAN.to(prep), STD.to(prep)

    def run():
        x = torch.from_numpy(batch).to(prep)
        x = ((x.float().div(255.0).permute(0, 3, 1, 2) - mean) / std).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return torch.sigmoid(net(x).float()).squeeze(-1).cpu()
    return run


def throughput(fn, n_images: int, seconds: float, warmup: int, device: torch.device, repeats: int = 3) -> dict:
    """Median images/s over ``repeats`` timed runs of about seconds/repeats each, after ``warmup`` calls."""
    return compare({'fn': fn}, n_images, seconds, warmup, device, repeats)['fn']


def ours_model(size: int, precision: str, device: torch.device, channels_last, compile_: bool, **overrides):
    """A frozen model (as in RL: loaded from a checkpoint, cooptrain_reward off; compile freezes its weights);
    ``overrides``: further config keys (compile_mode, pinned_upload, inference_batch_size)."""
    cfg = dict(type='resnet', arch='resnet18', hidden_dim=256, pretrained=False, image_size=[3, size, size],
               precision=precision, reward_mode='per_step', inference_batch_size=256, channels_last=channels_last,
               compile=compile_, score_once=False)
    cfg.update(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        init = ResNetRewardModel(dict(cfg, precision='fp32', pinned_upload='auto'), device='cpu')
        ckpt = init.save(os.path.join(tmp, 'random_init.safetensors'))
        frozen = dict(cfg, checkpoint_path=ckpt, cooptrain_reward=False)
        if precision == 'int8':  # calibrated on random images; speed only: the agreement check is waived
            frozen.update(int8_calibration_data=random_image_folder(os.path.join(tmp, 'images'), size),
                          int8_tolerance=1.0)
        model = ResNetRewardModel(frozen, device=str(device))
        model.predict_proba(np.zeros((1, size, size, 3), np.uint8))  # builds the scoring copy (int8: here)
        return model


def random_image_folder(root: str, size: int, n: int = 64) -> str:
    from ding_ext.png_writer import write_png
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(os.path.join(root, ('success', 'failure')[i % 2], f'{i}.png'),
                  rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return root


def compare(fns: dict, n_images: int, seconds: float, warmup: int, device: torch.device, repeats: int = 3) -> dict:
    """``throughput`` of several functions, timed in turns: every repeat times each function once."""
    timings = time_in_turns(fns, seconds, warmup, device, repeats)
    return {k: images_per_second(t, n_images) for k, t in timings.items()}


def parse_layout(v: str):
    return {'auto': 'auto', 'true': True, 'false': False}[v.strip().lower()]


def compiled_reference(batch: np.ndarray, device: torch.device, seconds: float, warmup: int) -> dict:
    out = dict(batch=len(batch), size=batch.shape[1], precision='bf16', channels_last=True)
    try:
        net = torch.compile(plain_model(device).to(memory_format=torch.channels_last))
        for key, on_dev in (('cpu_prep', False), ('gpu_prep', True)):
            fn = baseline_fn(net, batch, device, torch.bfloat16, on_device_prep=on_dev, channels_last=True)
            t0 = time.perf_counter()
            fn()  # compiles
            out[f'{key}_first_call_s'] = time.perf_counter() - t0
            out[key] = throughput(fn, len(batch), seconds, warmup, device)
    except Exception as e:  # noqa: BLE001
        out['error'] = f"{type(e).__name__}: {e}"
    return out


def time_row(ours, base, rng, n: int, size: int, precision: str, layout, compile_: bool, timing: dict) -> dict:
    """One row: our two entry points and the plain baselines (this precision and fp32) on one uint8 batch."""
    device = timing['device']
    batch = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    row = dict(batch=n, size=size, precision=precision, channels_last=layout, compile=compile_)
    if ours is not None and compile_:  # the first call compiles: timed apart
        t0 = time.perf_counter()
        ours.compute_rewards(batch)
        row['first_call_s'] = time.perf_counter() - t0
    fns = dict(baseline=baseline_fn(base, batch, device, DTYPES[precision]))
    if DTYPES[precision] != torch.float32:
        fns['baseline_fp32'] = baseline_fn(base, batch, device, torch.float32)
    if ours is not None:
        transitions = [dict(obs=np.zeros(4, np.float32), action=np.zeros(2, np.float32), reward=torch.zeros(1),
                            done=False, reward_image=im) for im in batch]
        fns['compute_rewards'] = lambda: ours.compute_rewards(batch)
        fns['estimate'] = lambda: ours.estimate(transitions)
    row.update(compare(fns, n, timing['seconds'], timing['warmup'], device, timing['repeats']))
    row.setdefault('baseline_fp32', row['baseline'])
    if ours is not None:
        row['inference_network'] = ours.inference_network.description
        row['compile_error'] = ours.inference_network.compile_error
        for k in ('compute_rewards', 'estimate'):
            row[f'{k}_ratio'] = row[k]['img_s'] / row['baseline']['img_s']
            row[f'{k}_ratio_fp32'] = row[k]['img_s'] / row['baseline_fp32']['img_s']
    g = lambda k: f"{row[k]['img_s']:9.1f}" if k in row else f"{'-':>9}"  # noqa: E731
    r = lambda k: f"{row[k]:.2f}" if k in row else '-'  # noqa: E731
    print(f"{n:5d} {size:4d} {precision:>4} {str(layout):>6} {str(compile_):>5} {g('compute_rewards')} {g('estimate')} {g('baseline')} "
          f"{g('baseline_fp32')} {r('compute_rewards_ratio'):>7} {r('estimate_ratio'):>8} "
          f"{r('compute_rewards_ratio_fp32'):>7}", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--batches', default=None, help="comma list (default 1,16,64,256; --quick: 1,16)")
    p.add_argument('--sizes', default='128,224')
    p.add_argument('--precisions', default='fp32,bf16')
    p.add_argument('--seconds', type=float, default=None, help="per timed function (default 1; --quick: 0.2)")
    p.add_argument('--warmup', type=int, default=None, help="warm-up calls per function (default 3; --quick: 1)")
    p.add_argument('--out', default=None)
    p.add_argument('--quick', action='store_true', help="short CPU check: fewer batches, seconds and warm-ups")
    p.add_argument('--channels-last', default='auto',
                   help="comma list of the model's channels_last settings to time: auto,true,false (default auto)")
    p.add_argument('--compile', default='false',
                   help="comma list of our model's compile settings to time: false,true (the first call compiles)")
    p.add_argument('--gpu-target', action='store_true',
                   help="the GPU target config: batch 256, 128 px, bf16, channels_last, compile")
    p.add_argument('--repeats', type=int, default=3, help="timed turns per function (the median is reported)")
    a = p.parse_args()
    if a.gpu_target:
        a.batches, a.sizes, a.precisions, a.channels_last, a.compile = '256', '128', 'bf16', 'true', 'true'
    device = torch.device(a.device)
    batches = [int(b) for b in (a.batches or ('1,16' if a.quick else '1,16,64,256')).split(',')]
    sizes = [int(s) for s in a.sizes.split(',')]
    precisions = a.precisions.split(',')
    layouts = [parse_layout(v) for v in a.channels_last.split(',')]
    compiles = [{'true': True, 'false': False}[v.strip().lower()] for v in a.compile.split(',')]
    seconds = a.seconds if a.seconds is not None else (0.2 if a.quick else 1.0)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 3)
    out_path = a.out or os.path.join(ROOT, 'bench', 'results', f'reward_inference_{device.type}.json')
    timing = dict(seconds=seconds, warmup=warmup, device=device, repeats=a.repeats)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    result = dict(machine=machine(device), import_error=IMPORT_ERROR, rows=[], compiled_reference=None,
                  config=dict(batches=batches, sizes=sizes, precisions=precisions, seconds=seconds, warmup=warmup,
                              channels_last=layouts, compile=compiles, repeats=a.repeats, gpu_target=a.gpu_target,
                              model='resnet18, hidden_dim 256, random init', quick=a.quick,
                              command=' '.join(sys.argv)))
    print(json.dumps(result['machine']), flush=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    base = plain_model(device)
    head = (f"{'batch':>5} {'size':>4} {'prec':>4} {'layout':>6} {'comp':>5} {'ours_cr':>9} {'ours_est':>9} {'base':>9} "
            f"{'base32':>9} {'cr/base':>7} {'est/base':>8} {'cr/b32':>7}")
    print(head, flush=True)
    for size in sizes:
        for precision in precisions:
            for layout, compile_ in ((lay, c) for lay in layouts for c in compiles):
                ours = ours_model(size, precision, device, layout, compile_) if ResNetRewardModel else None
                for n in batches:
                    result['rows'].append(time_row(ours, base, rng, n, size, precision, layout, compile_, timing))
                    write_json_atomic(out_path, result)
    if device.type == 'cuda':
        batch = rng.integers(0, 256, (256, 128, 128, 3), dtype=np.uint8)
        ref = result['compiled_reference'] = compiled_reference(batch, device, seconds, warmup)
        write_json_atomic(out_path, result)
        print("compiled channels_last bf16 baseline, batch 256 / 128 px: " + (ref.get('error') or ', '.join(
            f"{k} {ref[k]['img_s']:.1f} img/s (first call {ref[k + '_first_call_s']:.1f} s)"
            for k in ('cpu_prep', 'gpu_prep'))), flush=True)
    print(f"wrote {out_path}")


if __name__ == '__main__':
    main()
