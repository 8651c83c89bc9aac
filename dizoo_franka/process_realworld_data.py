"""Turn collected Franka episodes into the classifier's dataset: ``collected_data/`` next to them.

    python -m dizoo_franka.process_realworld_data logs/20261126-101500 --num-samples-per-episode 0 \\
        --label both --drop-idle

reads every ``episode_*.npz`` of the folder (``dizoo_franka.collect_data``) and writes
``<folder>/collected_data/{success,failure}/NNNN.png`` with the per-frame sidecar (``frames.jsonl``: episode id,
step, label, source, both labels), through ``ding_ext.image_dataset_writer``, so that
``python -m ding_ext.train_reward_model --data <folder>/collected_data`` splits it by episode. Options:

- ``--label``: ``pose`` (the env's success, the default), ``human`` (the key labels; unlabelled frames are left
  out) or ``both`` (frames whose human label exists and agrees with the pose label);
- ``--drop-idle``: leave out frames where the TCP moved less than ``--idle-distance`` metres since the previous
  frame, except each episode's last frame;
- ``--num-samples-per-episode N``: N evenly spaced frames of each episode (its last frame always among them), after
  the two filters above; 0 keeps all.

The failure/success ratio of the training split is the trainer's ``fail_success_ratio`` option (applied after its
episode split, so validation keeps every frame). Only the frames after each step are labelled frames: an episode's
``reset_image`` (the reset observation's frame, kept for image-observation demos) is not written. Each sidecar row
also has ``target_dist``, the TCP's distance (m) from the folder's ``target_ee_pose`` (failures close to the target
are the hard negatives a fidelity report looks at).
"""
import argparse
import os
import shutil
import sys
from typing import Any, Dict, List, Optional

import numpy as np

from ding_ext.demo_episodes import episode_names, episode_path, read_episode
from ding_ext.image_dataset_writer import LabelledImageWriter
from ding_ext.image_folder_dataset import read_metadata

LABEL_SOURCES = ('pose', 'human', 'both')
OUTPUT_DIR = 'collected_data'


def select_frames(episode: Dict[str, np.ndarray], label: str = 'pose', drop_idle: bool = False,
                  idle_distance: float = 0.001, num_samples: int = 0) -> List[tuple]:
    """(step index, label) of the frames to write, in order (see the module docstring)."""
    if label not in LABEL_SOURCES:
        raise ValueError(f"label must be one of {LABEL_SOURCES}, got {label!r}")
    pose = np.asarray(episode['success'], dtype=bool)
    human = np.asarray(episode.get('human_label', np.full(len(pose), -1)))
    n = len(pose)
    keep = np.ones(n, dtype=bool)
    if label == 'human':
        keep &= human >= 0
    elif label == 'both':
        keep &= (human >= 0) & (human == pose)
    if drop_idle:
        positions = np.asarray(episode['tcp_pos'], dtype=np.float64)
        moved = np.linalg.norm(np.diff(positions, axis=0, prepend=positions[:1]), axis=1) >= idle_distance
        moved[0] = True  # the first frame has no previous one
        moved[-1] = True  # terminal frames stay
        keep &= moved
    steps = np.flatnonzero(keep)
    if num_samples and len(steps) > num_samples:
        steps = steps[np.unique(np.round(np.linspace(0, len(steps) - 1, num_samples)).astype(int))]
    labels = pose if label == 'pose' else human == 1
    return [(int(t), bool(labels[t])) for t in steps]


def process(folder: str, label: str = 'pose', drop_idle: bool = False, idle_distance: float = 0.001,
            num_samples_per_episode: int = 0, overwrite: bool = False, log=print) -> Dict[str, Any]:
    """Write ``<folder>/collected_data``; returns its path and the per-class counts."""
    names = episode_names(folder)
    if not names:
        raise FileNotFoundError(f"{folder} holds no episode_*.npz files (collect with dizoo_franka.collect_data)")
    out_dir = os.path.join(folder, OUTPUT_DIR)
    if os.path.exists(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists; remove it or pass --overwrite (the writer would append)")
        shutil.rmtree(out_dir)
    metadata = dict(read_metadata(folder), label_source=label, drop_idle=bool(drop_idle),
                    num_samples_per_episode=int(num_samples_per_episode))
    target = metadata.get('target_ee_pose')
    writer = LabelledImageWriter(out_dir, target_success=10**9, target_failure=10**9, sample_rate_success=1.0,
                                 sample_rate_fail=1.0, metadata=metadata, progress=False)
    try:
        for name in names:
            episode = read_episode(episode_path(folder, name))
            human = episode.get('human_label', np.full(len(episode['success']), -1))
            for t, success in select_frames(episode, label, drop_idle, idle_distance, num_samples_per_episode):
                info = dict(episode_id=f'franka-{name}', step=t + 1, pose_label=bool(episode['success'][t]),
                            human_label=int(human[t]), at_target=bool(episode['at_target'][t]))
                if target is not None:
                    dist = np.linalg.norm(np.asarray(episode['tcp_pos'][t]) - np.asarray(target[:3]))
                    info['target_dist'] = round(float(dist), 5)
                writer.add(episode['image'][t], success, source='robot' if label == 'pose' else 'human',
                           frame_info=info)
    finally:
        writer.close()
    log(f"{out_dir}: {writer.counts['success']} success and {writer.counts['failure']} failure frames "
        f"from {len(names)} episodes")
    return dict(out_dir=out_dir, counts=dict(writer.counts), episodes=len(names))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m dizoo_franka.process_realworld_data',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('path', help='folder of collected episodes (or one of its episode_*.npz / data files)')
    parser.add_argument('--label', default='pose', choices=LABEL_SOURCES)
    parser.add_argument('--drop-idle', action='store_true', help='leave out frames without motion (not terminal)')
    parser.add_argument('--idle-distance', type=float, default=0.001, help='metres moved below which a frame idles')
    parser.add_argument('--num-samples-per-episode', type=int, default=0, help='0: all frames')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing collected_data/')
    args = parser.parse_args(argv)
    folder = args.path if os.path.isdir(args.path) else os.path.dirname(os.path.abspath(args.path))
    if args.num_samples_per_episode < 0:
        parser.error(f"--num-samples-per-episode must be >= 0, got {args.num_samples_per_episode}")
    try:
        process(folder, args.label, args.drop_idle, args.idle_distance, args.num_samples_per_episode, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    return 0


if __name__ == '__main__':
    sys.exit(main())
