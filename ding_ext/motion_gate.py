"""The still-scene gate of clip reward models: success only where the clip's last two frames show no motion.

Some tasks call a state a success only while the robot is still (PickCube: "cube at the goal, robot static"). One
frame cannot show that, and a classifier of single frames calls "cube at the goal, arm still moving" a success: a
policy rewarded by it learns to reach the goal without stopping, and the env never counts it. The gate measures the
motion directly: the mean absolute difference (pixel values in [0, 1]) between the last two frames of each clip, at
the env's resolution. A clip scores ``p`` where that motion is at most the threshold and 0 elsewhere.

The threshold comes from labelled clips (``calibrate_motion_threshold``): the ``keep`` quantile of the motion of the
success clips, which are still by the task's definition. ``store_motion_threshold`` writes it into a checkpoint's
metadata (``still_motion_threshold``), which ``still_motion_threshold='auto'`` of the clip reward models reads.

    python -m ding_ext.motion_gate --checkpoint CKPT --data DIR --clip-length 5 [--keep 0.8] [--store]
"""
import argparse
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .checkpoint_io import load_checkpoint, update_checkpoint_metadata
from .image_utils import to_nchw
from .video_frames import split_filmstrip

# checkpoint metadata written by store_motion_threshold (kept when the weights are trained further: it describes the
# camera's pixels, not the weights)
MOTION_KEYS = ('still_motion_threshold', 'still_motion_keep', 'still_motion_data')


def last_frame_motion(images: Any, clip_length: int) -> torch.Tensor:
    """Mean absolute difference between the last two frames of each filmstrip clip, pixel values in [0, 1];
    float32 [B] on the CPU. ``images``: NHWC or NCHW filmstrips (uint8 in [0, 255] or float in [0, 1]), a list of
    them, or a single one."""
    if int(clip_length) < 2:
        raise ValueError(f"the still-scene gate compares the last two frames of a clip: clip_length must be >= 2, "
                         f"got {clip_length}")
    x = to_nchw(images, channels=3)
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    clips = split_filmstrip(x, int(clip_length))  # [B, T, C, H, W]
    last, before = clips[:, -1].float(), clips[:, -2].float()
    return ((last - before).abs().mean(dim=(1, 2, 3)) / scale).cpu()


def calibrate_motion_threshold(data_dir: str, clip_length: int, keep: float = 0.8,
                               batch_size: int = 512) -> Dict[str, Any]:
    """The motion threshold that keeps ``keep`` of the success clips of ``data_dir`` (success/ and failure/ PNG
    filmstrips), and what it lets through: the fraction of failure clips, and where the sidecar says whether the
    robot was static, the fraction of moving failure clips (per phase where it names them)."""
    return calibrate_motion_thresholds(data_dir, clip_length, [keep], batch_size)[0]


def calibrate_motion_thresholds(data_dir: str, clip_length: int, keeps: Sequence[float],
                                batch_size: int = 512) -> List[Dict[str, Any]]:
    """``calibrate_motion_threshold`` for each of ``keeps`` (a sweep), the clips read and their motion measured once."""
    from .image_folder_dataset import scan_image_folder
    for keep in keeps:
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must lie in (0, 1], got {keep}")
    scan = scan_image_folder(data_dir, cache=True)
    motion = torch.cat([last_frame_motion(scan.images[i:i + batch_size], clip_length)
                        for i in range(0, len(scan.images), batch_size)]).numpy()
    labels = np.asarray(scan.labels, dtype=bool)
    if not labels.any():
        raise ValueError(f"{data_dir} has no success clips to calibrate the motion threshold on")
    moving = np.asarray([bool(f) and f.get('is_robot_static') is False for f in scan.frames]) & ~labels
    phases = np.asarray([str(f.get('phase')) if f and f.get('phase') else '' for f in scan.frames])
    failure_phases = sorted(set(phases[~labels].tolist()) - {''})  # the sidecar's phases (e.g. PickCube's at_goal_moving)
    out = []
    for keep in keeps:
        threshold = float(np.quantile(motion[labels], keep))
        passed = motion <= threshold
        row: Dict[str, Any] = dict(threshold=threshold, keep=float(keep), data=os.path.abspath(data_dir),
                                   success_clips=int(labels.sum()), failure_clips=int((~labels).sum()),
                                   success_kept=float(np.mean(passed[labels])),
                                   failure_passed=float(np.mean(passed[~labels])) if (~labels).any() else None)
        if moving.any():
            row.update(moving_failure_clips=int(moving.sum()), moving_failure_passed=float(np.mean(passed[moving])))
        if failure_phases:
            row['failure_passed_by_phase'] = {ph: float(np.mean(passed[~labels & (phases == ph)]))
                                              for ph in failure_phases}
        out.append(row)
    return out


