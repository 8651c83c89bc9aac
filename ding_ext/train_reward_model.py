"""Stage 2: train the image success classifier on the labelled PNG folders of the collection stage.

    python -m ding_ext.train_reward_model --data DIR [key=value ...]
    ding-train-reward-model --data DIR epochs=50 lr=3e-4 model.arch=resnet34 model.image_size=[3,64,64]
    torchrun --nproc_per_node 4 -m ding_ext.train_reward_model --data DIR device=cuda batch_size=256 micro_batch_size=32

Values are parsed with ``ast.literal_eval`` (``true``/``false``/``none`` are understood too) and
fall back to plain strings. Trainer keys are listed in ``TRAIN_OPTIONS``; every reward-model config
key (see ``ResNetRewardModel.default_config()``) is given as ``model.<key>=value``.

Writes into ``save_dir`` (default ``<data>/../reward_model_ckpt``), from rank 0 only under torchrun:

* ``best_model.safetensors``: the validation with the lowest class-balanced loss (or the last one with
  ``model_selection=last``); ``last_model.safetensors``: rewritten at every validation (after every epoch, or every
  ``val_check_interval`` optimiser steps); ``step_<k>_model.safetensors`` every ``save_interval`` steps (all
  atomically, with metadata);
* ``tb/``: tensorboard scalars ``train/*`` and ``val/*`` per validation (and ``reward_model/*`` per step);
* ``train_summary.json``: options, class counts, skipped files, validation files, the history of validations;
* ``fidelity_val/``: the fidelity report of the best model on the validation split (PR curve, the
  lowest threshold reaching ``target_precision``, confusion matrix, histogram, worst errors, report.json;
  see ``ding_ext.evaluation``); ``store_threshold=true`` stores that threshold in the best checkpoint.

Class imbalance is handled by class-balanced sampling (``balance=sampler``, the default; ``sampler_fail_ratio``
failure draws per success draw), or by BCE ``pos_weight = n_failure / n_success`` (``balance=pos_weight``), or not at
all (``balance=none``).

Each optimiser step trains on a global batch of ``batch_size`` images, cut into micro-batches of
``micro_batch_size``. Under torchrun every process trains on its share of the micro-batches (DDP, or FSDP2 with
``strategy=fsdp``), accumulating gradients over ``batch_size / (micro_batch_size x processes)`` of them; all ranks
share the early-stopping decision. The sampling order depends on the seed and the epoch only, so N processes reach
the weights one process reaches with the same batch sizes (``ding_ext.train_step``).
"""
import argparse
import copy
import logging
import os
import random
import shutil
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from easydict import EasyDict

from .checkpoint_io import atomic_write, save_checkpoint, write_json_atomic
from .distributed import (
    DistContext, barrier, broadcast_from_main, full_state_dict, init_distributed, is_sharded, shutdown,
    wrap_for_training
)
from .evaluation import (  # noqa: F401  (binary_metrics: imported from here by older code)
    binary_metrics, evaluate, fidelity_report, report_summary, score_images, store_calibration
)
from .joint_speed_gate import auto_joint_gate_keep, store_joint_speed
from .motion_gate import calibrate_auto_gate, store_motion_threshold
from .image_folder_dataset import METADATA_FILE, DataError, ImageFolderDataset, scan_image_folder
from .train_data import (  # noqa: F401  (cap_failures: imported from here by older code)
    build_loaders, cap_failures, training_split, write_debug_images
)
from .train_options import (  # noqa: F401  (re-exported: the trainer's public option API)
    OVERRIDE_ALIASES, TRAIN_OPTIONS, OptionError, accumulation_steps, merge_env_metadata, parse_overrides,
    parse_value, resolve_options
)
from .train_step import GlobalBatchStep, evaluate_sharded

logger = logging.getLogger(__name__)

BEST_NAME = 'best_model.safetensors'
LAST_NAME = 'last_model.safetensors'
SUMMARY_NAME = 'train_summary.json'


