"""Training throughput (images/s) of our reward-model trainer against a plain PyTorch loop, in the same process.

Same model (torchvision resnet18 + ResNetClassifier's head, hidden_dim 256), same batch, same random uint8 NHWC images.
Ratios are against the first row of each group (the baseline; for the loader rows cached_w0), all functions timed in
turns. ``--device cuda`` also sets pin_memory in both loaders (the trainer's default on CUDA).
  step rows   one optimiser step on a batch already in memory:
    baseline        plain loop: uint8 -> float /255, NHWC -> NCHW, ImageNet mean/std on the device, forward (bf16
                    autocast where asked), BCE, backward, Adam step;
    ours            ``train_step.GlobalBatchStep`` as the trainer runs it (preprocess_images, random shift of 4 px,
                    per-micro-batch seeding, autocast, BCE, backward, Adam step);
    ours_no_shift   the same with augment_shift 0;
    ours_accum2     the same global batch as 2 micro-batches with gradient accumulation.
  epoch rows  a pass over the data, loaders included:
    baseline        TensorDataset + DataLoader(shuffle) + the plain step;
    ours            ``train_data.build_loaders`` with the trainer's defaults (images cached in memory, no workers) +
                    GlobalBatchStep.
  loader rows (no training: the loader's batches moved to the device) to choose the DataLoader defaults:
    cached / png x workers 0 / 2: images from memory (the default ``cache_images``) or decoded from PNG files.

    python bench/reward_training.py --device cpu --quick      # batch 32 at 64 px, short timings
    python bench/reward_training.py --device cuda             # batch 64 at 128 px, fp32 and bf16

Writes ``bench/results/reward_training_<device>.json`` (``--out``) with a machine description. Without a working
DI-engine (a bare GPU machine: install it from wheels first), the traceback is recorded and the baseline rows are
measured anyway.
"""
import argparse
import os
import sys
import tempfile
import traceback

import numpy as np
import torch
import torch.nn.functional as F

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
for path in (ROOT, BENCH):
    if path not in sys.path:
        sys.path.insert(0, path)

from reward_inference import IMPORT_ERROR, MEAN, STD, compare, machine, plain_model, write_json_atomic  # noqa: E402

if IMPORT_ERROR is None:
    from ding_ext.distributed import DistContext
    from ding_ext.image_folder_dataset import ImageFolderDataset, ImageFolderScan
    from ding_ext.png_writer import write_png
    from ding_ext.reward_models import ResNetRewardModel
    from ding_ext.train_data import build_loaders
    from ding_ext.train_options import TRAIN_OPTIONS
    from ding_ext.train_step import GlobalBatchStep

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def baseline_step(net, optimizer, device, dtype):
    mean, std = MEAN.to(device), STD.to(device)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div(255.0)
        x = (x - mean) / std
        y = labels.to(device, non_blocking=True).float()
        net.train()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = net(x).float().squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def ours_model(size: int, precision: str, device: torch.device, augment_shift: int = 4):
    cfg = dict(type='resnet', arch='resnet18', hidden_dim=256, pretrained=False, image_size=[3, size, size],
               precision=precision, augment_shift=augment_shift, learning_rate=1e-4)
    return ResNetRewardModel(cfg, device=str(device))


def ours_step(model, device, batch: int, micro: int):
    ctx = DistContext(device)
    step_fn = GlobalBatchStep(model, model.network, model.optimizer, ctx, 'ddp', batch, micro)
    counter = iter(range(10 ** 9))

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        parts = [(images[i:i + micro], labels[i:i + micro]) for i in range(0, batch, micro)]
        step_fn(parts, next(counter))
    return step


def in_memory_dataset(images: np.ndarray, labels: np.ndarray, files=None):
    scan = ImageFolderScan(files=files or [f'{i}.png' for i in range(len(images))], labels=labels.astype(np.int64),
                           images=images if files is None else None, image_shape=images.shape[1:])
    return ImageFolderDataset(scan, range(len(images)))


def loader_options(batch: int, workers, cache: bool = True) -> dict:
    opts = {k: d for k, (d, _) in TRAIN_OPTIONS.items()}
    opts.update(batch_size=batch, num_workers=workers, cache_images=cache, val_split=0.0)
    return opts


def epoch_fn(loader, step_fn, sampler=None):
    def run() -> None:
        if sampler is not None:
            sampler.set_epoch(sampler.epoch + 1)
        for images, labels in loader:
            step_fn(images, labels)
    return run


