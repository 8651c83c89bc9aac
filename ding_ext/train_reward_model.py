"""Stage 2: train the image success classifier on the labelled PNG folders of the collection stage.

    python -m ding_ext.train_reward_model --data DIR [key=value ...]
    ding-train-reward-model --data DIR epochs=50 lr=3e-4 model.arch=resnet34 model.image_size=[3,64,64]

Values are parsed with ``ast.literal_eval`` (``true``/``false``/``none`` are understood too) and
fall back to plain strings. Trainer keys are listed in ``TRAIN_OPTIONS``; every reward-model config
key (see ``ResNetRewardModel.default_config()``) is given as ``model.<key>=value``.

Writes into ``save_dir`` (default ``<data>/../reward_model_ckpt``):

* ``best_model.safetensors``: the epoch with the lowest class-balanced validation loss (or the last epoch with
  ``model_selection=last``);
* ``last_model.safetensors``: rewritten after every epoch (both atomically, with metadata);
* ``tb/``: tensorboard scalars ``train/*`` and ``val/*`` per epoch (and ``reward_model/*`` per step);
* ``train_summary.json``: options, class counts, skipped files, validation files, per-epoch history;
* ``fidelity_val/``: the fidelity report of the best model on the validation split (PR curve, the
  lowest threshold reaching ``target_precision``, confusion matrix, histogram, worst errors, report.json;
  see ``ding_ext.evaluation``); ``store_threshold=true`` stores that threshold in the best checkpoint.

Class imbalance is handled by class-balanced sampling (``balance=sampler``, the default), or by BCE
``pos_weight = n_failure / n_success`` (``balance=pos_weight``), or not at all (``balance=none``).
"""
import argparse
import copy
import logging
import os
import random
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from easydict import EasyDict
from torch.utils.data import DataLoader

from .checkpoint_io import write_json_atomic
from .evaluation import (  # noqa: F401  (binary_metrics: imported from here by older code)
    binary_metrics, evaluate, fidelity_report, report_summary, score_images, store_calibration
)
from .image_folder_dataset import (
    METADATA_FILE, DataError, ImageFolderDataset, class_balanced_sampler, scan_image_folder, split_train_val
)
from .train_options import (  # noqa: F401  (re-exported: the trainer's public option API)
    TRAIN_OPTIONS, OptionError, merge_env_metadata, parse_overrides, parse_value, resolve_options
)

logger = logging.getLogger(__name__)

BEST_NAME = 'best_model.safetensors'
LAST_NAME = 'last_model.safetensors'
SUMMARY_NAME = 'train_summary.json'


# ---------------------------------------------------------------------------------------- helpers
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise OptionError(f"device={name!r} was asked for but CUDA is not available; use device=cpu")
    return device


def _fidelity_on_val(model: Any, scan: Any, val_set: ImageFolderDataset, val_idx: Sequence[int],
                     opts: Mapping[str, Any], save_dir: str, best_path: str, data_dir: str) -> Dict[str, Any]:
    """The fidelity report of the best model on the validation split, in ``<save_dir>/fidelity_val``."""
    model.load(best_path)
    images = scan.images[val_set.indices] if scan.images is not None else \
        np.stack([val_set[i][0] for i in range(len(val_set))])
    frames = [scan.frames[i] for i in val_idx] if any(scan.frames) else None
    probs = score_images(model, images, 2 * int(opts['batch_size']))
    report = fidelity_report(probs, val_set.labels, frames=frames, images=images, files=val_set.files,
                             threshold=model.threshold, target_precision=float(opts['target_precision']),
                             confidence=opts['precision_confidence'],
                             out_dir=os.path.join(save_dir, 'fidelity_val'), title='validation split')
    if opts['store_threshold']:
        if report['chosen_threshold'] is None:
            logger.warning("store_threshold: nothing stored in %s: %s", best_path, report['chosen_reason'])
        else:
            store_calibration(best_path, report, f"{data_dir} (validation split)")
    return report


