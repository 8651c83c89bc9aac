"""Fidelity report of a trained reward model on a labelled PNG folder (held-out, hard data).

    python -m ding_ext.evaluate_reward_model --checkpoint CKPT --data DIR [--target-precision 0.95] [--confidence 0.95]
        [--out DIR] [--threshold 0.5] [--store-threshold] [--device cpu] [--batch-size 256]
    ding-evaluate-reward-model --checkpoint CKPT --data DIR ...

The network is rebuilt from the checkpoint's metadata (arch, hidden_dim, image_size, normalize); the
data is ``<data>/success/*.png`` + ``<data>/failure/*.png`` with the optional ``frames.jsonl`` sidecar
(breakdowns by source, phase, ...). Prints the report table and writes pr_curve.png,
confusion_matrix.png, probability_histogram.png, worst_errors.png and report.json into ``--out``
(default ``<checkpoint dir>/fidelity_<data folder name>``).

``--store-threshold`` rewrites the checkpoint (atomically, same weights) with the lowest threshold whose
precision on this data reaches ``--target-precision`` as metadata ``calibrated_threshold`` (plus
``calibration_target_precision``, ``calibration_data``, ``calibration_precision``,
``calibration_recall``), which ``reward_threshold='auto'`` then uses. When no threshold reaches the
target, nothing at all is written and the exit code is 1.
"""
import argparse
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .checkpoint_io import load_checkpoint
from .joint_speed_gate import sidecar_states
from .evaluation import (
    CALIBRATION_KEYS, fidelity_report, format_report, score_images, store_calibration, threshold_for_precision
)
from .image_folder_dataset import DataError, scan_image_folder

PROG = 'python -m ding_ext.evaluate_reward_model'
# reward-model config keys rebuilt from checkpoint metadata (all required: the network's shape and input)
NETWORK_KEYS = ('arch', 'hidden_dim', 'image_size', 'normalize')
# rebuilt when present (absent in checkpoints written before the option existed)
OPTIONAL_NETWORK_KEYS = ('image_crop', 'resize_antialias', 'clip_length', 'num_frames', 'frame_sampling', 'fusion')


class EvaluationError(Exception):
    """A problem the user can fix (bad arguments, missing or incomplete checkpoint, bad data)."""


def build_model_from_checkpoint(path: str, device: str = 'cpu', threshold: float = 0.5) -> Any:
    """The reward model a checkpoint describes, with its weights loaded (frozen, ``reward_threshold`` set)."""
    import ding_ext  # noqa: F401  (registers the reward models)
    from ding.reward_model import create_reward_model
    from easydict import EasyDict
    try:
        _, meta = load_checkpoint(path)
    except (OSError, ValueError) as e:
        raise EvaluationError(str(e)) from e
    except Exception as e:  # noqa: BLE001  (any other reader failure: not a checkpoint)
        raise EvaluationError(f"checkpoint {path} cannot be read: {type(e).__name__}: {e}") from e
    missing = [k for k in NETWORK_KEYS if k not in meta]
    if missing:
        raise EvaluationError(
            f"checkpoint {path} lacks the metadata {', '.join(missing)} needed to rebuild its network; "
            "evaluate checkpoints written by ding_ext (python -m ding_ext.train_reward_model or the reward model's save())"
        )
    cfg = dict(type=meta.get('type', 'resnet'), checkpoint_path=path, cooptrain_reward=False, pretrain_reward=False,
               pretrained=False, reward_threshold=float(threshold), debug_save_dir=None,
               **{k: meta[k] for k in NETWORK_KEYS + OPTIONAL_NETWORK_KEYS if k in meta})
    if meta.get('still_motion_threshold') is not None:  # the clip model's still-scene gate is part of its reward
        cfg['still_motion_threshold'] = 'auto'
    if meta.get('still_joint_speed') is not None:  # and so is the joint-speed gate
        cfg['still_joint_speed'] = 'auto'
    try:
        return create_reward_model(EasyDict(cfg), device, None)
    except (KeyError, ValueError, OSError, RuntimeError) as e:
        raise EvaluationError(f"cannot rebuild the reward model of {path}: {e}") from e


