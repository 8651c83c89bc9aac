"""Labelled PickCube frames from the RL policy's own point of view: closed-loop expert episodes in ``pd_ee_delta_pos``.

A classifier trained only on motion-planner episodes (which rotate the gripper to the cube's yaw and move in joint
space) met frames it had never seen once an RL policy in ``pd_ee_delta_pos`` (fixed gripper orientation) collected
them. These episodes are made by ``pickcube_expert_action``, the expert the RL demos come from, so they look like
what the cloned policy does. Each episode, with its own random action noise (none while holding: a jittering arm at the goal is neither
static nor distinguishable from a still one in a single frame):

0. move the open or closed gripper through ``wander_points`` random points of the workspace (an exploring policy
   puts the arm anywhere, close to the reward camera included: a planner-trained classifier called some of those
   frames success);
1. pick the cube and carry it to the goal (approach, transport, and the cube arriving while the arm still moves);
2. hold it there (the success frames);
3. carry it ``offset`` metres away (drawn in ``offset_range``, the near misses just outside the 2.5 cm tolerance
   included) and hold it there: the robot static with the cube lifted, but not at the goal.

(With ``settle_offset_range``, step 2 first carries the cube to a point inside the tolerance, see below.)

Every frame is labelled by the env's success flag, with the facts behind it (``ManiSkillEnv.label_facts``), an
episode id and its step; every ``frame_stride``-th step is kept, and every step within 5 cm of the goal.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .maniskill_env import NEAR_GOAL_DIST, ManiSkillEnv, _item
from .pickcube_demos import _position, pickcube_expert_action, toward
from .planner_episodes import recording_env_cfg

EXPERT_CONTROL_MODE = 'pd_ee_delta_pos'
# where an exploring policy takes the gripper (m, the robot's base frame: the cube spawns near the origin)
WORKSPACE_LOW, WORKSPACE_HIGH = np.array([-0.25, -0.35, 0.03]), np.array([0.3, 0.35, 0.45])


def expert_episode_id(seed: int) -> str:
    """The sidecar's episode id of the expert episode of ``seed``."""
    return f"expert-s{int(seed)}"


def _offset_goal(goal: np.ndarray, dist: float, rng: np.random.Generator) -> np.ndarray:
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    target = goal + dist * direction
    target[2] = max(target[2], 0.04)  # above the table with the cube in hand
    return target