# ---------------------------------------------------------------------------------------- helpers
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


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
def train_reward_model(data_dir: str, **options: Any) -> Dict[str, Any]:
    """Train a reward model on ``<data_dir>/success`` and ``<data_dir>/failure``; see the module doc.

    ``options``: the trainer keys of ``TRAIN_OPTIONS`` (or their ``OVERRIDE_ALIASES``) and reward-model config keys
    as ``model.<key>`` (or a ``model`` dict). In a process torchrun started, it joins the process group (and leaves
    it at the end, unless it was initialised already). Returns a dict with ``best_path``, ``last_path``, ``best_val``
    (validation metrics of the best model), ``best_epoch``, ``best_step``, ``epochs_run``, ``steps_run``,
    ``stopped_early``, ``history`` (one dict per validation), ``num_images`` ({'success': n, 'failure': n} readable
    images), ``skipped`` (number of unreadable PNGs), ``skipped_files``, ``train_files``, ``val_files``,
    ``metadata`` (checkpoint metadata), ``save_dir``, ``summary_path``, ``world_size``, ``micro_batch_size``,
    ``accumulation_steps``, ``images_per_s`` (training throughput over all processes, validation excluded),
    ``report`` (the ``fidelity_report`` of the best model on the validation split; None without one, and on ranks
    other than 0) and ``report_dir`` (``<save_dir>/fidelity_val``). With ``model.still_motion_threshold='auto'`` (clip
    models) the still-scene gate is calibrated on the data first (``ding_ext.motion_gate.calibrate_auto_gate``), the
    model trains and validates with it, both checkpoints carry it, and ``motion_gate`` holds the calibration. With
    ``model.still_joint_speed='auto'`` the joint-speed gate is calibrated on the sidecar's reward states, the model
    trains and validates on the clips it passes, both checkpoints carry it, and ``joint_speed_gate`` holds it.

    Raises ``OptionError`` (a ValueError) for bad options and ``DataError`` (a ValueError) for bad data.
    """
    opts, model_overrides = resolve_options(options)
    data_dir = os.path.abspath(str(data_dir))
    gate = calibrate_auto_gate(data_dir, model_overrides)  # model.still_motion_threshold='auto': a number from here
    joint_keep = auto_joint_gate_keep(model_overrides)  # model.still_joint_speed='auto': calibrated in _train
    ctx = init_distributed(opts['device'])
    try:
        result = _train(data_dir, opts, model_overrides, ctx, joint_keep)
        # the checkpoints carry the gates, for still_motion_threshold / still_joint_speed 'auto'
        for key, calibration, store in (('motion_gate', gate, store_motion_threshold),
                                        ('joint_speed_gate', result.get('joint_speed_gate'), store_joint_speed)):
            if calibration is not None and ctx.is_main:
                for path in {result['best_path'], result['last_path']}:
                    if os.path.isfile(path):
                        result['metadata'].update(store(path, calibration))
                result[key] = calibration
        return result
    finally:
        shutdown(ctx)


def _build_model(cfg: Mapping[str, Any], ctx: DistContext, writer: Any, scan: Any, model_overrides: Mapping[str, Any],
                 data_dir: str) -> Any:
    from ding.reward_model import create_reward_model
    model = create_reward_model(EasyDict(copy.deepcopy(dict(cfg))), str(ctx.device), writer)
    model.cfg.env_metadata = merge_env_metadata(
        scan.metadata, model_overrides.get('env_metadata') or {}, list(model.network_metadata()),
        source=os.path.join(data_dir, METADATA_FILE)
    )
    return model


