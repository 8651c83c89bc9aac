"""The joint-speed gate of clip reward models: success only where the robot's own joint encoders say it is still.

Some tasks call a state a success only while the robot is still (PickCube: "cube at the goal, robot static", ManiSkill's
``is_static(0.2)``: every arm joint slower than 0.2 rad/s). Near that threshold the arm moves less than a pixel per
frame at 128 px, so pixels cannot tell (``bench/pickcube_static_separability.py``: the best pixel-motion measure
makes 38 errors on 433 "cube at the goal" frames, the joint positions 3). A robot knows its joint velocities exactly,
in simulation and on hardware alike. The env puts them next to each reward image (``reward_state: True``: the
``reward_state`` of its ``frame_info``, recorded into the dataset sidecar); a clip scores ``p`` where the largest
absolute joint velocity is at most the threshold and 0 elsewhere, and the image classifier judges the scene.

The threshold comes from labelled clips (``calibrate_joint_speed``): the ``keep`` quantile of the joint speed of the
success clips (still by the task's definition; keep 1.0: the fastest of them). The trainer calibrates it with
``still_joint_speed='auto'``, trains the image classifier on the clips the gate lets through (the classifier then
learns the scene, not the motion it cannot see), and stores the number in the checkpoints (``still_joint_speed``),
which ``still_joint_speed='auto'`` reads.

    python -m ding_ext.joint_speed_gate --data DIR [--keep 1.0] [--checkpoint CKPT --store]
"""
import argparse
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from .checkpoint_io import update_checkpoint_metadata
from .transitions import REWARD_STATE_KEY

# checkpoint metadata written by store_joint_speed (kept when the weights train on: it describes the robot)
JOINT_SPEED_KEYS = ('still_joint_speed', 'still_joint_speed_keep', 'still_joint_speed_data')


def joint_speed(states: Any, n: Optional[int] = None) -> torch.Tensor:
    """The largest absolute joint velocity of each row of ``states`` (a [B, D] array / tensor or a list of rows),
    float32 [B] on the CPU. ``n``: the number of rows expected (the batch's images); a ``ValueError`` names a
    mismatch, a missing batch (None) or a row of another length."""
    if states is None:
        raise ValueError(f"the joint-speed gate (still_joint_speed) needs the robot's joint velocities with the images "
                         f"(observations['states'], a transition's frame_info['{REWARD_STATE_KEY}']: the ManiSkill env "
                         "emits them with reward_state=True), got none")
    if isinstance(states, torch.Tensor):
        x = states.detach().to('cpu', torch.float32)
    else:
        rows = [r.detach().cpu().numpy() if isinstance(r, torch.Tensor) else r for r in states] \
            if isinstance(states, (list, tuple)) else states
        try:
            x = torch.as_tensor(np.asarray(rows, dtype=np.float32))
        except ValueError as e:
            raise ValueError(f"reward states must be rows of one length (joint velocities), got {e}") from e
    if x.ndim == 1 and n is not None and n == 1 and x.numel() != 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"reward states must be [B, joints] joint velocities, got shape {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{x.shape[0]} reward states for {n} images: give one row of joint velocities per image")
    if not torch.isfinite(x).all():
        raise ValueError("reward states hold NaN or inf joint velocities")
    return x.abs().amax(dim=1)


def sidecar_states(frames: Sequence[Mapping[str, Any]], where: str) -> List[Any]:
    """The ``reward_state`` of every sidecar row; a ``ValueError`` names ``where`` and how many rows lack one."""
    missing = sum(1 for f in frames if not f or f.get(REWARD_STATE_KEY) is None)
    if missing:
        raise ValueError(f"{missing} of {len(frames)} images of {where} have no '{REWARD_STATE_KEY}' in frames.jsonl: "
                         "the joint-speed gate needs the joint velocities of every image; record with the env's "
                         "reward_state=True")
    return [f[REWARD_STATE_KEY] for f in frames]


def calibrate_joint_speed(data_dir: str, keep: float = 1.0) -> Dict[str, Any]:
    """The joint-speed threshold keeping ``keep`` of the success clips of ``data_dir`` (its sidecar's
    ``reward_state``); see ``calibrate_from_frames``."""
    from .image_folder_dataset import read_sidecar, scan_image_folder
    if not read_sidecar(data_dir):
        raise ValueError(f"{data_dir} has no frames.jsonl sidecar: the joint-speed gate is calibrated on its "
                         f"'{REWARD_STATE_KEY}' rows")
    scan = scan_image_folder(data_dir, cache=False)
    return calibrate_from_frames(scan.frames, scan.labels, keep, os.path.abspath(data_dir))


