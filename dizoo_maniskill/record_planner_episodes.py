"""Add whole motion-planned PickCube episodes (or closed-loop expert episodes) to a stage-1 image folder.

Every recorded frame is labelled by the env's success flag and gets a sidecar row (episode id, step,
source='planner', cube-to-goal distance, robot static, grasped, phase); see
``dizoo_maniskill.envs.planner_episodes``. Numbering continues after the frames already in the folder,
nothing is overwritten, and the env settings are checked against the folder's ``metadata.json``.

    python -m dizoo_maniskill.record_planner_episodes --save-dir pickcube_reward_data --seeds 10000:10040
    # the expert in the RL control mode (pd_ee_delta_pos): wandering arm, cube held at and off the goal
    python -m dizoo_maniskill.record_planner_episodes --source expert --save-dir pickcube_rlpd_reward_data \
        --seeds 30000:30060 --config dizoo_maniskill/config/pickcube_rlpd_resnet_reward_config.py
"""
import argparse
import os
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from ding_ext.image_dataset_writer import LabelledImageWriter


def parse_seeds(text: str) -> list:
    """'10:20' -> 10..19; '1,5,9' -> [1, 5, 9]."""
    if ':' in text:
        lo, hi = text.split(':', 1)
        seeds = list(range(int(lo), int(hi)))
    else:
        seeds = [int(s) for s in text.split(',') if s.strip()]
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}: use START:STOP or a comma-separated list")
    return seeds


def write_frames(save_dir: str, env_cfg: dict, make_frames: Callable[[], Iterable[Dict[str, Any]]]) -> Dict[str, int]:
    """Write every frame ``make_frames()`` returns (dicts with image, success, frame_info, source, as the planner and
    ``failure_frames`` give them) into ``save_dir``; returns the counts written per class. The folder's
    ``metadata.json`` is checked against ``env_cfg`` before ``make_frames`` runs."""
    from entry.experiment_config import env_metadata
    writer = LabelledImageWriter(save_dir, target_success=10 ** 9, target_failure=10 ** 9, sample_rate_success=1.0,
                                 sample_rate_fail=1.0, metadata=env_metadata(env_cfg), progress=False)
    written = {'success': 0, 'failure': 0}
    try:
        for f in make_frames():
            if writer.add(f['image'], f['success'], f['frame_info'], source=f['source']):
                written['success' if f['success'] else 'failure'] += 1
    finally:
        writer.close()
    return written


def _record_new_episodes(save_dir: str, seeds: Sequence[int], env_cfg: Optional[dict], episode_id: Callable[[int], str],
                         collect: Callable[..., list]) -> Dict[str, int]:
    from ding_ext.image_folder_dataset import read_sidecar
    from dizoo_maniskill.config.pickcube_base import ENV
    cfg = dict(ENV, **(env_cfg or {}))
    present = {row.get('episode_id') for row in read_sidecar(save_dir).values()} if os.path.isdir(save_dir) else set()
    todo = [s for s in seeds if episode_id(s) not in present]
    counts = write_frames(save_dir, cfg, lambda: collect(todo, cfg)) if todo else dict(success=0, failure=0)
    return dict(counts, skipped=len(seeds) - len(todo))


def record_planner_episodes(save_dir: str, seeds: Sequence[int], env_cfg: Optional[dict] = None, workers: int = 1,
                            progress: bool = True, **episode_kwargs) -> Dict[str, int]:
    """Write the frames of planner episodes for ``seeds`` into ``save_dir``; returns the counts written per class and
    the number of seeds ``skipped``: those whose episode the folder's sidecar already holds (a re-run resumes)."""
    from dizoo_maniskill.envs.planner_episodes import collect_planner_frames, planner_episode_id
    return _record_new_episodes(save_dir, seeds, env_cfg, planner_episode_id, lambda todo, cfg: collect_planner_frames(
        todo, cfg, workers=workers, progress=progress, **episode_kwargs))


def record_expert_episodes(save_dir: str, seeds: Sequence[int], env_cfg: Optional[dict] = None, workers: int = 1,
                           progress: bool = True, **episode_kwargs) -> Dict[str, int]:
    """``record_planner_episodes`` for the closed-loop expert's episodes (``dizoo_maniskill.envs.expert_episodes``:
    the RL control mode's view, with the cube held still off the goal as hard negatives)."""
    from dizoo_maniskill.envs.expert_episodes import collect_expert_frames, expert_episode_id
    return _record_new_episodes(save_dir, seeds, env_cfg, expert_episode_id, lambda todo, cfg: collect_expert_frames(
        todo, cfg, workers=workers, progress=progress, **episode_kwargs))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--save-dir', required=True, help='stage-1 image folder (success/, failure/, frames.jsonl)')
    p.add_argument('--seeds', type=parse_seeds, default=parse_seeds('10000:10020'),
                   help='START:STOP or a comma list; keep them away from the seeds you evaluate on')
    p.add_argument('--workers', type=int, default=1, help='processes (each renders with its own env)')
    p.add_argument('--source', choices=('planner', 'expert'), default='planner',
                   help="planner: ManiSkill's motion planner (joint space); expert: the closed-loop expert in "
                        "pd_ee_delta_pos (dizoo_maniskill.envs.expert_episodes), what an RL policy in that mode sees")
    p.add_argument('--frame-stride', type=int, default=None,
                   help='record every k-th step (and every step near the goal); default 3 (planner), 2 (expert)')
    p.add_argument('--hold-steps', type=int, default=None, help='steps held at the goal; default 15 (planner), 8 (expert)')
    p.add_argument('--retreat-dist', type=float, default=0.1,
                   help='planner: carry the cube this far (m) from the goal after the hold; 0 = off')
    p.add_argument('--config', default=None,
                   help="record with the env of this RL config (e.g. dizoo_maniskill/config/"
                        "pickcube_rlpd_resnet_reward_config.py); default: the PPO recipe's env")
    p.add_argument('--show-goal-site', type=int, choices=(0, 1), default=None,
                   help="override the recipe's show_goal_site (it must match the folder's metadata.json)")
    args = p.parse_args(argv)
    env_cfg = {}
    if args.config:
        from ding.config import read_config
        env_cfg = dict(read_config(args.config)[0].env)
    if args.show_goal_site is not None:
        env_cfg['show_goal_site'] = bool(args.show_goal_site)
    kwargs = {k: v for k, v in dict(frame_stride=args.frame_stride, hold_steps=args.hold_steps).items() if v is not None}
    if args.source == 'planner':
        counts = record_planner_episodes(args.save_dir, args.seeds, env_cfg, workers=args.workers,
                                         retreat_dist=args.retreat_dist, **kwargs)
    else:
        counts = record_expert_episodes(args.save_dir, args.seeds, env_cfg, workers=args.workers, **kwargs)
    print(f"wrote {counts['success']} success and {counts['failure']} failure frames from {len(args.seeds)} "
          f"{args.source} episodes to {args.save_dir} ({counts['skipped']} already there)")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
