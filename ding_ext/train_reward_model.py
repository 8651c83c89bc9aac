"""Stage 2: train the image success classifier on the labelled PNG folders of the collection stage.

    python -m ding_ext.train_reward_model --data DIR [key=value ...]
    ding-train-reward-model --data DIR epochs=50 lr=3e-4 model.arch=resnet34 model.image_size=[3,64,64]

Values are parsed with ``ast.literal_eval`` (``true``/``false``/``none`` are understood too) and
fall back to plain strings. Trainer keys are listed in ``TRAIN_OPTIONS``; every reward-model config
key (see ``ResNetRewardModel.default_config()``) is given as ``model.<key>=value``.

Writes into ``save_dir`` (default ``<data>/../reward_model_ckpt``):

* ``best_model.safetensors``: the epoch with the lowest class-balanced validation loss;
* ``last_model.safetensors``: rewritten after every epoch (both atomically, with metadata);
* ``tb/``: tensorboard scalars ``train/*`` and ``val/*`` per epoch (and ``reward_model/*`` per step);
* ``train_summary.json``: options, class counts, skipped files, validation files, per-epoch history.

Class imbalance is handled by class-balanced sampling (``balance=sampler``, the default), or by BCE
``pos_weight = n_failure / n_success`` (``balance=pos_weight``), or not at all (``balance=none``).
"""
import argparse
import ast
import copy
import json
import logging
import os
import random
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from easydict import EasyDict
from torch.utils.data import DataLoader

from .checkpoint_io import write_json_atomic
from .image_folder_dataset import (
    METADATA_FILE, DataError, ImageFolderDataset, class_balanced_sampler, scan_image_folder, split_train_val
)

logger = logging.getLogger(__name__)

# key: (default, help)
TRAIN_OPTIONS: Dict[str, Tuple[Any, str]] = {
    'epochs': (100, "maximum number of epochs"),
    'batch_size': (64, "mini-batch size (>= 2)"),
    'lr': (1e-4, "Adam learning rate (sets model.learning_rate)"),
    'val_split': (0.1, "fraction of each class held out for validation, in [0, 1)"),
    'early_stopping_patience': (15, "stop after this many epochs without a better model; 0 disables"),
    'min_delta': (0.0, "a new best model must lower the monitored loss by more than this"),
    'save_dir': (None, "output folder; default <data>/../reward_model_ckpt"),
    'seed': (0, "seed of the split, the sampler and the weight initialisation"),
    'num_workers': (None, "DataLoader worker processes; default min(2, cpu count)"),
    'device': ('cpu', "cpu | cuda | cuda:N"),
    'balance': ('sampler', "class imbalance: sampler (class-balanced sampling) | pos_weight (BCE) | none"),
    'cache_images': (True, "keep the decoded images in memory (false: decode again in the workers)"),
    'progress': (True, "show a tqdm progress bar and print the summary line"),
}
BALANCE_MODES = ('sampler', 'pos_weight', 'none')
BEST_NAME = 'best_model.safetensors'
LAST_NAME = 'last_model.safetensors'
SUMMARY_NAME = 'train_summary.json'


class OptionError(ValueError):
    """An unknown or invalid trainer / model option."""


# ---------------------------------------------------------------------------------------- options
def parse_value(text: str) -> Any:
    """``ast.literal_eval`` of ``text``; true/false/none/null in any case; else the string itself."""
    low = text.strip().lower()
    if low in ('true', 'false'):
        return low == 'true'
    if low in ('none', 'null'):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``['epochs=5', 'model.arch=resnet34']`` -> ``{'epochs': 5, 'model.arch': 'resnet34'}``."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip()
        if not sep or not key:
            raise OptionError(f"expected key=value, got {item!r}")
        out[key] = parse_value(value)
    return out


def model_config_keys(model_type: str = 'resnet') -> List[str]:
    """The config keys of the registered reward model ``model_type``."""
    import ding_ext  # noqa: F401  (registers the image reward models)
    from ding.utils import REWARD_MODEL_REGISTRY
    if model_type not in REWARD_MODEL_REGISTRY:
        raise OptionError(f"model.type {model_type!r} is not a registered reward model")
    return sorted(REWARD_MODEL_REGISTRY.get(model_type).default_config().keys())


