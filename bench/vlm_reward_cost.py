"""Seconds per image of the qwen_vl reward model (``VLMRewardModel.compute_rewards``) against the bare transformers
forward pass on the same, already prepared inputs, in the same process.

For every frames-per-clip x batch size it times, on random uint8 filmstrip clips (as the env yields them):
  ours       ``model.compute_rewards(clips)``: frame sampling, crop/resize, chat prompt, processor, forward, yes/no;
  baseline   ``model.network(**inputs, logits_to_keep=1)`` on the processor outputs made once before timing
             (the model's compute alone).
ratio = ours / baseline seconds (the cost of our preparation around the model); wall-clock and CPU seconds (the
process's own CPU time, which other jobs on a shared CPU do not inflate; run with OMP_NUM_THREADS=1 there).

The model: ``--model-path DIR`` (a local Qwen2-VL / Qwen2.5-VL folder), else a random Qwen2-VL built in a temporary
folder (``--random-arch tiny``, the default, runs anywhere in seconds; ``--random-arch qwen2-vl-2b`` has
Qwen2-VL-2B's layer sizes, so its timings are those of the real 2B model, ~9 GB of memory in fp32;
``--depth-fraction 0.25`` keeps a quarter of its layers, where memory is short: compute is linear in depth).

    python bench/vlm_reward_cost.py                                   # tiny random model, CPU
    python bench/vlm_reward_cost.py --random-arch qwen2-vl-2b --batches 1 --seconds 0 --repeats 1
    python bench/vlm_reward_cost.py --model-path /models/Qwen2-VL-2B-Instruct --device cuda --precision bf16

Writes ``bench/results/vlm_reward_cost_<device>.json`` (the tiny default; other models add ``_<arch or folder>``,
or ``--out``) after every row, with a machine description.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from bench.timing import time_in_turns  # noqa: E402
os.environ.pop('DEBUG_IMAGE_SAVE_DIR', None)  # the model must not write the scored images while being timed


def machine(device: torch.device) -> dict:
    import transformers
    cpu = ''
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), '')
    except OSError:
        pass
    info = dict(cpu_model=cpu or platform.processor(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                numpy=np.__version__, load_average_1min=os.getloadavg()[0] if hasattr(os, 'getloadavg') else None)
    if device.type == 'cuda':
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def seconds_per_call(fn, seconds: float, warmup: int, device: torch.device, repeats: int = 3) -> dict:
    """Median seconds per call over ``repeats`` timed runs of about seconds/repeats each (at least one call each),
    after ``warmup`` calls: wall-clock ``s``, and ``cpu_s``, the CPU time this process used per call (on a CPU shared
    with other jobs the wall clock also counts their turns; with one thread, cpu_s does not)."""
    t = time_in_turns({'fn': fn}, seconds, warmup, device, repeats)['fn']
    return dict(s=statistics.median(t['times']), cpu_s=statistics.median(t['cpu_times']), times=t['times'],
                iters=t['iters'])


def make_model(model_path: str, frames: int, image_size: int, precision: str, device: torch.device):
    from ding_ext.reward_models import VLMRewardModel
    cfg = dict(type='qwen_vl', model_path=model_path, clip_length=frames, num_frames=frames,
               image_size=[3, image_size, image_size], precision=precision, reward_mode='per_step',
               inference_batch_size=64, task_description='Pick up the cube and move it to the goal.')
    return VLMRewardModel(cfg, device=str(device))


def time_clips(model, frames: int, n: int, a: argparse.Namespace, device: torch.device,
               rng: np.random.Generator) -> dict:
    """One row: ours and the baseline on ``n`` random clips of ``frames`` frames."""
    clips = rng.integers(0, 256, (n, a.image_size, frames * a.image_size, 3), dtype=np.uint8)
    inputs = model.model_inputs(clips, model.chat_prompts(None, n))

    def baseline():
        with torch.inference_mode():
            return model.network(**inputs, logits_to_keep=1).logits

    row = dict(frames=frames, batch=n, sequence_tokens=int(inputs['input_ids'].shape[1]))
    row['baseline'] = seconds_per_call(baseline, a.seconds, a.warmup, device, a.repeats)
    row['ours'] = seconds_per_call(lambda: model.compute_rewards(clips), a.seconds, a.warmup, device, a.repeats)
    row['ours_s_per_image'] = row['ours']['s'] / n
    row['baseline_s_per_image'] = row['baseline']['s'] / n
    row['ours_cpu_s_per_image'] = row['ours']['cpu_s'] / n
    row['baseline_cpu_s_per_image'] = row['baseline']['cpu_s'] / n
    row['ratio'] = row['ours']['s'] / row['baseline']['s']
    row['cpu_ratio'] = row['ours']['cpu_s'] / row['baseline']['cpu_s']
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model-path', default=None, help='local model folder (default: a random model, --random-arch)')
    p.add_argument("--random-arch", default="tiny", help="tiny | tiny-qwen2.5 | qwen2-vl-2b (without --model-path)")
    p.add_argument('--depth-fraction', type=float, default=1.0,
                   help='random models: keep this fraction of the layers (compute is linear in depth)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--precision', default='fp32', help='fp32 | bf16 | auto')
    p.add_argument('--batches', default='1,8', help='comma list of clips per call')
    p.add_argument('--frames', default='1,2', help='comma list of frames per clip')
    p.add_argument('--image-size', type=int, default=224, help='each frame is S x S (image_size [3, S, S])')
    p.add_argument('--seconds', type=float, default=2.0, help='per timed function (0: one call per repeat)')
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeats', type=int, default=3, help='timed runs per function (the median is reported)')
    p.add_argument('--out', default=None, help='default: bench/results/vlm_reward_cost_<device>[_<model>].json')
    a = p.parse_args()
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    device = torch.device(a.device)
    batches = [int(b) for b in a.batches.split(',')]
    frames_list = [int(f) for f in a.frames.split(',')]
    model_name = os.path.basename(os.path.normpath(a.model_path)) if a.model_path else a.random_arch
    if not a.model_path and a.depth_fraction != 1.0:
        model_name += f'_depth{a.depth_fraction:g}'
    suffix = '' if model_name == 'tiny' else f'_{model_name}'
    out_path = a.out or os.path.join(ROOT, 'bench', 'results', f'vlm_reward_cost_{device.type}{suffix}.json')
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    from ding_ext.checkpoint_io import write_json_atomic
    tmp = None
    model_path = a.model_path
    if model_path is None:
        from ding_ext.random_qwen_vl import build_random_qwen_vl
        tmp = tempfile.TemporaryDirectory(prefix='random_qwen_vl_')
        t0 = time.perf_counter()
        model_path = build_random_qwen_vl(tmp.name, a.random_arch, dtype='bfloat16' if a.random_arch != 'tiny'
                                          else None, depth_fraction=a.depth_fraction)
        print(f"built a random {a.random_arch} Qwen2-VL in {time.perf_counter() - t0:.1f} s", flush=True)
    result = dict(machine=machine(device), rows=[],
                  config=dict(model_path=a.model_path, random_arch=None if a.model_path else a.random_arch,
                              depth_fraction=None if a.model_path else a.depth_fraction,
                              precision=a.precision, image_size=a.image_size, batches=batches, frames=frames_list,
                              seconds=a.seconds, warmup=a.warmup, repeats=a.repeats))
    print(json.dumps(result['machine']), flush=True)
    rng = np.random.default_rng(0)
    print(f"{'frames':>6} {'batch':>5} {'tokens':>6} {'ours s/img':>10} {'base s/img':>10} {'ratio':>6} "
          f"{'ours cpu s':>10} {'base cpu s':>10} {'cpu ratio':>9}", flush=True)
    try:
        for frames in frames_list:
            model = make_model(model_path, frames, a.image_size, a.precision, device)
            result['model'] = dict(type=type(model.network).__name__, model_type=model.network.config.model_type,
                                   parameters=sum(p.numel() for p in model.network.parameters()),
                                   dtype=str(model.dtype), precision_choice=model.precision_choice)
            for n in batches:
                row = time_clips(model, frames, n, a, device, rng)
                result['rows'].append(row)
                write_json_atomic(out_path, result)
                print(f"{frames:6d} {n:5d} {row['sequence_tokens']:6d} {row['ours_s_per_image']:10.4f} "
                      f"{row['baseline_s_per_image']:10.4f} {row['ratio']:6.2f} {row['ours_cpu_s_per_image']:10.4f} "
                      f"{row['baseline_cpu_s_per_image']:10.4f} {row['cpu_ratio']:9.2f}", flush=True)
            del model
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(f"wrote {out_path}")


if __name__ == '__main__':
    main()