def _train(data_dir: str, opts: Dict[str, Any], model_overrides: Dict[str, Any], ctx: DistContext,
           joint_keep: Optional[float] = None) -> Dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    save_dir = os.path.abspath(opts['save_dir'] or os.path.join(os.path.dirname(data_dir), 'reward_model_ckpt'))
    bs = int(opts['batch_size'])
    micro, accumulation = accumulation_steps(bs, opts['micro_batch_size'], ctx.world_size)
    strategy = opts['strategy']

    # -- data (every process reads the folder; the split and the sampling order depend on the seed only)
    t0 = time.time()
    scan = scan_image_folder(data_dir, cache=bool(opts['cache_images']))
    train_idx, val_idx, joint_gate = training_split(scan, opts, joint_keep, data_dir)
    train_set = ImageFolderDataset(scan, train_idx)
    val_set = ImageFolderDataset(scan, val_idx)
    n_pos = int(train_set.labels.sum())
    n_neg = len(train_set) - n_pos
    if not n_pos or not n_neg:
        raise DataError(f"the training split of {data_dir} has {n_pos} success and {n_neg} failure images "
                        f"(frames_per_episode={opts['frames_per_episode']}): both classes are needed")
    if not len(val_set):
        logger.warning("no validation images (val_split=%s): the best model is picked by training loss",
                       opts['val_split'])
    logger.info(
        "%s: %d success + %d failure readable images (%d skipped), %d train / %d val, read in %.1fs; global batch %d "
        "= %d process(es) x %d micro-batch(es) of %d (%s)",
        data_dir, scan.num_images['success'], scan.num_images['failure'], len(scan.skipped_files),
        len(train_set), len(val_set), time.time() - t0, bs, ctx.world_size, accumulation, micro,
        strategy if ctx.distributed else 'one process'
    )

    # -- model (the same seed gives every process the same initial weights)
    _seed_everything(opts['seed'])
    init_ckpt = model_overrides.get('checkpoint_path')
    cfg = dict(type='resnet')
    cfg.update(copy.deepcopy(model_overrides))
    # this trainer drives the model itself: no pretraining (which would call this trainer again), no
    # co-training warm-start images; a model.checkpoint_path is loaded below, as initial weights
    cfg.update(learning_rate=float(opts['lr']), batch_size=bs, checkpoint_path=None,
               pretrain_reward=False, cooptrain_reward=True, cooptrain_seed_data_dir=None)
    if cfg.get('reward_threshold') == 'auto':  # picked from the validation data at the end (fidelity report)
        cfg['reward_threshold'] = 0.5
    writer = None
    if ctx.is_main:
        os.makedirs(save_dir, exist_ok=True)
        writer = SummaryWriter(os.path.join(save_dir, 'tb'))
    try:
        model = _build_model(cfg, ctx, writer, scan, model_overrides, data_dir)
        if init_ckpt:  # start from a checkpoint, checked against this config and the data's env metadata
            model.cfg.checkpoint_path = init_ckpt
            model.load(init_ckpt)
        meta = model.metadata()
        if is_sharded(strategy, ctx) and model.dtype == torch.float16:
            raise OptionError("precision fp16 (loss scaling) is not supported with strategy=fsdp; use bf16 or fp32")
        train_net = wrap_for_training(model.network, strategy, ctx)
        optimizer = model.optimizer
        if is_sharded(strategy, ctx):  # fully_shard replaced the parameters: the optimiser must hold the shards
            optimizer = type(optimizer)(model.network.parameters(), **optimizer.defaults)

        # -- loaders (uint8 HWC arrays; the model's preprocess_images converts them on the device)
        pos_weight = n_neg / max(n_pos, 1) if opts['balance'] == 'pos_weight' else None
        loaders = build_loaders(train_set, val_set, opts, micro, ctx.rank, ctx.world_size, ctx.device.type)
        sampler, train_loader, val_loader = loaders.sampler, loaders.train, loaders.val
        if opts['debug_save_dir']:  # each process writes its share
            for name, subset in (('train', train_set), ('val', val_set)):
                counts = write_debug_images(subset, os.path.join(opts['debug_save_dir'], name), model.cfg.image_size,
                                            model.cfg.image_crop, range(ctx.rank, len(subset), ctx.world_size))
                logger.info("debug_save_dir: %s images %s in %s", name, counts, opts['debug_save_dir'])
        train_step = GlobalBatchStep(model, train_net, optimizer, ctx, strategy, bs, micro, pos_weight, opts['seed'],
                                     writer)

        best_path = os.path.join(save_dir, BEST_NAME)
        last_path = os.path.join(save_dir, LAST_NAME)
        patience = int(opts['early_stopping_patience'])
        epochs, val_every, save_every = int(opts['epochs']), opts['val_check_interval'], opts['save_interval']
        history: List[Dict[str, Any]] = []
        best: Dict[str, Any] = dict(score=float('inf'), epoch=0, step=0, val={}, since=0)
        window = dict(loss=0.0, correct=0.0, seen=0, t=time.time())  # training since the last validation
        monitor = 'val/balanced_loss' if val_loader is not None else 'train/loss'
        scheduler = None
        if opts['lr_schedule'] == 'cosine':  # per optimiser step, from lr down to 0 at the last epoch
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, epochs * sampler.steps_per_epoch))
        bar = tqdm(range(1, epochs + 1), desc='reward model', unit='epoch',
                   disable=not (opts['progress'] and ctx.is_main), dynamic_ncols=True)

        def save_weights(paths: Sequence[str]) -> None:
            state = full_state_dict(model.network, strategy, ctx)  # under FSDP every process takes part
            if ctx.is_main:
                save_checkpoint(paths[0], state, meta)
                for path in paths[1:]:  # the same bytes
                    atomic_write(path, lambda tmp: shutil.copyfile(paths[0], tmp))

        def validate(epoch: int, step: int) -> bool:
            """Validate, write last (and best) model, log; True when early stopping says stop (on every rank)."""
            train_metrics = dict(loss=window['loss'] / max(window['seen'], 1),
                                 accuracy=window['correct'] / max(window['seen'], 1))
            val_metrics = evaluate_sharded(model, val_loader, len(val_set), ctx) if val_loader is not None else {}
            score = val_metrics['balanced_loss'] if val_metrics else train_metrics['loss']
            improved = score < best['score'] - float(opts['min_delta']) or opts['model_selection'] == 'last'
            improved = broadcast_from_main(improved, ctx)  # every rank saves (FSDP gathers) and stops alike
            save_weights([last_path, best_path] if improved else [last_path])
            if improved:
                best.update(score=score, epoch=epoch, step=step, val=dict(val_metrics), since=0)
            else:
                best['since'] += 1
            record = dict(epoch=epoch, step=step, time_s=round(time.time() - window['t'], 3), improved=improved,
                          **{f'train/{k}': v for k, v in train_metrics.items()},
                          **{f'val/{k}': v for k, v in val_metrics.items()})
            history.append(record)
            window.update(loss=0.0, correct=0.0, seen=0, t=time.time())
            if writer is not None:
                for k, v in record.items():
                    if '/' in k:
                        writer.add_scalar(k, v, step)
                writer.add_scalar('train/lr', optimizer.param_groups[0]['lr'], step)
                writer.flush()
            postfix = dict(loss=f"{train_metrics['loss']:.4f}")
            if val_metrics:
                postfix.update(val_loss=f"{val_metrics['loss']:.4f}", val_acc=f"{val_metrics['accuracy']:.3f}",
                               val_f1=f"{val_metrics['f1']:.3f}")
            bar.set_postfix(dict(postfix, best=best['epoch']))
            return broadcast_from_main(bool(patience and best['since'] >= patience), ctx)

        step, epochs_run, validated_at, stop, train_time = 0, 0, -1, False, 0.0
        for epoch in bar:
            epochs_run = epoch
            sampler.set_epoch(epoch)
            pending: List[Any] = []
            t_step = time.time()
            for micro_batch in train_loader:
                pending.append(micro_batch)
                if len(pending) < accumulation:
                    continue
                stats = train_step(pending, step)
                pending = []
                step += 1
                if scheduler is not None:
                    scheduler.step()
                window['loss'] += stats['reward_loss'] * bs
                window['correct'] += stats['accuracy'] * bs
                window['seen'] += bs
                if save_every and step % save_every == 0:
                    save_weights([os.path.join(save_dir, f'step_{step}_model.safetensors')])
                if val_every and step % val_every == 0:
                    train_time += time.time() - t_step
                    validated_at, stop = step, validate(epoch, step)
                    t_step = time.time()
                    if stop:
                        break
            train_time += time.time() - t_step
            if not stop and not val_every:
                validated_at, stop = step, validate(epoch, step)
            if stop:
                break
        if validated_at != step:  # the final weights are validated and written as the last model
            stop = validate(epochs_run, step) or stop
        bar.close()
        report = None
        if ctx.is_main and len(val_set):
            # a sharded network cannot run on rank 0 alone: the report scores with an unsharded copy
            report_model = _build_model(cfg, ctx, None, scan, model_overrides, data_dir) \
                if is_sharded(strategy, ctx) else model
            report = _fidelity_on_val(report_model, scan, val_set, val_idx, opts, save_dir, best_path, data_dir)
    finally:
        if writer is not None:
            writer.close()
    if report is None and opts['store_threshold'] and ctx.is_main:
        logger.warning("store_threshold: no validation split to pick a threshold on; nothing stored")

    result = dict(
        best_path=best_path, last_path=last_path,
        best_val=best['val'], best_epoch=best['epoch'], best_step=best['step'], best_score=best['score'],
        monitor=monitor, epochs_run=epochs_run, steps_run=step,
        stopped_early=stop and step < epochs * sampler.steps_per_epoch,
        history=history,
        num_images=scan.num_images,
        num_train=len(train_set), num_val=len(val_set),
        skipped=len(scan.skipped_files), skipped_files=list(scan.skipped_files),
        train_files=list(train_set.files), val_files=list(val_set.files),
        metadata=meta,
        save_dir=save_dir, data_dir=data_dir,
        balance=opts['balance'],
        pos_weight=pos_weight,
        world_size=ctx.world_size, strategy=strategy if ctx.distributed else None,
        micro_batch_size=micro, accumulation_steps=accumulation,
        num_workers=loaders.num_workers, pin_memory=loaders.pin_memory,
        images_per_s=step * bs / max(train_time, 1e-9),
        options=dict(opts),
        model_config=model_overrides,
        report_dir=os.path.join(save_dir, 'fidelity_val') if report is not None else None,
        joint_speed_gate=joint_gate,
    )
    summary_path = None
    if ctx.is_main:
        summary_path = os.path.join(save_dir, SUMMARY_NAME)
        write_json_atomic(summary_path, dict(result, report=report_summary(report) if report else None), default=str)
        best_val = best['val']
        val_txt = (f"val loss {best_val['loss']:.4f}, acc {best_val['accuracy']:.3f}, precision "
                   f"{best_val['precision']:.3f}, recall {best_val['recall']:.3f}, F1 {best_val['f1']:.3f}"
                   if best_val else f"train loss {best['score']:.4f} (no validation set)")
        stopped = ' (early stop)' if result['stopped_early'] else ''
        line = (f"reward model: best epoch {best['epoch']}/{epochs_run}{stopped}: {val_txt}; "
                f"{scan.num_images['success']} success / {scan.num_images['failure']} failure images, "
                f"{len(scan.skipped_files)} skipped; best -> {best_path}")
        print(line, flush=True)  # always: ``progress`` only controls the tqdm bar
    barrier(ctx)  # the other ranks leave once rank 0 has written everything
    result.update(summary_path=summary_path, report=report)
    return result