def calibrate_from_frames(frames: Sequence[Mapping[str, Any]], labels: Sequence[int], keep: float,
                          where: str) -> Dict[str, Any]:
    """The threshold keeping ``keep`` of the success clips among sidecar rows ``frames`` (labels ``labels``), and
    what it lets through: the fraction of failure clips and, where the sidecar says whether the robot was static, of
    the moving failure clips (per phase where it names them)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must lie in (0, 1], got {keep}")
    speed = joint_speed(sidecar_states(frames, where)).numpy()
    labels = np.asarray(labels, dtype=bool)
    if not labels.any():
        raise ValueError(f"{where} has no success clips to calibrate the joint-speed threshold on")
    threshold = float(np.quantile(speed[labels], keep))
    passed = speed <= threshold
    row: Dict[str, Any] = dict(threshold=threshold, keep=float(keep), data=where,
                               success_clips=int(labels.sum()), failure_clips=int((~labels).sum()),
                               success_kept=float(np.mean(passed[labels])),
                               failure_passed=float(np.mean(passed[~labels])) if (~labels).any() else None)
    moving = np.asarray([f.get('is_robot_static') is False for f in frames]) & ~labels
    if moving.any():
        row.update(moving_failure_clips=int(moving.sum()), moving_failure_passed=float(np.mean(passed[moving])))
    phases = np.asarray([str(f.get('phase') or '') for f in frames])
    names = sorted(set(phases[~labels].tolist()) - {''})
    if names:
        row['failure_passed_by_phase'] = {ph: float(np.mean(passed[~labels & (phases == ph)])) for ph in names}
    return row


def passed_indices(indices: Sequence[int], frames: Sequence[Mapping[str, Any]], threshold: float,
                   where: str) -> List[int]:
    """The ``indices`` whose sidecar joint speed is at most ``threshold`` (the clips the gate lets through)."""
    speed = joint_speed(sidecar_states([frames[i] for i in indices], where)).numpy() if len(indices) else []
    return [i for i, s in zip(indices, speed) if s <= threshold]


def gate_training_split(frames: Sequence[Mapping[str, Any]], labels: Sequence[int], train_idx: Sequence[int],
                        val_idx: Sequence[int], keep: float, where: str):
    """For a trainer: the calibration on all of ``frames`` and the training and validation indices the gate passes
    (the classifier learns, and is validated and calibrated on, the clips the gated reward scores)."""
    calibration = calibrate_from_frames(frames, labels, keep, where)
    tau = calibration['threshold']
    return calibration, passed_indices(train_idx, frames, tau, where), passed_indices(val_idx, frames, tau, where)


def store_joint_speed(checkpoint: str, calibration: Mapping[str, Any]) -> Dict[str, Any]:
    """Rewrite ``checkpoint`` (atomically, same weights) with the calibration's threshold in its metadata."""
    return update_checkpoint_metadata(checkpoint, dict(
        still_joint_speed=float(calibration['threshold']), still_joint_speed_keep=float(calibration['keep']),
        still_joint_speed_data=str(calibration['data'])))


def auto_joint_gate_keep(model_overrides: Dict[str, Any]) -> Optional[float]:
    """For a trainer: with ``still_joint_speed='auto'`` among the model settings, the ``still_joint_speed_keep`` to
    calibrate with (the model's default when unset), and ``still_joint_speed`` set to None for training (the trainer
    keeps the clips the gate passes and stores the gate into the checkpoints afterwards); None when the settings ask
    for no calibration."""
    if model_overrides.get('still_joint_speed') != 'auto':
        return None
    from ding.utils import REWARD_MODEL_REGISTRY
    defaults = REWARD_MODEL_REGISTRY.get(model_overrides.get('type', 'resnet')).default_config()
    model_overrides['still_joint_speed'] = None
    return float(model_overrides.get('still_joint_speed_keep', defaults.still_joint_speed_keep))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m ding_ext.joint_speed_gate', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help="success/ and failure/ folders with a frames.jsonl sidecar holding "
                   f"each image's '{REWARD_STATE_KEY}'")
    p.add_argument('--keep', type=float, default=1.0, help='fraction of success clips the gate keeps')
    p.add_argument('--checkpoint', help='clip reward checkpoint to store the threshold in (with --store)')
    p.add_argument('--store', action='store_true', help="write the threshold into --checkpoint's metadata")
    args = p.parse_args(argv)
    if args.store and not args.checkpoint:
        p.error("--store needs --checkpoint")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        p.error(f"--checkpoint {args.checkpoint} does not exist")
    try:
        calibration = calibrate_joint_speed(args.data, args.keep)
    except ValueError as e:
        p.error(str(e))
    if args.store:
        calibration['stored'] = store_joint_speed(args.checkpoint, calibration)
    print(json.dumps(calibration, indent=2))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
