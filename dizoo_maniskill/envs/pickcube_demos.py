"""PickCube demonstrations for RL, recorded in the training control mode through ``ManiSkillEnv``.

Two sources, both giving episodes whose steps look exactly like online transitions (flat state observation,
action, env reward and success flag, reward-camera frame), kept only when they end in success:

- ``record_demo_episode``: ManiSkill's motion planner. It drives the Panda with absolute joint targets
  (``pd_joint_pos``); its actions are recorded, then ManiSkill's controller conversion
  (``mani_skill.trajectory.utils.actions.conversion.from_pd_joint_pos``, what ``replay_trajectory -c`` uses)
  replays them from the same initial state in the training env's control mode (e.g. ``pd_ee_delta_pos``). The
  episode is then held still at the goal (the arm's zero action, gripper closed) for ``hold_steps``. The
  planner's episodes are open-loop plans: good RL data, hard to imitate.
- ``record_scripted_episode``: ``pickcube_expert_action``, a closed-loop expert in ``pd_ee_delta_pos`` (a
  function of the current state: above the cube, down, close, carry to the goal, stay), for the whole episode.
"""
from typing import Any, Dict, List, Optional

import gymnasium
import numpy as np

from .maniskill_env import ManiSkillEnv, _item
from .planner_episodes import PLANNER_CONTROL_MODE

# the controller modes ManiSkill converts planner (pd_joint_pos) actions into
CONVERTIBLE_MODES = ('pd_ee_delta_pos', 'pd_ee_delta_pose', 'pd_joint_delta_pos', 'pd_joint_target_delta_pos',
                     'pd_joint_vel')


class _TransitionRecorder(gymnasium.Wrapper):
    """Records (obs, action, reward, next_obs, success, image and, with the env's ``reward_state``, the arm's joint
    velocities) for every step taken through it."""

    def __init__(self, env: ManiSkillEnv, first_obs: Any, with_images: bool) -> None:
        super().__init__(env.unwrapped_env)
        self.ms_env = env
        self.with_images = with_images
        self.obs = env._to_obs(first_obs)
        self.rows: List[Dict[str, Any]] = []

    def step(self, action):
        out = self.env.step(action)
        obs, reward, _, _, info = out
        next_obs = self.ms_env._to_obs(obs)
        act = action.cpu().numpy() if hasattr(action, 'cpu') else np.asarray(action)
        row = dict(obs=self.obs, action=np.asarray(act, np.float32).reshape(-1), reward=float(_item(reward)),
                   next_obs=next_obs, success=bool(_item(info['success'])))
        if self.with_images:
            row['image'] = self.ms_env.render_reward_image()
            if self.ms_env._cfg.reward_state:  # the joint velocities the joint-speed gate reads with the image
                row['reward_state'] = self.ms_env.arm_joint_velocities()
        self.rows.append(row)
        self.obs = next_obs
        return out


def _planner_actions(planner_env: gymnasium.Env, seed: int) -> Optional[List[np.ndarray]]:
    from mani_skill.examples.motionplanning.panda.solutions.pick_cube import solve
    actions: List[np.ndarray] = []

    class _ActionRecorder(gymnasium.Wrapper):

        def step(self, action):
            actions.append(np.asarray(action, dtype=np.float32).copy())
            return self.env.step(action)

    result = solve(_ActionRecorder(planner_env), seed=seed, debug=False, vis=False)
    if isinstance(result, int) or not bool(_item(result[-1]['success'])):
        return None
    return actions


def record_demo_episode(env: ManiSkillEnv, planner_env: gymnasium.Env, seed: int, hold_steps: int = 10,
                        action_stride: int = 1, with_images: bool = True) -> Optional[Dict[str, np.ndarray]]:
    """One demonstration (the arrays of ``ding_ext.demo_episodes``), or None when planning or conversion fails
    or the episode does not end in success. ``action_stride`` k keeps every k-th of the planner's joint targets."""
    from mani_skill.trajectory.utils.actions.conversion import from_pd_joint_pos
    mode = env._cfg.control_mode
    if mode not in CONVERTIBLE_MODES:
        raise ValueError(f"planner demos convert into {CONVERTIBLE_MODES}, not control_mode={mode!r}")
    actions = _planner_actions(planner_env, seed)
    if actions is None:
        return None
    # every k-th joint target (and the last): the planner moves slowly, k=2 halves the demo's length
    actions = actions[int(action_stride) - 1::int(action_stride)] + ([actions[-1]] if len(actions) % int(action_stride) else [])
    if env.unwrapped_env is None:
        env.reset()  # builds the ManiSkill env
    planner_env.reset(seed=seed)
    obs, _ = env.unwrapped_env.reset(seed=seed)
    env.start_reward_clip()  # a clip's history starts with this episode
    recorder = _TransitionRecorder(env, obs, with_images)
    from_pd_joint_pos(mode, actions, planner_env.unwrapped, recorder)
    if not recorder.rows:
        return None
    hold = np.zeros_like(recorder.rows[-1]['action'])
    hold[-1] = recorder.rows[-1]['action'][-1]  # keep the gripper command (closed on the cube)
    for _ in range(int(hold_steps)):
        recorder.step(hold)
    return _episode_arrays(recorder.rows, seed, with_images)