# ---------------------------------------------------------------------------------------- training
def cap_failures(indices: Sequence[int], labels: Sequence[int], ratio: float, seed: int) -> List[int]:
    """``indices`` with at most ``ceil(ratio * successes)`` failures (a seeded subsample), in their order."""
    labels = np.asarray(labels)
    failures = [i for i in indices if labels[i] == 0]
    keep = int(np.ceil(ratio * (len(indices) - len(failures))))
    if len(failures) <= keep:
        return list(indices)
    kept = set(np.random.default_rng(seed).choice(failures, size=keep, replace=False).tolist())
    return [i for i in indices if labels[i] == 1 or i in kept]


def train_reward_model(data_dir: str, **options: Any) -> Dict[str, Any]:
    """Train a reward model on ``<data_dir>/success`` and ``<data_dir>/failure``; see the module doc.

    ``options``: the trainer keys of ``TRAIN_OPTIONS`` and reward-model config keys as ``model.<key>``
    (or a ``model`` dict). Returns a dict with ``best_path``, ``last_path``, ``best_val`` (validation
    metrics of the best epoch), ``best_epoch``, ``epochs_run``, ``stopped_early``, ``history`` (one dict
    per epoch), ``num_images`` ({'success': n, 'failure': n} readable images), ``skipped`` (number of
    unreadable PNGs), ``skipped_files``, ``train_files``, ``val_files``, ``metadata`` (checkpoint
    metadata), ``save_dir``, ``summary_path``, ``report`` (the ``fidelity_report`` of the best model on the
    validation split; None without one) and ``report_dir`` (``<save_dir>/fidelity_val``).

    Raises ``OptionError`` (a ValueError) for bad options and ``DataError`` (a ValueError) for bad data.
    """
    from ding.reward_model import create_reward_model
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    opts, model_overrides = resolve_options(options)
    data_dir = os.path.abspath(str(data_dir))
    save_dir = os.path.abspath(opts['save_dir'] or os.path.join(os.path.dirname(data_dir), 'reward_model_ckpt'))
    device = _resolve_device(opts['device'])
    num_workers = opts['num_workers'] if opts['num_workers'] is not None else min(2, os.cpu_count() or 1)
    progress = bool(opts['progress'])

    # -- data
    t0 = time.time()
    scan = scan_image_folder(data_dir, cache=bool(opts['cache_images']))
    train_idx, val_idx = split_train_val(scan.files, scan.labels, opts['val_split'], opts['seed'],
                                         groups=scan.episode_ids)  # by episode when the sidecar has ids
    if opts['fail_success_ratio'] is not None:
        train_idx = cap_failures(train_idx, scan.labels, float(opts['fail_success_ratio']), opts['seed'])
    train_set = ImageFolderDataset(scan, train_idx)
    val_set = ImageFolderDataset(scan, val_idx)
    n_pos = int(train_set.labels.sum())
    n_neg = len(train_set) - n_pos
    if not len(val_set):
        logger.warning("no validation images (val_split=%s): the best model is picked by training loss",
                       opts['val_split'])
    logger.info(
        "%s: %d success + %d failure readable images (%d skipped), %d train / %d val, read in %.1fs",
        data_dir, scan.num_images['success'], scan.num_images['failure'], len(scan.skipped_files),
        len(train_set), len(val_set), time.time() - t0
    )

    # -- model
    _seed_everything(opts['seed'])
    init_ckpt = model_overrides.get('checkpoint_path')
    cfg = dict(type='resnet')
    cfg.update(copy.deepcopy(model_overrides))
    # this trainer drives the model itself: no pretraining (which would call this trainer again), no
    # co-training warm-start images; a model.checkpoint_path is loaded below, as initial weights
    cfg.update(learning_rate=float(opts['lr']), batch_size=int(opts['batch_size']), checkpoint_path=None,
               pretrain_reward=False, cooptrain_reward=True, cooptrain_seed_data_dir=None)
    if cfg.get('reward_threshold') == 'auto':  # picked from the validation data at the end (fidelity report)
        cfg['reward_threshold'] = 0.5
    os.makedirs(save_dir, exist_ok=True)
    writer = SummaryWriter(os.path.join(save_dir, 'tb'))
    try:
        model = create_reward_model(EasyDict(cfg), str(device), writer)
        model.cfg.env_metadata = merge_env_metadata(
            scan.metadata, model_overrides.get('env_metadata') or {}, list(model.network_metadata()),
            source=os.path.join(data_dir, METADATA_FILE)
        )
        if init_ckpt:  # start from a checkpoint, checked against this config and the data's env metadata
            model.cfg.checkpoint_path = init_ckpt
            model.load(init_ckpt)
        meta = model.metadata()

        # -- loaders (uint8 HWC arrays; the model's preprocess_images converts them in this process)
        pin = device.type == 'cuda'
        common = dict(num_workers=num_workers, pin_memory=pin, persistent_workers=num_workers > 0)
        bs = int(opts['batch_size'])
        pos_weight = None
        if opts['balance'] == 'sampler':
            sampler = class_balanced_sampler(train_set.labels.astype(np.int64), len(train_set), opts['seed'])
            train_loader = DataLoader(train_set, batch_size=bs, sampler=sampler,
                                      drop_last=len(train_set) % bs == 1, **common)
        else:
            if opts['balance'] == 'pos_weight':
                pos_weight = n_neg / max(n_pos, 1)
            gen = torch.Generator().manual_seed(opts['seed'])
            train_loader = DataLoader(train_set, batch_size=bs, shuffle=True, generator=gen,
                                      drop_last=len(train_set) % bs == 1, **common)
        val_loader = DataLoader(val_set, batch_size=2 * bs, shuffle=False, **common) \
            if len(val_set) else None

        best_path = os.path.join(save_dir, BEST_NAME)
        last_path = os.path.join(save_dir, LAST_NAME)
        patience = int(opts['early_stopping_patience'])
        history: List[Dict[str, Any]] = []
        best_score, best_epoch, best_val, since_best = float('inf'), 0, {}, 0
        stopped_early = False
        monitor = 'val/balanced_loss' if val_loader is not None else 'train/loss'

        scheduler = None
        if opts['lr_schedule'] == 'cosine':  # per batch, from lr down to 0 at the last epoch
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                model.optimizer, T_max=max(1, int(opts['epochs']) * len(train_loader)))
        bar = tqdm(range(1, int(opts['epochs']) + 1), desc='reward model', unit='epoch',
                   disable=not progress, dynamic_ncols=True)
        for epoch in bar:
            t_epoch = time.time()
            model.network.train()
            loss_sum, correct_sum, seen = 0.0, 0.0, 0
            for images, labels in train_loader:
                stats = model.train_step(images, labels, pos_weight=pos_weight)
                if scheduler is not None:
                    scheduler.step()
                n = len(labels)
                loss_sum += stats['reward_loss'] * n
                correct_sum += stats['accuracy'] * n
                seen += n
            train_metrics = dict(loss=loss_sum / max(seen, 1), accuracy=correct_sum / max(seen, 1))
            val_metrics = evaluate(model, val_loader) if val_loader is not None else {}
            score = val_metrics['balanced_loss'] if val_metrics else train_metrics['loss']
            improved = score < best_score - float(opts['min_delta']) or opts['model_selection'] == 'last'
            model.save(last_path)
            if improved:
                best_score, best_epoch, best_val, since_best = score, epoch, dict(val_metrics), 0
                model.save(best_path)
            else:
                since_best += 1
            record = dict(epoch=epoch, time_s=round(time.time() - t_epoch, 3), improved=improved,
                          **{f'train/{k}': v for k, v in train_metrics.items()},
                          **{f'val/{k}': v for k, v in val_metrics.items()})
            history.append(record)
            for k, v in record.items():
                if '/' in k:
                    writer.add_scalar(k, v, epoch)
            writer.add_scalar('train/lr', model.optimizer.param_groups[0]['lr'], epoch)
            writer.flush()
            postfix = dict(loss=f"{train_metrics['loss']:.4f}")
            if val_metrics:
                postfix.update(val_loss=f"{val_metrics['loss']:.4f}", val_acc=f"{val_metrics['accuracy']:.3f}",
                               val_f1=f"{val_metrics['f1']:.3f}")
            postfix['best'] = best_epoch
            bar.set_postfix(postfix)
            if patience and since_best >= patience:
                stopped_early = epoch < int(opts['epochs'])
                break
        bar.close()
        report = _fidelity_on_val(model, scan, val_set, val_idx, opts, save_dir, best_path, data_dir) \
            if len(val_set) else None
    finally:
        writer.close()
    if report is None and opts['store_threshold']:
        logger.warning("store_threshold: no validation split to pick a threshold on; nothing stored")

    result = dict(
        best_path=best_path,
        last_path=last_path,
        best_val=best_val,
        best_epoch=best_epoch,
        best_score=best_score,
        monitor=monitor,
        epochs_run=len(history),
        stopped_early=stopped_early,
        history=history,
        num_images=scan.num_images,
        num_train=len(train_set),
        num_val=len(val_set),
        skipped=len(scan.skipped_files),
        skipped_files=list(scan.skipped_files),
        train_files=list(train_set.files),
        val_files=list(val_set.files),
        metadata=meta,
        save_dir=save_dir,
        data_dir=data_dir,
        balance=opts['balance'],
        pos_weight=pos_weight,
        options=dict(opts),
        model_config=model_overrides,
        report_dir=os.path.join(save_dir, 'fidelity_val') if report is not None else None,
    )
    summary_path = os.path.join(save_dir, SUMMARY_NAME)
    write_json_atomic(summary_path, dict(result, report=report_summary(report) if report else None), default=str)
    result.update(summary_path=summary_path, report=report)

    val_txt = (f"val loss {best_val['loss']:.4f}, acc {best_val['accuracy']:.3f}, precision "
               f"{best_val['precision']:.3f}, recall {best_val['recall']:.3f}, F1 {best_val['f1']:.3f}"
               if best_val else f"train loss {best_score:.4f} (no validation set)")
    line = (f"reward model: best epoch {best_epoch}/{len(history)}{' (early stop)' if stopped_early else ''}: "
            f"{val_txt}; {scan.num_images['success']} success / {scan.num_images['failure']} failure images, "
            f"{len(scan.skipped_files)} skipped; best -> {best_path}")
    print(line, flush=True)  # always: ``progress`` only controls the tqdm bar
    return result