def store_motion_threshold(checkpoint: str, calibration: Dict[str, Any]) -> Dict[str, Any]:
    """Rewrite ``checkpoint`` (atomically, same weights) with the calibration's threshold in its metadata."""
    return update_checkpoint_metadata(checkpoint, dict(
        still_motion_threshold=float(calibration['threshold']), still_motion_keep=float(calibration['keep']),
        still_motion_data=str(calibration['data'])))


def calibrate_auto_gate(data_dir: str, model_overrides: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """For a trainer: with ``still_motion_threshold='auto'`` among the model settings, calibrate the gate on the
    training data (the model's ``clip_length`` and ``still_motion_keep``, or their defaults) and put the number in
    ``model_overrides`` in place of 'auto', so that training, the validation report and the stored probability
    threshold are those of the gated reward. Returns the calibration (store it with ``store_motion_threshold``), or
    None when the settings ask for no calibration."""
    if model_overrides.get('still_motion_threshold') != 'auto':
        return None
    from ding.utils import REWARD_MODEL_REGISTRY
    # the trainer's option check has made sure the type is a clip model's (a single-frame model has no such key)
    defaults = REWARD_MODEL_REGISTRY.get(model_overrides.get('type', 'resnet')).default_config()
    clip_length = int(model_overrides.get('clip_length', defaults.clip_length))
    keep = float(model_overrides.get('still_motion_keep', defaults.still_motion_keep))
    calibration = calibrate_motion_threshold(data_dir, clip_length, keep)
    model_overrides['still_motion_threshold'] = calibration['threshold']
    return calibration


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m ding_ext.motion_gate', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='success/ and failure/ folders of filmstrip clips')
    p.add_argument('--clip-length', type=int, default=None,
                   help="frames per clip (default: the checkpoint's clip_length)")
    p.add_argument('--checkpoint', help='clip reward checkpoint to store the threshold in (with --store)')
    p.add_argument('--keep', type=float, nargs='+', default=[0.8],
                   help='fraction of success clips the gate keeps; several values print a sweep (what each lets '
                        'through) and store nothing')
    p.add_argument('--store', action='store_true', help="write the threshold into --checkpoint's metadata")
    args = p.parse_args(argv)
    clip_length = args.clip_length
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            p.error(f"--checkpoint {args.checkpoint} does not exist")
        clip_length = clip_length or load_checkpoint(args.checkpoint)[1].get('clip_length')
    if not clip_length:
        p.error("--clip-length is needed (or a --checkpoint of a clip model)")
    if args.store and not args.checkpoint:
        p.error("--store needs --checkpoint")
    if args.store and len(args.keep) > 1:
        p.error("--store takes one --keep value")
    calibs = calibrate_motion_thresholds(args.data, int(clip_length), args.keep)
    if args.store:
        calibs[0]['stored'] = store_motion_threshold(args.checkpoint, calibs[0])
    print(json.dumps(calibs[0] if len(calibs) == 1 else calibs, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