def _episode_arrays(rows: List[Dict[str, Any]], seed: int, with_images: bool) -> Optional[Dict[str, np.ndarray]]:
    if not rows or not rows[-1]['success']:
        return None
    episode = {k: np.stack([r[k] for r in rows]) for k in ('obs', 'action', 'next_obs')}
    episode['reward'] = np.asarray([r['reward'] for r in rows], np.float32)
    episode['success'] = np.asarray([r['success'] for r in rows], bool)
    episode['done'] = np.zeros(len(rows), bool)
    episode['done'][-1] = True
    episode['seed'] = np.asarray(seed)
    if with_images:
        episode['image'] = np.stack([r['image'] for r in rows])
        episode['image_step'] = np.arange(len(rows))
        if 'reward_state' in rows[0]:
            episode['reward_state'] = np.stack([r['reward_state'] for r in rows])
    return episode


def make_planner_env(env_cfg: Dict[str, Any]) -> gymnasium.Env:
    """The env the planner plans in: same task, absolute joint targets, nothing rendered."""
    import mani_skill.envs  # noqa: F401
    return gymnasium.make(env_cfg['env_id'], obs_mode='state', control_mode=PLANNER_CONTROL_MODE,
                          sim_backend='cpu', render_backend='none', max_episode_steps=10 ** 6)


def _position(pose: Any) -> np.ndarray:
    return pose.p[0].cpu().numpy() if hasattr(pose.p, 'cpu') else np.asarray(pose.p).reshape(-1)


def toward(tcp: np.ndarray, target: np.ndarray, grip: float, gain: float = 10.0) -> np.ndarray:
    """The ``pd_ee_delta_pos`` action that moves the TCP towards ``target`` (proportional, clipped to [-1, 1])."""
    return np.concatenate([np.clip((target - tcp) * gain, -1, 1), [grip]]).astype(np.float32)


def pickcube_expert_action(base: Any, gain: float = 10.0, goal: Optional[np.ndarray] = None) -> np.ndarray:
    """A closed-loop PickCube expert for ``pd_ee_delta_pos`` (xyz deltas in [-1, 1] = +-10 cm, gripper 1 open / -1
    closed), a function of the current state only: above the cube, down, close, carry to the goal (or to ``goal``
    when given), stay there."""
    tcp, cube = _position(base.agent.tcp.pose), _position(base.cube.pose)
    goal = _position(base.goal_site.pose) if goal is None else np.asarray(goal, np.float64)

    def move(target: np.ndarray, grip: float) -> np.ndarray:
        return toward(tcp, target, grip, gain)

    if bool(_item(base.agent.is_grasping(base.cube))):
        return move(goal, -1.0)
    dist_xy = np.linalg.norm(tcp[:2] - cube[:2])
    if dist_xy > 0.03:  # above the cube first, never through it
        return move(np.array([cube[0], cube[1], max(cube[2] + 0.05, tcp[2])]), 1.0)
    if dist_xy > 0.01:
        return move(np.array([cube[0], cube[1], cube[2] + 0.03]), 1.0)
    if tcp[2] - cube[2] > 0.005:
        return move(cube, 1.0)
    return move(cube, -1.0)


def record_scripted_episode(env: ManiSkillEnv, seed: int, episode_steps: int = 50,
                            with_images: bool = True) -> Optional[Dict[str, np.ndarray]]:
    """One episode of ``pickcube_expert_action`` from the initial state of ``seed`` (``pd_ee_delta_pos`` only): every
    step recorded as in ``record_demo_episode``; None when it does not end in success."""
    if env._cfg.control_mode != 'pd_ee_delta_pos':
        raise ValueError(f"the scripted PickCube expert acts in pd_ee_delta_pos, not {env._cfg.control_mode!r}")
    if env.unwrapped_env is None:
        env.reset()
    obs, _ = env.unwrapped_env.reset(seed=seed)
    env.start_reward_clip()  # a clip's history starts with this episode
    recorder = _TransitionRecorder(env, obs, with_images)
    base = env.unwrapped_env.unwrapped
    for _ in range(int(episode_steps)):
        recorder.step(pickcube_expert_action(base))
    return _episode_arrays(recorder.rows, seed, with_images)