# ---------------------------------------------------------------------------------------- CLI
def _build_parser() -> argparse.ArgumentParser:
    keys = "\n".join(f"  {k}={d!r}: {h}" for k, (d, h) in TRAIN_OPTIONS.items())
    return argparse.ArgumentParser(
        prog='python -m ding_ext.train_reward_model',
        description="Train the image success classifier on <data>/success/*.png and <data>/failure/*.png.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"trainer keys (key=value):\n{keys}\n"
               "model keys: model.<key>=value for any reward-model config key, e.g. model.arch=resnet34 "
               "model.hidden_dim=512 model.image_size=[3,64,64] model.pretrained=/path/weights.pth",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _build_parser()
    parser.add_argument('--data', help="folder holding success/ and failure/ (or give data=DIR)")
    parser.add_argument('overrides', nargs='*', metavar='key=value')
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        options = parse_overrides(args.overrides)
        data_key = options.pop('data', None)
        data = args.data if args.data is not None else data_key
        if data is None:
            raise OptionError("no data folder: give --data DIR")
        result = train_reward_model(str(data), **options)
        if result.get('report'):
            from .evaluation import format_report
            print(format_report(result['report']), flush=True)
    except OptionError as e:
        parser.error(str(e))
    except DataError as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == '__main__':
    sys.exit(main())