# ---------------------------------------------------------------------------------------- CLI
def _build_parser() -> argparse.ArgumentParser:
    keys = "\n".join(f"  {k}={d!r}: {h}" for k, (d, h) in TRAIN_OPTIONS.items())
    aliases = ", ".join(f"{k} (= {v})" for k, v in OVERRIDE_ALIASES.items())
    return argparse.ArgumentParser(
        prog='python -m ding_ext.train_reward_model',
        description="Train the image success classifier on <data>/success/*.png and <data>/failure/*.png.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"trainer keys (key=value):\n{keys}\n"
               "model keys: model.<key>=value for any reward-model config key, e.g. model.arch=resnet34 "
               "model.hidden_dim=512 model.image_size=[3,64,64] model.pretrained=/path/weights.pth\n"
               f"dotted override names: {aliases}, actor.model.<key> (= model.<key>)\n"
               "several processes: torchrun --nproc_per_node N -m ding_ext.train_reward_model --data DIR ...",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _build_parser()
    parser.add_argument('--data', help="folder holding success/ and failure/ (or give data=DIR)")
    parser.add_argument('overrides', nargs='*', metavar='key=value')
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:  # under torchrun, rank 0 logs and the others only warn
        rank = int(os.environ.get('RANK', 0))
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                            format=f'%(levelname)s [rank {rank}] %(name)s: %(message)s')
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
