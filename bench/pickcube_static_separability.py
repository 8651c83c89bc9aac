"""Can two frames tell PickCube's "robot static"? An ideal observer against the pixels, on held-out episodes.

PickCube's success needs the robot static: the largest arm joint speed at most 0.2 rad/s at the current step. A clip
reward model sees the frames before it. This bench asks how much of that flag the last two frames carry:

- ideal observer: the exact arm joint positions of the last two frames (the sidecar's ``arm_qpos``); the largest
  joint displacement over the last step, one threshold. What a perfect perception of the two frames could do.
- pixels: the mean absolute difference of the last two frames at the camera's resolution (the still-scene gate's
  measure), one threshold.

On the frames with the cube at the goal (``is_obj_placed``, where the flag decides success), each split's threshold
is the one with the fewest errors on these same frames (optimistic for both, one parameter each), and the errors are
turned into the precision and recall a reward would have on all frames if it judged the placement perfectly. Also
the arm speeds of the "cube at the goal, arm still moving" frames. Writes
``bench/results/pickcube_static_separability.json``.

    python bench/pickcube_static_separability.py
"""
import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SPEED_BANDS = (0.2, 0.25, 0.3, 0.4, 0.6, 1.0, np.inf)


def best_split(values: np.ndarray, success: np.ndarray) -> Dict[str, Any]:
    """The threshold t for "static when value <= t" with the fewest errors on these frames."""
    order = np.unique(values)
    best: Optional[Dict[str, Any]] = None
    for t in order:
        pred = values <= t
        fp, fn = int((pred & ~success).sum()), int((~pred & success).sum())
        if best is None or fp + fn < best['errors']:
            best = dict(threshold=float(t), errors=fp + fn, false_static=fp, false_moving=fn)
    return best


def as_reward_quality(split: Dict[str, Any], n_success: int) -> Dict[str, float]:
    """Precision and recall on all frames of a reward that judges the placement perfectly and the stillness by
    ``split``."""
    tp = n_success - split['false_moving']
    return dict(precision=round(tp / max(tp + split['false_static'], 1), 4), recall=round(tp / max(n_success, 1), 4))


def analyse(data_dir: str) -> Dict[str, Any]:
    from ding_ext.image_folder_dataset import scan_image_folder
    from ding_ext.motion_gate import last_frame_motion
    scan = scan_image_folder(data_dir, cache=True)
    frames = scan.frames
    qpos = {(f['episode_id'], f['step']): np.asarray(f['arm_qpos']) for f in frames if 'arm_qpos' in f}
    # the frames with the cube at the goal whose step before was recorded too (it is unless that step was more than
    # 5 cm from the goal)
    kept = [i for i, f in enumerate(frames)
            if f.get('is_obj_placed') and (f['episode_id'], f['step'] - 1) in qpos]
    success = np.array([bool(frames[i]['label']) for i in kept])
    judges = dict(
        joint_step=np.array([np.abs(qpos[(frames[i]['episode_id'], frames[i]['step'])]
                                    - qpos[(frames[i]['episode_id'], frames[i]['step'] - 1)]).max() for i in kept]),
        pixel_motion=last_frame_motion(scan.images[kept], 2).numpy())  # the still-scene gate's measure
    n_success = int(success.sum())
    out: Dict[str, Any] = dict(placed_frames=len(kept), success=n_success, moving=int((~success).sum()))
    for name, values in judges.items():
        split = best_split(values, success)
        out[name] = dict(split, **as_reward_quality(split, n_success))
    speeds = np.array([frames[i]['arm_speed'] for i in kept])[~success]
    out['moving_arm_speeds'] = {f"{lo}-{hi}": int(((speeds > lo) & (speeds <= hi)).sum())
                                for lo, hi in zip(SPEED_BANDS[:-1], SPEED_BANDS[1:])}
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work-dir', default=os.path.join(ROOT, 'bench', 'work', 'static_separability'))
    p.add_argument('--planner-episodes', type=int, default=10)
    p.add_argument('--expert-episodes', type=int, default=16)
    p.add_argument('--image-px', type=int, default=128,
                   help="the reward camera's resolution (px, square): does a finer image show the motion better?")
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'pickcube_static_separability.json'))
    args = p.parse_args(argv)
    from ding_ext.checkpoint_io import write_json_atomic
    from bench.pickcube_clip_fidelity import record_heldout_episodes
    from dizoo_maniskill import rlpd_recipe as recipe
    env_cfg = recipe.env_config(reward_frames=2, reward_frame_stride=1, image_size=[3, args.image_px, args.image_px])
    data = os.path.abspath(args.work_dir)
    t = time.time()
    record_heldout_episodes(data, env_cfg, args.planner_episodes, args.expert_episodes)
    result = dict(command=' '.join(['python', 'bench/pickcube_static_separability.py'] + list(argv or sys.argv[1:])),
                  record_seconds=round(time.time() - t, 1), image_size=env_cfg.get('image_size'), **analyse(data))
    write_json_atomic(args.out, result)
    print(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ in ('__main__', '__mp_main__'):  # spawned recorder processes import this module as __mp_main__
    from entry.demo import quiet_logs
    quiet_logs()

if __name__ == '__main__':
    raise SystemExit(main())
