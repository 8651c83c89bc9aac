"""Labelled reward images without a trained policy.

``solved_frames``: final frames of PickCube episodes solved by ManiSkill's motion planner, kept only
when the env itself reports success. ``failure_frames``: final frames of short random-action episodes,
labelled with the env's success flag (practically always False). Both render through
``ManiSkillEnv.render_reward_image`` with the given env config, so camera, image size and goal-marker
visibility match what ``ManiSkillEnv`` puts into ``info['reward_image']``.
"""
import copy
from typing import Dict, List, Optional

from tqdm import tqdm

from .maniskill_env import ManiSkillEnv, _item

# ManiSkill's Panda motion planner drives the arm with absolute joint targets
PLANNER_CONTROL_MODE = 'pd_joint_pos'


def _env_cfg(env_cfg: Optional[dict], **overrides) -> dict:
    cfg = ManiSkillEnv.default_config()
    cfg.update(copy.deepcopy(dict(env_cfg or {})))
    cfg.update(overrides)
    return cfg


def solved_frames(num: int, seed: int = 0, env_cfg: Optional[dict] = None, max_failures: Optional[int] = None) -> List[Dict]:
    """``num`` env-verified successful final frames of PickCube solved by the motion planner.

    Tries seeds ``seed, seed + 1, ...``; a seed is skipped when planning fails or the env does not
    report success at the end. Raises RuntimeError after ``max_failures`` skipped seeds
    (default ``max(10, num)``). Returns dicts ``image`` (HxWx3 uint8), ``success`` (True), ``seed``,
    ``control_mode`` ('pd_joint_pos', which the planner needs)."""
    from mani_skill.examples.motionplanning.panda.solutions.pick_cube import solve

    cfg = _env_cfg(env_cfg, control_mode=PLANNER_CONTROL_MODE, reward_render_mode='none')
    if cfg.env_id != 'PickCube-v1':
        raise ValueError(f"solved_frames uses the PickCube motion planner, got env_id={cfg.env_id!r}")
    max_failures = max(10, num) if max_failures is None else max_failures
    env = ManiSkillEnv(cfg)
    if env.renders_every_step:
        raise ValueError("scripted success frames are single final frames; for reward_frames > 1 record whole episodes "
                         "as clips with dizoo_maniskill.record_planner_episodes")
    env.reset()  # creates the ManiSkill env; solve() resets it with each seed
    frames, failed = [], []
    s = seed
    try:
        with tqdm(total=num, desc='motion-planned PickCube successes') as bar:
            while len(frames) < num:
                result = solve(env.unwrapped_env, seed=s, debug=False, vis=False)
                success = not isinstance(result, int) and bool(_item(result[-1]['success']))
                if success:
                    frames.append(
                        dict(image=env.render_reward_image(), success=True, seed=s, control_mode=PLANNER_CONTROL_MODE)
                    )
                    bar.update(1)
                else:
                    failed.append(s)
                    if len(failed) > max_failures:
                        raise RuntimeError(
                            f"motion planner failed on {len(failed)} seeds ({failed}) while collecting "
                            f"{num} successes ({len(frames)} so far)"
                        )
                s += 1
    finally:
        env.close()
    return frames


def failure_frames(num: int, seed: int = 0, env_cfg: Optional[dict] = None, episode_steps: int = 10,
                   frame_stride: Optional[int] = None) -> List[Dict]:
    """Frames of ``num`` random-action episodes of ``episode_steps`` steps in the normal env (episode ``i``
    uses seed ``seed + i``): the final frame of each, or with ``frame_stride`` every k-th step (and the
    last). ``success`` is the env's flag at that frame (practically always False). Same dict keys as
    ``solved_frames``, plus ``frame_info`` (episode id, step, label facts) and ``source`` ('random')."""
    mode = 'episode_end' if frame_stride is None else 'every_step'
    cfg = _env_cfg(env_cfg, reward_render_mode=mode, max_episode_steps=int(episode_steps))
    env = ManiSkillEnv(cfg)
    frames = []
    try:
        for i in tqdm(range(num), desc='random-action episodes'):
            env.seed(seed + i, dynamic_seed=False)
            env.reset()
            while True:
                timestep = env.step(env.random_action())
                info = timestep.info
                keep = 'reward_image' in info and (frame_stride is None or timestep.done
                                                   or info['episode_len'] % frame_stride == 0)
                if keep:
                    frames.append(dict(image=info['reward_image'], success=info['success'], seed=seed + i,
                                       control_mode=cfg.control_mode, frame_info=info['frame_info'], source='random'))
                if timestep.done:
                    break
    finally:
        env.close()
    return frames
