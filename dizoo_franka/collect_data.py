"""Collect Franka peg-insertion episodes: images, states, actions, pose-based and human success labels.

One command, in the sim (the cell is started and stopped here, a scripted policy with noise drives)::

    python -m dizoo_franka.collect_data --sim --out logs/sim_collect

and on a real robot (a SpaceMouse drives, keys label; see ``dizoo_franka.drivers``)::

    python -m dizoo_franka.collect_data --robot-ip 172.16.0.2 --camera realsense:123456789012 --driver spacemouse

Defaults come from ``dizoo_franka/config/realworld_collect_data.py`` (``num_data_episodes`` 20,
``target_ee_pose``, ``success_hold_steps`` 20, the env's safety box); ``--out`` defaults to
``logs/<timestamp>``. Each episode is written when it ends, atomically, as ``episode_<nnnn>.npz`` in the demo
format of ``ding_ext.demo_episodes`` (so the folder serves as RLPD demonstrations), with per step ``obs`` /
``next_obs`` (the state vector), ``action`` (the action actually sent), ``reward``, ``done``, ``success`` (the
pose-based label), ``human_label`` (-1 none, 0 failure, 1 success), ``at_target``, ``tcp_pos``, and ``image``
(the camera frame after every step), plus ``reset_image``, the frame of the reset observation (``obs_mode``
'state_image'): with it the episodes also serve as demos for a policy that sees images (the image of observation t
is the frame after step t - 1). An interruption loses at most the current episode, and running the command
again resumes the count. A lost connection ends the run after saving the episode so far.
"""
import argparse
import copy
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np
from easydict import EasyDict

from ding_ext.demo_episodes import episode_names, write_episode, write_metadata

from .drivers import make_driver
from .envs import FrankaEnv


def record_episode(env: FrankaEnv, driver) -> Dict[str, np.ndarray]:
    """Run one episode with ``driver``; the per-step arrays of the module docstring (``connection_lost`` and the
    error, when there was one, as extra entries)."""
    obs = env.reset()
    reset_image = np.ascontiguousarray(obs['image'].transpose(1, 2, 0)) if isinstance(obs, dict) else None
    driver.reset(env)
    rows: List[Dict[str, Any]] = []
    info: Dict[str, Any] = {}
    done = False
    while not done:
        state = obs['state'] if isinstance(obs, dict) else obs
        timestep = env.step(driver.act(state))
        info = timestep.info
        next_state = timestep.obs['state'] if isinstance(timestep.obs, dict) else timestep.obs
        done = bool(timestep.done) or driver.end_requested()
        rows.append(dict(
            obs=state, next_obs=next_state, action=info['action_sent'], reward=float(timestep.reward[0]), done=done,
            success=bool(info['success']), human_label=driver.human_label(), at_target=bool(info['at_target']),
            tcp_pos=next_state[:3], image=info['reward_image'],
        ))
        obs = timestep.obs
    episode = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
    episode['human_label'] = episode['human_label'].astype(np.int8)
    episode['image_step'] = np.arange(len(rows))
    if reset_image is not None:
        if reset_image.shape != episode['image'].shape[1:]:
            raise ValueError(f"the observation image ({reset_image.shape}) and the camera frames "
                             f"({episode['image'].shape[1:]}) differ in size: collect with obs_image_size unset")
        episode['reset_image'] = reset_image
    episode['connection_lost'] = np.array(bool(info.get('connection_lost', False)))
    episode['error'] = np.array(str(info.get('error', '')))
    return episode


def collection_metadata(env_cfg: EasyDict, driver: str) -> Dict[str, Any]:
    """What the episodes depend on; a resumed folder must agree."""
    keys = ('action_scale', 'control_hz', 'use_rotation', 'use_gripper', 'image_size', 'target_ee_pose',
            'success_hold_steps', 'success_pos_tol', 'obs_mode')
    meta = {k: env_cfg[k] for k in keys}
    meta['image_size'] = [int(v) for v in meta['image_size']]
    meta['target_ee_pose'] = [float(v) for v in meta['target_ee_pose']]
    return dict(meta, env='franka', source=f'franka_collect_{driver}')


# collection settings a demo folder must share with the env that learns from it (RLPD's demo buffer checks them)
DEMO_CHECK_KEYS = ('env', 'action_scale', 'control_hz', 'use_rotation', 'use_gripper', 'image_size', 'target_ee_pose')


