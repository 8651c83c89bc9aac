"""Record PickCube demonstrations for RLPD's demo buffer, in the training control mode (motion-planned or scripted).

Each seed gives one episode file (``ding_ext.demo_episodes``), every step with its reward-camera frame, kept only
when it ends in success: the planner's episode converted to the env's control mode and held at the goal at the end
(``--source planner``), or a whole episode of a closed-loop scripted expert (``--source scripted``, pd_ee_delta_pos);
see ``dizoo_maniskill.envs.pickcube_demos``. Seeds already recorded in the folder are skipped (an interrupted recording resumes), and the
env settings are checked against the folder's ``metadata.json``.

    python -m dizoo_maniskill.record_demos --demo-dir pickcube_demos --seeds 500000:500040 --workers 2 \\
        --config dizoo_maniskill/config/pickcube_rlpd_resnet_reward_config.py
"""
import argparse
import json
import os
from typing import Any, Dict, Optional, Sequence

from ding_ext.checkpoint_io import write_json_atomic
from ding_ext.demo_episodes import episode_names, write_episode, write_metadata
from dizoo_maniskill.record_planner_episodes import parse_seeds

_PROCESS: Dict[str, Any] = {}
FAILED_FILE = 'failed_seeds.json'


def _options_key(opts: Dict[str, Any]) -> str:
    return ','.join(f'{k}={opts[k]}' for k in sorted(opts))


def _read_failed(path: str) -> Dict[str, list]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
DEFAULTS = dict(source='scripted', hold_steps=10, action_stride=3)
SOURCES = ('planner', 'scripted')


def _record(seed: int, env_cfg: Dict[str, Any], demo_dir: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """One seed in this process (the process keeps its envs and renderer); the episode's name, or None on failure."""
    from dizoo_maniskill.envs.maniskill_env import ManiSkillEnv
    from dizoo_maniskill.envs.pickcube_demos import make_planner_env, record_demo_episode, record_scripted_episode
    if 'env' not in _PROCESS:
        _PROCESS['env'] = ManiSkillEnv(dict(env_cfg, reward_render_mode='none'))
        _PROCESS['planner'] = make_planner_env(env_cfg)
    kwargs = dict(kwargs)
    if kwargs.pop('source') == 'scripted':
        episode = record_scripted_episode(_PROCESS['env'], int(seed), episode_steps=env_cfg['max_episode_steps'])
    else:
        episode = record_demo_episode(_PROCESS['env'], _PROCESS['planner'], int(seed), **kwargs)
    if episode is None:
        return None
    name = f's{int(seed)}'
    write_episode(demo_dir, name, episode)
    return name


def record_demos(demo_dir: str, seeds: Sequence[int], env_cfg: Dict[str, Any], workers: int = 1,
                 progress: bool = True, **kwargs: Any) -> Dict[str, int]:
    """Record the seeds not yet in ``demo_dir``; returns counts of recorded, skipped (present, or failed before with
    the same options: ``failed_seeds.json``) and failed seeds."""
    from dizoo_maniskill.envs.seed_pool import map_seeds
    from entry.experiment_config import demo_env_metadata
    write_metadata(demo_dir, demo_env_metadata(env_cfg))
    present = set(episode_names(demo_dir))
    opts = dict(DEFAULTS, **kwargs)
    if opts['source'] not in SOURCES:
        raise ValueError(f"demo source must be one of {SOURCES}, got {opts['source']!r}")
    # seeds that failed with these options before fail again (the planner and the sim are deterministic)
    failed_file = os.path.join(demo_dir, FAILED_FILE)
    failed = _read_failed(failed_file)
    known_bad = set(failed.get(_options_key(opts), []))
    todo = [int(s) for s in seeds if f's{int(s)}' not in present and int(s) not in known_bad]
    counts = dict(recorded=0, skipped=len(seeds) - len(todo), failed=0)
    new_bad = []
    try:
        names = map_seeds(_record, todo, (env_cfg, demo_dir, opts), workers, progress, f"{opts['source']} demos",
                          _PROCESS)
        for seed, name in zip(todo, names):
            counts['recorded' if name else 'failed'] += 1
            new_bad += [] if name else [seed]
    finally:
        if new_bad:
            failed[_options_key(opts)] = sorted(known_bad | set(new_bad))
            write_json_atomic(failed_file, failed)
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
    p.add_argument('--source', choices=SOURCES, default=DEFAULTS['source'],
                   help='planner: motion-planned episodes converted to the control mode; scripted: a closed-loop '
                        'expert in pd_ee_delta_pos, whole episodes')
    p.add_argument('--hold-steps', type=int, default=DEFAULTS['hold_steps'], help='steps held at the goal at the end')
    p.add_argument('--action-stride', type=int, default=DEFAULTS['action_stride'],
                   help="keep every k-th of the planner's joint targets (the planner moves slowly)")
    args = p.parse_args(argv)
    main_config, _ = read_config(args.config)
    counts = record_demos(args.demo_dir, args.seeds, dict(main_config.env), workers=args.workers,
                          source=args.source, hold_steps=args.hold_steps, action_stride=args.action_stride)
    print(f"{args.demo_dir}: {counts['recorded']} demos recorded, {counts['skipped']} already present, "
          f"{counts['failed']} seeds failed to plan or did not end in success")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
