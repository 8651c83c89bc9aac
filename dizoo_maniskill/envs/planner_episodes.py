"""Whole motion-planned PickCube episodes as labelled frames: successes and the hard negatives around them.

ManiSkill's motion planner solves PickCube in about a second. Recording every step of its episode
(not just the last) gives the frames a success classifier must tell apart: approach, grasp,
transport, the cube arriving at the goal while the arm still moves, and the hold at the goal (the
only success frames). After the hold, the arm carries the cube ``retreat_dist`` away from the goal
and holds it there: the robot is static with the cube in the gripper, but not at the goal, which
is exactly what a classifier that learned "cube lifted" gets wrong.

Every frame is labelled by the env's own success flag and carries the facts behind it
(``ManiSkillEnv.label_facts``: cube-to-goal distance, robot static, grasped, phase), an episode id
and its step. Frames are rendered with ``ManiSkillEnv.render_reward_image``, so camera, size and
goal-marker visibility match what the env puts into ``info['reward_image']`` during RL.
"""
import copy
from typing import Callable, Dict, List, Optional, Sequence

import gymnasium
import numpy as np

from .maniskill_env import NEAR_GOAL_DIST, ManiSkillEnv, _item

# ManiSkill's Panda motion planner drives the arm with absolute joint targets
PLANNER_CONTROL_MODE = 'pd_joint_pos'
GRIPPER_CLOSED = -1.0


class _StepRecorder(gymnasium.Wrapper):
    """Calls ``on_step(info)`` after every step the planner takes, and ``on_reset()`` after each reset."""

    def __init__(self, env: gymnasium.Env, on_step: Callable[[Dict], None],
                 on_reset: Optional[Callable[[], None]] = None) -> None:
        super().__init__(env)
        self._on_step = on_step
        self._on_reset = on_reset

    def reset(self, **kwargs):
        out = self.env.reset(**kwargs)
        if self._on_reset is not None:
            self._on_reset()
        return out

    def step(self, action):
        out = self.env.step(action)
        self._on_step(out[-1])
        return out


def recording_env_cfg(env_cfg: Optional[dict], control_mode: str, driver: str) -> dict:
    """The env that records PickCube episodes driven by ``driver`` (named in the error) in ``control_mode``: long
    episodes, nothing rendered unless a frame is recorded."""
    cfg = ManiSkillEnv.default_config()
    cfg.update(copy.deepcopy(dict(env_cfg or {})))
    if cfg.env_id != 'PickCube-v1':
        raise ValueError(f"{driver} episodes use the PickCube {driver}, got env_id={cfg.env_id!r}")
    cfg.update(control_mode=control_mode, reward_render_mode='none', max_episode_steps=10 ** 6)
    return cfg


def _hold(env: gymnasium.Env, steps: int) -> None:
    """Keep the arm at its current joints with the gripper closed."""
    base = env.unwrapped
    qpos = base.agent.robot.get_qpos()[0, :7].cpu().numpy()
    action = np.concatenate([qpos, [GRIPPER_CLOSED]]).astype(np.float32)
    for _ in range(steps):
        env.step(action)


def _carry_away(env: gymnasium.Env, dist: float, rng: np.random.Generator) -> bool:
    """Move the grasped cube ``dist`` metres from the goal in a random direction that stays above the table."""
    import sapien
    from mani_skill.examples.motionplanning.panda.motionplanner import PandaArmMotionPlanningSolver
    base = env.unwrapped
    planner = PandaArmMotionPlanningSolver(env, debug=False, vis=False, base_pose=base.agent.robot.pose,
                                           visualize_target_grasp_pose=False, print_env_info=False)
    planner.gripper_state = planner.CLOSED  # keep the cube
    try:
        tcp = base.agent.tcp.pose
        direction = rng.normal(size=3)
        direction[2] = abs(direction[2])  # never into the table
        direction /= np.linalg.norm(direction)
        target = tcp.p[0].cpu().numpy() + dist * direction
        result = planner.move_to_pose_with_screw(sapien.Pose(target, tcp.q[0].cpu().numpy()))
    finally:
        planner.close()
    return not isinstance(result, int)


def planner_episode_id(seed: int) -> str:
    """The sidecar's episode id of the planner episode of ``seed``."""
    return f"planner-s{int(seed)}"


def record_planner_episode(env: ManiSkillEnv, seed: int, frame_stride: int = 3, hold_steps: int = 15,
                           retreat_dist: float = 0.1, retreat_hold_steps: int = 8) -> Optional[List[Dict]]:
    """Frames of one planner-solved episode (None when planning fails).

    Every ``frame_stride``-th step is recorded, and every step with the cube within 5 cm of the goal
    (the frames that decide precision). Each frame: ``image``, ``success`` (the env's flag),
    ``frame_info`` (episode_id, step, planner_stage, label facts), ``source`` ('planner').
    """
    from mani_skill.examples.motionplanning.panda.solutions.pick_cube import solve
    frames: List[Dict] = []
    state = dict(step=0, stage='pick_and_place')
    episode_id = planner_episode_id(seed)

    def on_step(info: Dict) -> None:
        state['step'] += 1
        facts = env.label_facts(info)
        near = facts.get('cube_goal_dist', np.inf) <= NEAR_GOAL_DIST
        image = env.render_reward_image() if env.renders_every_step else None  # a clip needs every frame
        if state['step'] % frame_stride == 0 or near:
            frames.append(dict(
                image=env.render_reward_image() if image is None else image, success=bool(_item(info['success'])),
                source='planner',
                frame_info=dict(episode_id=episode_id, step=state['step'], planner_stage=state['stage'], **facts),
            ))

    recorder = _StepRecorder(env.unwrapped_env, on_step, env.start_reward_clip)
    result = solve(recorder, seed=seed, debug=False, vis=False)
    if isinstance(result, int):
        return None
    state['stage'] = 'hold_at_goal'
    _hold(recorder, hold_steps)
    if retreat_dist > 0:
        state['stage'] = 'carry_away'
        if _carry_away(recorder, retreat_dist, np.random.default_rng(seed)):
            state['stage'] = 'hold_away'
            _hold(recorder, retreat_hold_steps)
    if not any(f['success'] for f in frames):
        return None  # the planner ended without an env-verified success: skip the episode
    return frames


_PROCESS_ENV: Dict[str, ManiSkillEnv] = {}


def _episode_in_worker(seed: int, env_cfg: Optional[dict], kwargs: dict) -> List[Dict]:
    """One episode in a pool process; the process keeps its env (and renderer) across episodes."""
    env = _PROCESS_ENV.get('env')
    if env is None:
        env = _PROCESS_ENV['env'] = ManiSkillEnv(recording_env_cfg(env_cfg, PLANNER_CONTROL_MODE, 'motion planner'))
        env.reset()
    return record_planner_episode(env, int(seed), **kwargs) or []


def collect_planner_frames(seeds: Sequence[int], env_cfg: Optional[dict] = None, workers: int = 1,
                           progress: bool = True, **kwargs) -> List[Dict]:
    """``record_planner_episode`` for each of ``seeds`` (episodes that fail to plan are skipped), in this process
    or split across ``workers`` spawned processes; the frames in seed order."""
    from .seed_pool import map_seeds
    frames: List[Dict] = []
    for part in map_seeds(_episode_in_worker, seeds, (env_cfg, kwargs), workers, progress, 'planner episodes',
                          _PROCESS_ENV):
        frames += part
    return frames