def resolve_options(options: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split ``options`` into (trainer options with defaults, model config overrides); validate keys.

    Model keys come as ``model.<key>`` entries or as a ``model`` dict.
    """
    train: Dict[str, Any] = {}
    model: Dict[str, Any] = {}
    for key, value in options.items():
        if key == 'model':
            if not isinstance(value, Mapping):
                raise OptionError(f"model must be a dict of reward-model config keys, got {value!r}")
            model.update(value)
        elif key.startswith('model.'):
            model[key[len('model.'):]] = value
        elif key in TRAIN_OPTIONS:
            train[key] = value
        else:
            raise OptionError(
                f"unknown option {key!r}; valid options: {', '.join(sorted(TRAIN_OPTIONS))}, "
                "and model.<key> for any reward-model config key"
            )
    valid_model = model_config_keys(model.get('type', 'resnet'))
    for key in model:
        if key not in valid_model:
            raise OptionError(f"unknown model option 'model.{key}'; valid model keys: {', '.join(valid_model)}")
    # model.learning_rate / model.batch_size stand in for lr / batch_size when those are not given
    if 'lr' not in train and 'learning_rate' in model:
        train['lr'] = model['learning_rate']
    if 'batch_size' not in train and 'batch_size' in model:
        train['batch_size'] = model['batch_size']
    for key, (default, _) in TRAIN_OPTIONS.items():
        train.setdefault(key, default)
    _check_train_options(train)
    return train, model


def _check_train_options(o: Dict[str, Any]) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise OptionError(msg)

    need(isinstance(o['epochs'], int) and o['epochs'] >= 1, f"epochs must be an int >= 1, got {o['epochs']!r}")
    need(isinstance(o['batch_size'], int) and o['batch_size'] >= 2,
         f"batch_size must be an int >= 2, got {o['batch_size']!r}")
    need(isinstance(o['lr'], (int, float)) and o['lr'] >= 0, f"lr must be a number >= 0, got {o['lr']!r}")
    need(isinstance(o['val_split'], (int, float)) and 0 <= o['val_split'] < 1,
         f"val_split must lie in [0, 1), got {o['val_split']!r}")
    need(isinstance(o['early_stopping_patience'], int) and o['early_stopping_patience'] >= 0,
         f"early_stopping_patience must be an int >= 0, got {o['early_stopping_patience']!r}")
    need(isinstance(o['min_delta'], (int, float)) and o['min_delta'] >= 0,
         f"min_delta must be a number >= 0, got {o['min_delta']!r}")
    need(isinstance(o['seed'], int), f"seed must be an int, got {o['seed']!r}")
    need(o['num_workers'] is None or (isinstance(o['num_workers'], int) and o['num_workers'] >= 0),
         f"num_workers must be an int >= 0, got {o['num_workers']!r}")
    if o['balance'] is None:  # `balance=none` on the command line parses to None
        o['balance'] = 'none'
    need(o['balance'] in BALANCE_MODES, f"balance must be one of {BALANCE_MODES}, got {o['balance']!r}")
    need(isinstance(o['device'], str), f"device must be a string such as 'cpu' or 'cuda', got {o['device']!r}")


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


def merge_env_metadata(file_meta: Mapping[str, Any], explicit: Mapping[str, Any],
                       reserved: Sequence[str], source: str = METADATA_FILE) -> Dict[str, Any]:
    """Env metadata for the checkpoint: the ``metadata.json`` entries plus explicit ``model.env_metadata``.

    A ``metadata.json`` key that names a network metadata field (``image_size``, ``arch`` ...) is stored
    as ``env_<key>``: the env's camera ``image_size`` is not the network's input ``image_size``, and
    storing it under the same name would overwrite the network field the loader checks. An explicit
    entry that contradicts ``metadata.json`` is an error (the checkpoint must describe its images).
    """
    out: Dict[str, Any] = {}
    for key, value in file_meta.items():
        out[f'env_{key}' if key in reserved else key] = value
    for key, value in (explicit or {}).items():
        if key in out and _json_norm(out[key]) != _json_norm(value):
            raise DataError(
                f"{source} says {key}={out[key]!r} but model.env_metadata says {key}={value!r}: the images were "
                f"collected with {key}={out[key]!r}; collect data with the configured setting, or fix the config"
            )
        out[key] = value
    return out


def _json_norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def binary_metrics(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> Dict[str, float]:
    """BCE loss (plain and class-balanced), accuracy, balanced accuracy, precision/recall/F1 of success."""
    logits = logits.float()
    labels = labels.float()
    per = F.binary_cross_entropy_with_logits(logits, labels, reduction='none')
    pos, neg = labels > 0.5, labels <= 0.5
    class_losses = [per[m].mean() for m in (pos, neg) if m.any()]
    pred = torch.sigmoid(logits) > threshold
    tp = int((pred & pos).sum())
    fp = int((pred & neg).sum())
    fn = int((~pred & pos).sum())
    tn = int((~pred & neg).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rates = [r for r, m in ((recall, pos), (tn / (tn + fp) if tn + fp else 0.0, neg)) if m.any()]
    return dict(
        loss=float(per.mean()),
        balanced_loss=float(torch.stack(class_losses).mean()),
        accuracy=(tp + tn) / len(labels),
        balanced_accuracy=float(np.mean(rates)),
        precision=precision,
        recall=recall,
        f1=f1,
        tp=tp, fp=fp, fn=fn, tn=tn,
    )


def evaluate(model: Any, loader: DataLoader) -> Dict[str, float]:
    """Metrics of ``model`` on ``loader`` (eval mode, no gradients), at ``model.cfg.reward_threshold``."""
    model.network.eval()
    logits, labels = [], []
    with torch.inference_mode(), model._autocast():
        for images, y in loader:
            logits.append(model.network(model.preprocess_images(images)).float().cpu())
            labels.append(torch.as_tensor(y, dtype=torch.float32))
    return binary_metrics(torch.cat(logits), torch.cat(labels), float(model.cfg.reward_threshold))


# ---------------------------------------------------------------------------------------- training
def train_reward_model(data_dir: str, **options: Any) -> Dict[str, Any]:
    """Train a reward model on ``<data_dir>/success`` and ``<data_dir>/failure``; see the module doc.

    ``options``: the trainer keys of ``TRAIN_OPTIONS`` and reward-model config keys as ``model.<key>``
    (or a ``model`` dict). Returns a dict with ``best_path``, ``last_path``, ``best_val`` (validation
    metrics of the best epoch), ``best_epoch``, ``epochs_run``, ``stopped_early``, ``history`` (one dict
    per epoch), ``num_images`` ({'success': n, 'failure': n} readable images), ``skipped`` (number of
    unreadable PNGs), ``skipped_files``, ``train_files``, ``val_files``, ``metadata`` (checkpoint
    metadata), ``save_dir``, ``summary_path``.

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
    train_idx, val_idx = split_train_val(scan.files, scan.labels, opts['val_split'], opts['seed'])
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

        bar = tqdm(range(1, int(opts['epochs']) + 1), desc='reward model', unit='epoch',
                   disable=not progress, dynamic_ncols=True)
        for epoch in bar:
            t_epoch = time.time()
            model.network.train()
            loss_sum, correct_sum, seen = 0.0, 0.0, 0
            for images, labels in train_loader:
                stats = model.train_step(images, labels, pos_weight=pos_weight)
                n = len(labels)
                loss_sum += stats['reward_loss'] * n
                correct_sum += stats['accuracy'] * n
                seen += n
            train_metrics = dict(loss=loss_sum / max(seen, 1), accuracy=correct_sum / max(seen, 1))
            val_metrics = evaluate(model, val_loader) if val_loader is not None else {}
            score = val_metrics['balanced_loss'] if val_metrics else train_metrics['loss']
            improved = score < best_score - float(opts['min_delta'])
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
    finally:
        writer.close()

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
    )
    summary_path = os.path.join(save_dir, SUMMARY_NAME)
    write_json_atomic(summary_path, result, default=str)
    result['summary_path'] = summary_path

    val_txt = (f"val loss {best_val['loss']:.4f}, acc {best_val['accuracy']:.3f}, precision "
               f"{best_val['precision']:.3f}, recall {best_val['recall']:.3f}, F1 {best_val['f1']:.3f}"
               if best_val else f"train loss {best_score:.4f} (no validation set)")
    line = (f"reward model: best epoch {best_epoch}/{len(history)}{' (early stop)' if stopped_early else ''}: "
            f"{val_txt}; {scan.num_images['success']} success / {scan.num_images['failure']} failure images, "
            f"{len(scan.skipped_files)} skipped; best -> {best_path}")
    if progress:
        print(line, flush=True)
    else:
        logger.info(line)
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
        train_reward_model(str(data), **options)
    except OptionError as e:
        parser.error(str(e))
    except DataError as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == '__main__':
    sys.exit(main())