def loader_fn(loader, device):
    def run() -> None:
        for images, _ in loader:
            images.to(device, non_blocking=True)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=['cpu', 'cuda'])
    p.add_argument('--batch', type=int, default=None, help="global batch (default 64; --quick: 32)")
    p.add_argument('--size', type=int, default=None, help="image size in px (default 128; --quick: 64)")
    p.add_argument('--precisions', default=None, help="comma list (default fp32 on CPU, fp32,bf16 on CUDA)")
    p.add_argument('--batches-per-epoch', type=int, default=None, help="images per epoch row / batch (default 4; "
                                                                        "--quick: 2)")
    p.add_argument('--seconds', type=float, default=None, help="per timed function (default 3; --quick: 1)")
    p.add_argument('--warmup', type=int, default=None, help="warm-up calls per function (default 2; --quick: 1)")
    p.add_argument('--out', default=None)
    p.add_argument('--quick', action='store_true', help="short CPU check: smaller batch and images, short timings")
    a = p.parse_args()
    device = torch.device(a.device)
    batch = a.batch or (32 if a.quick else 64)
    size = a.size or (64 if a.quick else 128)
    precisions = (a.precisions or ('fp32,bf16' if device.type == 'cuda' else 'fp32')).split(',')
    per_epoch = a.batches_per_epoch or (2 if a.quick else 4)
    seconds = a.seconds if a.seconds is not None else (1.0 if a.quick else 3.0)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    out_path = a.out or os.path.join(BENCH, 'results', f'reward_training_{device.type}.json')
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    result = dict(machine=machine(device), import_error=IMPORT_ERROR, rows=[],
                  config=dict(batch=batch, size=size, precisions=precisions, images_per_epoch=per_epoch * batch,
                              seconds=seconds, warmup=warmup, quick=a.quick,
                              model='resnet18, hidden_dim 256, random init, Adam lr 1e-4'))
    print(result['machine'], flush=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (per_epoch * batch, size, size, 3), dtype=np.uint8)
    labels = (np.arange(len(images)) % 2).astype(np.float32)
    one_x, one_y = torch.from_numpy(images[:batch]), torch.from_numpy(labels[:batch])
    n_epoch = len(images)

    def record(kind: str, precision: str, fns: dict, n: int) -> None:
        timed = compare(fns, n, seconds, warmup, device, repeats=5)  # timed in turns, as the inference bench does
        base = next(iter(timed.values()))['img_s']
        for name, t in timed.items():
            row = dict(kind=kind, name=name, precision=precision, batch=batch, size=size, ratio=t['img_s'] / base, **t)
            result['rows'].append(row)
            print(f"{kind:>6} {name:>14} {precision:>4} {row['img_s']:10.1f} {row['ratio']:7.2f}", flush=True)
        write_json_atomic(out_path, result)

    print(f"{'rows':>6} {'name':>14} {'prec':>4} {'img/s':>10} {'/first':>7}  (batch {batch}, {size} px, {device})",
          flush=True)
    from torch.utils.data import DataLoader, TensorDataset
    for precision in precisions:
        dtype = DTYPES[precision]
        net = plain_model(device)
        base = baseline_step(net, torch.optim.Adam(net.parameters(), lr=1e-4), device, dtype)
        steps = {'baseline': lambda: base(one_x, one_y)}
        plain_loader = DataLoader(TensorDataset(torch.from_numpy(images), torch.from_numpy(labels)), batch_size=batch,
                                  shuffle=True, pin_memory=device.type == 'cuda')
        epochs = {'baseline': epoch_fn(plain_loader, base)}
        if IMPORT_ERROR is None:
            for name, shift, micro in (('ours', 4, batch), ('ours_no_shift', 0, batch),
                                       ('ours_accum2', 4, batch // 2)):
                step = ours_step(ours_model(size, precision, device, shift), device, batch, micro)
                steps[name] = (lambda s: lambda: s(one_x, one_y))(step)
            loaders = build_loaders(in_memory_dataset(images, labels), [], loader_options(batch, None), batch, 0, 1,
                                    device.type)
            epochs['ours'] = epoch_fn(loaders.train, ours_step(ours_model(size, precision, device), device, batch,
                                                               batch), loaders.sampler)
        record('step', precision, steps, batch)
        record('epoch', precision, epochs, n_epoch)

    if IMPORT_ERROR is None:  # the data loading defaults: workers and the PNG decode path, without training
        with tempfile.TemporaryDirectory() as tmp:
            files = [os.path.join(tmp, f'{i}.png') for i in range(len(images))]
            for f, im in zip(files, images):
                write_png(f, im)
            fns = {}
            for source, dataset in (('cached', in_memory_dataset(images, labels)),
                                    ('png', in_memory_dataset(images, labels, files))):
                for workers in (0, 2):
                    loaders = build_loaders(dataset, [], loader_options(batch, workers, source == 'cached'), batch, 0,
                                            1, device.type)
                    fns[f'{source}_w{workers}'] = loader_fn(loaders.train, device)
            record('loader', '-', fns, n_epoch)
    print(f"wrote {out_path}")


if __name__ == '__main__':
    try:
        main()
    except Exception:  # noqa: BLE001  (print the whole traceback on a remote machine)
        traceback.print_exc()
        sys.exit(1)