def demo_check_metadata(env_cfg: EasyDict) -> Dict[str, Any]:
    """``collection_metadata``'s ``DEMO_CHECK_KEYS`` for an env config (the env's defaults filled in)."""
    full = FrankaEnv.default_config()
    full.update(copy.deepcopy(dict(env_cfg)))
    meta = collection_metadata(full, driver='')
    return {k: meta[k] for k in DEMO_CHECK_KEYS}


def collect(cfg: EasyDict, out_dir: str, log=print) -> List[str]:
    """Collect until ``out_dir`` holds ``cfg.collect.num_data_episodes`` episodes; returns the episode paths
    written by this call. Stops early (after saving) when the connection is lost."""
    collect_cfg = cfg.collect
    if cfg.env.get('obs_image_size') is not None:
        raise ValueError("collect with env.obs_image_size unset: the reset frame is recorded from the observation "
                         "image, at the camera frames' image_size (the demo loader resizes for the policy)")
    env = FrankaEnv(cfg.env)  # connects in its first reset()
    write_metadata(out_dir, collection_metadata(env._cfg, collect_cfg.driver))
    done_names = episode_names(out_dir)
    if done_names:
        log(f"resuming: {out_dir} already holds {len(done_names)} episodes")
    env.seed(int(collect_cfg.seed) + len(done_names))
    driver = make_driver(collect_cfg.driver, env._cfg, noise=collect_cfg.noise, miss_prob=collect_cfg.miss_prob,
                         seed=int(collect_cfg.seed) + len(done_names))
    written = []
    try:
        for index in range(len(done_names), int(collect_cfg.num_data_episodes)):
            start = time.monotonic()
            episode = record_episode(env, driver)
            written.append(write_episode(out_dir, f'{index:04d}', episode))
            log(f"episode {index}: {len(episode['action'])} steps, success {bool(episode['success'][-1])}, "
                f"{time.monotonic() - start:.1f} s -> {written[-1]}")
            if episode['connection_lost']:
                log(f"stopping: {episode['error']}; {index + 1} episodes are saved in {out_dir}")
                break
    finally:
        env.close()
        if hasattr(driver, 'close'):
            driver.close()
    return written


def parse_camera(text: str) -> Dict[str, Any]:
    """``realsense:SERIAL``, ``opencv:DEVICE`` (index or path)."""
    kind, _, arg = text.partition(':')
    if kind == 'realsense':
        return dict(type='realsense', serial=arg or None)
    if kind == 'opencv':
        return dict(type='opencv', device=int(arg) if arg.isdigit() else (arg or 0))
    raise ValueError(f"--camera must be realsense:SERIAL or opencv:DEVICE, got {text!r}")


def main(argv: Optional[List[str]] = None) -> None:
    from .config.realworld_collect_data import main_config
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sim', action='store_true', help='start the sim cell and collect there (scripted driver)')
    parser.add_argument('--robot-ip', default=None, help='robot (FCI) address; real robot')
    parser.add_argument('--camera', default=None, help='realsense:SERIAL or opencv:DEVICE; real robot')
    parser.add_argument('--driver', default=None, choices=['scripted', 'keyboard', 'spacemouse'])
    parser.add_argument('--episodes', type=int, default=None, help='num_data_episodes')
    parser.add_argument('--max-steps', type=int, default=None, help='max_episode_steps')
    parser.add_argument('--out', default=None, help='output folder (default logs/<timestamp>)')
    args = parser.parse_args(argv)
    cfg = copy.deepcopy(main_config)
    if args.episodes is not None:
        cfg.collect.num_data_episodes = args.episodes
    if args.max_steps is not None:
        cfg.env.max_episode_steps = args.max_steps
    if args.driver:
        cfg.collect.driver = args.driver
    out_dir = args.out or os.path.join('logs', time.strftime('%Y%m%d-%H%M%S'))
    if not args.sim:
        if args.robot_ip:
            cfg.env.robot_ip = args.robot_ip
        if args.camera:
            cfg.env.camera = parse_camera(args.camera)
        collect(cfg, out_dir)
        return
    from .sim_cell_process import SimCellProcess, sim_env_overrides
    if not args.driver:
        cfg.collect.driver = 'scripted'
    with SimCellProcess(os.path.join(out_dir, 'sim_cell')) as cell:
        cfg.env.update(sim_env_overrides(cell.ready))
        collect(cfg, out_dir)


if __name__ == '__main__':
    main()