def record_expert_episode(env: ManiSkillEnv, seed: int, frame_stride: int = 2, wander_points: int = 2,
                          wander_steps: int = 8, max_reach_steps: int = 50,
                          hold_steps: int = 8, offset_range: Tuple[float, float] = (0.03, 0.1),
                          move_steps: int = 12, away_hold_steps: int = 8, noise_range: Tuple[float, float] = (0.0, 0.3),
                          settle_offset_range: Optional[Tuple[float, float]] = None) -> Optional[List[Dict]]:
    """Frames of one expert episode from the initial state of ``seed`` (None when the cube never reaches the goal).

    ``settle_offset_range`` (m): once the cube is at the goal, carry it to a point drawn at that distance from the
    goal before the hold (stage ``settle``), so that the holds cover the whole 2.5 cm tolerance instead of where the
    cube first crossed into it, and the arm stops at the goal once more (the frames where the static flag turns on).
    With ``offset_range`` starting just outside 2.5 cm, both sides of the boundary are held.

    Each frame: ``image``, ``success`` (the env's flag), ``frame_info`` (episode_id, step, expert_stage, label facts),
    ``source`` ('expert')."""
    if env._cfg.control_mode != EXPERT_CONTROL_MODE:
        raise ValueError(f"expert episodes act in {EXPERT_CONTROL_MODE}, not control_mode={env._cfg.control_mode!r}")
    if env.unwrapped_env is None:
        env.reset()  # builds the ManiSkill env
    rng = np.random.default_rng(seed)
    noise = float(rng.uniform(*noise_range))
    ms_env = env.unwrapped_env
    base = ms_env.unwrapped
    ms_env.reset(seed=int(seed))
    env.start_reward_clip()
    frames: List[Dict] = []
    state = dict(step=0, reached=False)
    episode_id = expert_episode_id(seed)

    def step(action: np.ndarray, stage: str, noisy: bool = True) -> Dict[str, Any]:
        action = np.asarray(action, np.float32).copy()
        if noisy:
            action[:3] = np.clip(action[:3] + noise * rng.normal(size=3), -1, 1)
        info = ms_env.step(action)[-1]
        state['step'] += 1
        facts = env.label_facts(info)
        success = bool(_item(info['success']))
        image = env.render_reward_image() if env.renders_every_step else None  # a clip needs every frame
        if state['step'] % frame_stride == 0 or facts.get('cube_goal_dist', np.inf) <= NEAR_GOAL_DIST:
            image = env.render_reward_image() if image is None else image
            frames.append(dict(image=image, success=success, source='expert',
                               frame_info=dict(episode_id=episode_id, step=state['step'], expert_stage=stage, noise=round(noise, 3), **facts)))
        state['reached'] |= success
        return facts

    def hold(steps: int, stage: str) -> None:
        for _ in range(steps):
            step(np.array([0.0, 0.0, 0.0, -1.0]), stage, noisy=False)  # a still arm: holds are static

    for _ in range(wander_points):
        point, grip = rng.uniform(WORKSPACE_LOW, WORKSPACE_HIGH), float(rng.choice([-1.0, 1.0]))
        for _ in range(wander_steps):
            tcp = _position(base.agent.tcp.pose)
            if np.linalg.norm(tcp - point) < 0.02:
                break
            step(toward(tcp, point, grip), 'wander')
    goal = _position(base.goal_site.pose)
    for _ in range(max_reach_steps):
        if step(pickcube_expert_action(base), 'reach_goal').get('is_obj_placed'):
            break
    if settle_offset_range is not None:
        inside = _offset_goal(goal, float(rng.uniform(*settle_offset_range)), rng)
        for _ in range(move_steps):
            step(pickcube_expert_action(base, goal=inside), 'settle')
            if np.linalg.norm(_position(base.agent.tcp.pose) - inside) < 0.003:
                break
    hold(hold_steps, 'hold_at_goal')
    if not state['reached']:
        return None
    away = _offset_goal(goal, float(rng.uniform(*offset_range)), rng)
    for _ in range(move_steps):
        step(pickcube_expert_action(base, goal=away), 'carry_away')
        if np.linalg.norm(_position(base.agent.tcp.pose) - away) < 0.01:
            break
    hold(away_hold_steps, 'hold_away')
    return frames


_PROCESS_ENV: Dict[str, ManiSkillEnv] = {}


def _episode_in_worker(seed: int, env_cfg: Dict[str, Any], kwargs: Dict[str, Any]) -> List[Dict]:
    """One episode in this process; the process keeps its env (and renderer) across episodes."""
    if 'env' not in _PROCESS_ENV:
        _PROCESS_ENV['env'] = ManiSkillEnv(recording_env_cfg(env_cfg, EXPERT_CONTROL_MODE, 'expert'))
    return record_expert_episode(_PROCESS_ENV['env'], int(seed), **kwargs) or []


def collect_expert_frames(seeds: Sequence[int], env_cfg: Optional[Dict[str, Any]] = None, workers: int = 1,
                          progress: bool = True, **kwargs: Any) -> List[Dict]:
    """``record_expert_episode`` for each of ``seeds``, in this process or ``workers`` spawned ones; frames in seed
    order (episodes whose cube never reaches the goal are skipped)."""
    from .seed_pool import map_seeds
    frames: List[Dict] = []
    for part in map_seeds(_episode_in_worker, seeds, (dict(env_cfg or {}), kwargs), workers, progress,
                          'expert episodes', _PROCESS_ENV):
        frames += part
    return frames