def evaluate_checkpoint(checkpoint: str, data: str, out: Optional[str] = None, threshold: Optional[float] = 0.5,
                        target_precision: float = 0.95, store_threshold: bool = False, device: str = 'cpu',
                        batch_size: int = 256, subsets: Optional[Callable[[List[Dict[str, Any]]], Mapping]] = None,
                        title: Optional[str] = None, confidence: Optional[float] = None) -> Dict[str, Any]:
    """Score ``data`` with the checkpoint's model and build the fidelity report (see the module doc).

    ``threshold=None``: the checkpoint's ``calibrated_threshold`` (0.5 when it has none). ``subsets``: a
    function of the sidecar rows returning {name: boolean mask} for the report's ``subsets``."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise EvaluationError(f"--threshold must lie in [0, 1], got {threshold}")
    if not 0.0 < target_precision <= 1.0:
        raise EvaluationError(f"--target-precision must lie in (0, 1], got {target_precision}")
    if confidence is not None and not 0.5 <= confidence < 1.0:
        raise EvaluationError(f"--confidence must lie in [0.5, 1), got {confidence}")
    if batch_size < 1:
        raise EvaluationError(f"--batch-size must be >= 1, got {batch_size}")
    checkpoint, data = os.path.abspath(checkpoint), os.path.abspath(data)
    if not os.path.isfile(checkpoint):
        raise EvaluationError(f"checkpoint {checkpoint} does not exist")
    import torch
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise EvaluationError(f"--device {device!r} is not a device: {e}") from e
    if kind == 'cuda' and not torch.cuda.is_available():
        raise EvaluationError(f"--device {device} was asked for but CUDA is not available; use --device cpu")
    model = build_model_from_checkpoint(checkpoint, device, 0.5 if threshold is None else threshold)
    if threshold is None:
        threshold = float(model.loaded_metadata.get('calibrated_threshold', 0.5))
    try:
        scan = scan_image_folder(data, cache=True)
    except DataError as e:
        raise EvaluationError(str(e)) from e
    out = os.path.abspath(out or os.path.join(os.path.dirname(checkpoint),
                                              f"fidelity_{os.path.basename(os.path.normpath(data))}"))
    states = None
    if getattr(model, 'needs_states', False):  # the joint-speed gate reads each image's recorded reward state
        try:
            states = sidecar_states(scan.frames, data)
        except ValueError as e:
            raise EvaluationError(str(e)) from e
    probs = score_images(model, scan.images, batch_size, states)
    frames = scan.frames if any(scan.frames) else None
    common = dict(frames=frames, images=scan.images, files=scan.files, threshold=threshold,
                  target_precision=target_precision, subsets=subsets(scan.frames) if subsets else None,
                  title=title or os.path.basename(os.path.normpath(data)), confidence=confidence)
    if store_threshold and threshold_for_precision(probs, scan.labels, target_precision, confidence) is None:
        report = fidelity_report(probs, scan.labels, **common)  # for the table; no files written
        report['store_error'] = (f"--store-threshold: nothing written: {report['chosen_reason']} on {data}; "
                                 "collect more (or cleaner) data, or lower --target-precision")
        return report
    report = fidelity_report(probs, scan.labels, out_dir=out, **common)
    if store_threshold:
        report['stored'] = store_calibration(checkpoint, report, data)
        report['stored_in'] = checkpoint
    return report


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help="reward-model checkpoint (.safetensors with metadata)")
    p.add_argument('--data', required=True, help="folder holding success/ and failure/ PNGs (held-out data)")
    p.add_argument('--target-precision', type=float, default=0.95,
                   help="pick the lowest threshold whose precision on the data reaches this (default 0.95)")
    p.add_argument('--confidence', type=float, default=None,
                   help="require the precision's one-sided Wilson lower bound at this confidence (e.g. 0.95) to "
                        "reach the target, not the point estimate: robust on a few hundred frames")
    p.add_argument('--out', default=None, help="output folder (default <checkpoint dir>/fidelity_<data name>)")
    p.add_argument('--threshold', type=float, default=0.5, help="the given threshold to report as well (0.5)")
    p.add_argument('--store-threshold', action='store_true',
                   help="write the chosen threshold into the checkpoint's metadata (calibrated_threshold)")
    p.add_argument('--device', default='cpu', help="cpu | cuda | cuda:N")
    p.add_argument('--batch-size', type=int, default=256, help="images per forward pass")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    try:
        report = evaluate_checkpoint(args.checkpoint, args.data, args.out, args.threshold, args.target_precision,
                                     args.store_threshold, args.device, args.batch_size,
                                     confidence=args.confidence)
    except EvaluationError as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    print(format_report(report), flush=True)
    if report.get('store_error'):
        parser.exit(1, f"{parser.prog}: error: {report['store_error']}\n")
    if report.get('stored'):
        stored = ', '.join(f"{k}={report['stored'][k]!r}" for k in CALIBRATION_KEYS if k != 'calibration_data')
        print(f"stored in {report['stored_in']}: {stored}", flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
