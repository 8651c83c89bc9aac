"""Record motion-planned PickCube demonstrations for RLPD's demo buffer, in the training control mode.

Each seed gives one episode file (``ding_ext.demo_episodes``): the planner's episode converted to the env's
control mode, every step with its reward-camera frame, held at the goal at the end; kept only when it ends
in success. Seeds already recorded in the folder are skipped (an interrupted recording resumes), and the
env settings are checked against the folder's ``metadata.json``.

    python -m dizoo_maniskill.record_demos --demo-dir pickcube_demos --seeds 500000:500040 --workers 2 \\
        --config dizoo_maniskill/config/pickcube_rlpd_resnet_reward_config.py
"""
import argparse
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Dict, Optional, Sequence

from ding_ext.demo_episodes import episode_names, write_episode, write_metadata
from dizoo_maniskill.record_planner_episodes import parse_seeds

_PROCESS: Dict[str, Any] = {}
DEFAULTS = dict(hold_steps=10, action_stride=3)


def _record(seed: int, env_cfg: Dict[str, Any], demo_dir: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """One seed in this process (the process keeps its envs and renderer); the episode's name, or None on failure."""
    from dizoo_maniskill.envs.maniskill_env import ManiSkillEnv
    from dizoo_maniskill.envs.planner_demos import make_planner_env, record_demo_episode
    if 'env' not in _PROCESS:
        _PROCESS['env'] = ManiSkillEnv(dict(env_cfg, reward_render_mode='none'))
        _PROCESS['planner'] = make_planner_env(env_cfg)
    episode = record_demo_episode(_PROCESS['env'], _PROCESS['planner'], int(seed), **kwargs)
    if episode is None:
        return None
    name = f's{int(seed)}'
    write_episode(demo_dir, name, episode)
    return name


def record_demos(demo_dir: str, seeds: Sequence[int], env_cfg: Dict[str, Any], workers: int = 1,
                 progress: bool = True, **kwargs: Any) -> Dict[str, int]:
    """Record the seeds not yet in ``demo_dir``; returns counts of recorded, skipped (present) and failed seeds."""
    from tqdm import tqdm
    from entry.experiment_config import demo_env_metadata
    write_metadata(demo_dir, demo_env_metadata(env_cfg))
    present = set(episode_names(demo_dir))
    todo = [int(s) for s in seeds if f's{int(s)}' not in present]
    opts = dict(DEFAULTS, **kwargs)
    counts = dict(recorded=0, skipped=len(seeds) - len(todo), failed=0)
    bar = tqdm(total=len(todo), desc='planner demos', unit='ep', disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1 or len(todo) <= 1:
            results = (_record(s, env_cfg, demo_dir, opts) for s in todo)
            for name in results:
                counts['recorded' if name else 'failed'] += 1
                bar.update(1)
        else:
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context('spawn')) as pool:
                n = len(todo)
                for name in pool.map(_record, todo, [env_cfg] * n, [demo_dir] * n, [opts] * n):
                    counts['recorded' if name else 'failed'] += 1
                    bar.update(1)
    finally:
        bar.close()
        if 'env' in _PROCESS:
            _PROCESS.pop('env').close()
            _PROCESS.pop('planner').close()
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ding.config import read_config
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--demo-dir', required=True, help='folder of episode_*.npz files (created; resumed when present)')
    p.add_argument('--seeds', type=parse_seeds, default=parse_seeds('500000:500040'),
                   help='START:STOP or a comma list; keep them away from the seeds you train and evaluate on')
    p.add_argument('--config', default='dizoo_maniskill/config/pickcube_rlpd_resnet_reward_config.py',
                   help='the RL config whose env (control mode, reward camera) the demos are recorded for')
    p.add_argument('--workers', type=int, default=1, help='processes (each with its own envs and renderer)')
    p.add_argument('--hold-steps', type=int, default=DEFAULTS['hold_steps'], help='steps held at the goal at the end')
    p.add_argument('--action-stride', type=int, default=DEFAULTS['action_stride'],
                   help="keep every k-th of the planner's joint targets (the planner moves slowly)")
    args = p.parse_args(argv)
    main_config, _ = read_config(args.config)
    counts = record_demos(args.demo_dir, args.seeds, dict(main_config.env), workers=args.workers,
                          hold_steps=args.hold_steps, action_stride=args.action_stride)
    print(f"{args.demo_dir}: {counts['recorded']} demos recorded, {counts['skipped']} already present, "
          f"{counts['failed']} seeds failed to plan or did not end in success")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
