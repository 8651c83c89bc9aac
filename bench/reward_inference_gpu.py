"""The GPU target (batch 256, 128 px, bf16, channels_last, torch.compile; resnet18 + 256-unit head): images/s of
``compute_rewards`` and where the time goes, against plain PyTorch models in the same process.

Rows, each timed in turns with the others of its pass (``bench.timing``):
  plain eager (issue baseline)  torchvision resnet18 + the same head, eval, no_grad, bf16 autocast, the numpy batch
                                prepared on the CPU per call (bench/reward_inference.py's baseline);
  model only, eager / compiled / compiled + CUDA graphs
                                the plain network (channels_last, bf16 weights) on a normalised bf16 channels_last
                                batch already on the GPU: what the GPU does with no input handling at all;
  model only, ... +s2d         the same with the stem as a space-to-depth convolution (ding_ext.space_to_depth_stem);
  ours, <input>, <setting>      ``compute_rewards`` of a frozen ResNetRewardModel (weights compiled in) on the uint8
                                NHWC batch, given as a CUDA tensor (a GPU-simulated env's camera) or as a numpy
                                array (a CPU-rendered env's), with the upload (pageable copy, or pinned_upload with
                                chunks of inference_batch_size, 256 unless named), compile_mode and stem of each row
                                (the defaults on CUDA: pinned upload, space-to-depth stem);
  copy, pageable / pinned       the host-to-device copy of the uint8 batch alone.
Every row is timed twice: with cudnn.benchmark off (torch's default), then on. Each model compiles at its first
call (timed apart, ``first_call_s``). Probabilities of every row of ours are checked against the first one.

    python bench/reward_inference_gpu.py --out bench/results/reward_inference_cuda_gpu_target.json
    python bench/reward_inference_gpu.py --smoke      # a check of this script on the CPU (its numbers mean nothing)

On a GPU machine with torch but without DI-engine (Python 3.12), these wheels were enough for ding_ext (installed
with ``pip install --no-deps --target DIR`` and DIR on PYTHONPATH): DI-engine 0.5.3, DI-toolkit 0.3.0,
DI-treetensor 0.5.0, treevalue 1.5.0, hbutils 0.14.2, easydict 1.14, bitmath 2.1.1, pytimeparse 1.1.10, gym 0.25.1
(built with ``pip wheel``: it has no wheel), gym-notices 0.1.0, gymnasium 1.4.0, farama-notifications 0.0.6,
tensorboardX 2.6.5, dill 0.4.1, enum-tools 0.13.0, deprecation 2.1.0, URLObject 3.0.0, Flask 2.0.3 with
Werkzeug 2.0.3 (a newer Werkzeug breaks Flask 2.0), itsdangerous 2.2.0, defusedxml 0.7.1, chardet 4.0.0,
wcwidth 0.9.4, sniffio 1.3.1, graphviz 0.21.

Writes the JSON after every pass, with the machine (bench/machine.py).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.machine import machine  # noqa: E402
from bench.reward_inference import (IMPORT_ERROR, baseline_fn, compare, ours_model, plain_model,  # noqa: E402
                                    write_json_atomic)
from ding_ext.image_utils import preprocess_images  # noqa: E402
from ding_ext.space_to_depth_stem import replace_resnet_stem  # noqa: E402

BATCH, SIZE = 256, 128
# (name, input, config overrides of ours)
OURS = (
    ('numpy, pageable copy, plain stem', 'numpy', dict(pinned_upload=False, space_to_depth_stem=False)),
    ('numpy, pinned upload', 'numpy', dict(pinned_upload=True)),
    ('cuda tensor, plain stem', 'cuda', dict(space_to_depth_stem=False)),
    ('cuda tensor', 'cuda', dict()),
    ('numpy, pinned upload, CUDA graphs', 'numpy', dict(pinned_upload=True, compile_mode='reduce-overhead')),
    ('numpy, pinned upload, chunk 128, CUDA graphs', 'numpy',
     dict(pinned_upload=True, compile_mode='reduce-overhead', inference_batch_size=128)),
    ('cuda tensor, CUDA graphs', 'cuda', dict(compile_mode='reduce-overhead')),
)


def model_only(device, mode):
    """The plain network in bf16 channels_last on a prepared GPU batch: eager, compiled, or compiled + CUDA graphs;
    '+s2d': with the stem as a space-to-depth convolution (ding_ext.space_to_depth_stem)."""
    net = plain_model(device)
    if mode.endswith('+s2d'):
        replace_resnet_stem(net)
    net = net.to(memory_format=torch.channels_last).to(torch.bfloat16)
    if not mode.startswith('eager'):
        net = torch.compile(net, mode='reduce-overhead' if mode.startswith('cudagraphs') else None)
    return net


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'reward_inference_cuda_gpu_target.json'))
    p.add_argument('--seconds', type=float, default=0.6, help="per timed function and pass (3 runs)")
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--only', default=None, help="comma list of indices into the rows of ours to build (default all)")
    p.add_argument('--model-only', default=None,
                   help="comma list of the model-only rows (eager, compiled, cudagraphs, each also +s2d; default all)")
    p.add_argument('--profile', default=None, help="also write torch.profiler tables of each row of ours here")
    p.add_argument('--smoke', action='store_true',
                   help="a check of this script on the CPU: no compile, no pinned rows, batch 8 (its numbers mean nothing)")
    a = p.parse_args()
    if IMPORT_ERROR:
        raise SystemExit(f"ding_ext failed to import:\n{IMPORT_ERROR}")
    n = 8 if a.smoke else BATCH
    device = torch.device('cpu' if a.smoke else 'cuda')
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    batch_cuda = torch.from_numpy(batch).to(device)
    prepared = preprocess_images(batch_cuda, (3, SIZE, SIZE), True, device, channels_last=True).to(torch.bfloat16)
    pinned = torch.from_numpy(batch) if a.smoke else torch.from_numpy(batch).pin_memory()
    result = dict(machine=machine(device), batch=n, size=SIZE, precision='bf16', channels_last=True,
                  model='resnet18, hidden_dim 256, random init', command=' '.join(sys.argv), build={}, passes=[])
    print(json.dumps(result['machine']), flush=True)

    fns, firsts = {}, {}
    base = plain_model(device)
    fns['plain eager (issue baseline)'] = baseline_fn(base, batch, device, torch.bfloat16)
    modes = a.model_only.split(',') if a.model_only else \
        ('eager', 'eager+s2d') if a.smoke else ('eager', 'compiled', 'cudagraphs', 'compiled+s2d', 'cudagraphs+s2d')
    for mode in modes:
        net = model_only(device, mode)

        def run(net=net):
            with torch.inference_mode():
                return torch.sigmoid(net(prepared).float()).squeeze(-1).cpu()
        t0 = time.perf_counter()
        try:
            run()
            fns[f'model only, {mode}'] = run
            firsts[f'model only, {mode}'] = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            result['build'][f'model only, {mode}'] = f"{type(e).__name__}: {e}"
    fns['copy, pageable'] = lambda: torch.from_numpy(batch).to(device)
    fns['copy, pinned'] = lambda: pinned.to(device, non_blocking=True)
    reference = None
    only = None if a.only is None else {int(i) for i in a.only.split(',')}
    for i, (name, kind, overrides) in enumerate(OURS):
        if only is not None and i not in only:
            continue
        t0 = time.perf_counter()
        try:
            if a.smoke:
                overrides = dict(overrides, pinned_upload=False)
            torch.manual_seed(0)  # the same weights in every row
            model = ours_model(SIZE, 'bf16', device, True, not a.smoke, **overrides)
            x = batch if kind == 'numpy' else batch_cuda
            probs = model.compute_rewards(x)  # compiles
            firsts[f'ours, {name}'] = time.perf_counter() - t0
            probs = model.predict_proba(x)
            if reference is None:
                reference = probs
            result['build'][f'ours, {name}'] = dict(
                description=model.inference_network.description, compile_error=model.inference_network.compile_error,
                max_prob_difference_to_first_row=float((probs - reference).abs().max()))
            fns[f'ours, {name}'] = (lambda m=model, x=x: m.compute_rewards(x))
        except Exception as e:  # noqa: BLE001
            result['build'][f'ours, {name}'] = f"{type(e).__name__}: {e}"
        print(f"built {name}: {result['build'][f'ours, {name}']} ({time.perf_counter() - t0:.1f} s)", flush=True)
    result['first_call_s'] = firsts
    for cudnn_benchmark in (False, True):
        torch.backends.cudnn.benchmark = cudnn_benchmark
        rates = compare(fns, n, a.seconds, a.warmup, device)
        base_rate = rates['plain eager (issue baseline)']['img_s']
        result['passes'].append(dict(cudnn_benchmark=cudnn_benchmark, rows={
            k: dict(v, ratio_to_issue_baseline=v['img_s'] / base_rate) for k, v in rates.items()}))
        write_json_atomic(a.out, result)
        print(f"\ncudnn.benchmark={cudnn_benchmark}: images/s at batch {n} / {SIZE} px (ratio to the plain "
              "eager baseline)", flush=True)
        for k, v in rates.items():
            print(f"  {k:<52} {v['img_s']:10.0f}  {v['img_s'] / base_rate:6.2f}x", flush=True)
    if a.profile:
        profile_rows(fns, a.profile, device)
    print(f"wrote {a.out}")


def profile_rows(fns: dict, path: str, device: torch.device, calls: int = 5) -> None:
    """torch.profiler tables (top kernels and ops by device time, then by host time) of ``calls`` calls per row."""
    from torch.profiler import ProfilerActivity, profile
    with open(path, 'w', encoding='utf-8') as f:
        for name in [k for k in fns if k.startswith('ours') or k.startswith('model only')]:
            fns[name]()
            torch.cuda.synchronize(device)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(calls):
                    fns[name]()
                torch.cuda.synchronize(device)
            avg = prof.key_averages()
            f.write(f"\n===== {name}: {calls} calls =====\n")
            for key in ('self_device_time_total', 'self_cpu_time_total'):
                try:
                    f.write(avg.table(sort_by=key, row_limit=12, max_name_column_width=60) + '\n')
                except Exception as e:  # noqa: BLE001  (a profiler without this column: the other table still)
                    f.write(f"(no table by {key}: {type(e).__name__}: {e})\n")
    print(f"wrote {path}", flush=True)


if __name__ == '__main__':
    main()
