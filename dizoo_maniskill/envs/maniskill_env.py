"""``ManiSkillEnv``: any ManiSkill3 task as a DI-engine env with state observations for the policy
and, on demand, an RGB image from one sensor camera for an image reward model.

The ManiSkill env is created with ``obs_mode='state'``, so a normal step renders nothing. The reward
image is captured only when needed (``reward_render_mode``) by rendering the chosen sensor camera of
the same scene directly (see ``render_reward_image``).

ManiSkill speaks gymnasium with batched torch tensors (batch of 1 on the CPU backend); this class
converts everything once, in ``step``, to DI-engine's gym-0.25 style
``BaseEnvTimestep(obs, reward, done, info)`` with numpy / python values.

Processes: the first picture after a process's renderer comes up costs seconds (lavapipe compiles its
pipelines); the renderer lives while any ManiSkill env with rendering is open. A renderer alive in a
parent process hangs envs in forked children: launch fork-based subprocess env managers only while no
rendering env is open in the parent (the managers' space probe here uses no renderer), or use
``context='spawn'``.
"""
import uuid
from typing import Any, Dict, List, Optional

import gym
import numpy as np
from ding.envs import BaseEnvTimestep
from ding.utils import ENV_REGISTRY

from ding_ext.configured_env import ConfiguredEnv
from ding_ext.transitions import REWARD_STATE_KEY
from ding_ext.video_frames import FrameHistory

REWARD_RENDER_MODES = ('episode_end', 'every_step', 'none')
# a cube this far (m) from the goal is "near the goal": PickCube's success radius is 2.5 cm
NEAR_GOAL_DIST = 0.05
# first reset seed of an evaluator env with vary_static_seed (far from the training seeds, seed + 100 * k < 10**5 + seed)
EVAL_SEED_BASE = 10 ** 7


def _item(x: Any) -> Any:
    """A python scalar from a ManiSkill value (batched torch tensor of one element, numpy or python)."""
    if hasattr(x, 'reshape'):
        x = x.reshape(-1)[0]
    return x.item() if hasattr(x, 'item') else x


def _to_gym_box(space: Any) -> gym.spaces.Box:
    """gymnasium Box -> gym (0.25, DI-engine's) float32 Box."""
    return gym.spaces.Box(
        low=np.asarray(space.low, dtype=np.float32),
        high=np.asarray(space.high, dtype=np.float32),
        dtype=np.float32,
    )


@ENV_REGISTRY.register('maniskill')
class ManiSkillEnv(ConfiguredEnv):
    """ManiSkill3 task with flat float32 state observations and an optional reward-camera image in
    ``timestep.info['reward_image']`` (HxWx3 uint8), with ``info['frame_info']`` (episode id, step and the
    facts behind the success label, see ``label_facts``). See ``config`` for every key."""

    OBS_MODE = 'state'

    config = dict(
        # (str) ManiSkill3 task id.
        env_id='PickCube-v1',
        # (str) ManiSkill controller; 'pd_joint_delta_pos' gives the Panda an 8-dim action in [-1, 1].
        control_mode='pd_joint_delta_pos',
        # (str) ManiSkill's env reward: dense | normalized_dense | sparse.
        reward_mode='dense',
        # (str) Physics backend; 'cpu' is one env per process (DI-engine env managers parallelise).
        sim_backend='cpu',
        # (str or None) Render backend; None keeps ManiSkill's default (falls back to CPU/lavapipe).
        render_backend=None,
        # (int) Episode length after which the episode is truncated (done=True).
        max_episode_steps=50,
        # (list) Reward image size [C, H, W] (same format as the reward model's image_size); C must be 3.
        image_size=[3, 128, 128],
        # (str) Sensor camera that renders the reward image (PickCube: 'base_camera').
        reward_camera='base_camera',
        # (dict or None) Where the reward camera looks from: dict(eye=[x, y, z], target=[x, y, z]) in metres, in the
        # scene's frame; None keeps the task's own pose for that camera.
        reward_camera_pose=None,
        # (float or None) Vertical field of view of the reward camera in radians; None keeps the task's own.
        reward_camera_fov=None,
        # (str) When to put the image into info: episode_end (only at done=True) | every_step | none.
        reward_render_mode='episode_end',
        # (int) Frames in each reward image: 1 = the current frame; k > 1 = a clip of the last k frames side by side
        # (oldest first, ``ding_ext.video_frames``), for video reward models that must see motion. k > 1 renders a
        # frame on every step and reset, whatever reward_render_mode says about emitting it.
        reward_frames=1,
        # (int) Env steps between the frames of a clip.
        reward_frame_stride=1,
        # (bool) Add the robot's arm joint velocities (rad/s, fingers excluded; a list) at each reward image's step to
        # its ``frame_info`` as ``reward_state``: what the joint-speed gate of clip reward models
        # (``still_joint_speed``) reads, as a real robot reads its joint encoders. Recorded into the dataset sidecar.
        reward_state=False,
        # (bool) Show the task's hidden goal markers (PickCube: the green goal sphere) in the reward image.
        show_goal_site=False,
        # (bool) End the episode when the task succeeds (ManiSkill's own termination). False: every episode runs
        # max_episode_steps, so a policy must reach success and stay there (a per-step success reward then counts
        # the steps spent at success, and no env signal other than the reward tells the learner about success).
        terminate_on_success=True,
        # (bool) With seed(seed, dynamic_seed=False) (DI-engine's evaluator): False resets to the same initial state
        # every episode (DI-engine's convention); True walks a fixed sequence of seeds (EVAL_SEED_BASE +
        # 1000 * seed + k for the k-th reset), so n evaluation episodes cover n initial states, the same in every run.
        vary_static_seed=False,
        # (int) Number of collector envs returned by ``create_collector_env_cfg``.
        collector_env_num=1,
        # (int) Number of evaluator envs returned by ``create_evaluator_env_cfg``.
        evaluator_env_num=1,
    )

    def __init__(self, cfg: Optional[dict] = None) -> None:
        self._cfg = self.merge_config(cfg)
        if self._cfg.reward_render_mode not in REWARD_RENDER_MODES:
            raise ValueError(
                f"reward_render_mode must be one of {REWARD_RENDER_MODES}, got {self._cfg.reward_render_mode!r}"
            )
        if len(self._cfg.image_size) != 3 or int(self._cfg.image_size[0]) != 3:
            raise ValueError(f"image_size must be [3, H, W], got {self._cfg.image_size!r}")
        self._frames = FrameHistory(self._cfg.reward_frames, self._cfg.reward_frame_stride)
        self._env = None  # the gymnasium ManiSkill env, created on the first reset()
        self._observation_space = None
        self._action_space = None
        self._reward_space = gym.spaces.Box(low=-np.inf, high=np.inf, shape=(1, ), dtype=np.float32)
        self._seed = None
        self._dynamic_seed = True
        self._seed_rng = None
        self._reset_count = 0
        self._episode_return = 0.0
        self._episode_len = 0
        self._success_once = False
        self._episode_id = None

    # ------------------------------------------------------------------ creation / spaces
    def _make_env(self, render: bool = True):
        import gymnasium
        import mani_skill.envs  # noqa: F401  (registers the ManiSkill task ids with gymnasium)

        _, height, width = (int(v) for v in self._cfg.image_size)
        kwargs = dict(
            obs_mode=self.OBS_MODE,
            control_mode=self._cfg.control_mode,
            reward_mode=self._cfg.reward_mode,
            sim_backend=self._cfg.sim_backend,
            max_episode_steps=int(self._cfg.max_episode_steps),
            # only the reward camera is resized; in state obs mode no camera renders unless asked to
            sensor_configs={self._cfg.reward_camera: self._camera_config(width, height)},
        )
        if not render:
            kwargs['render_backend'] = 'none'
        elif self._cfg.render_backend is not None:
            kwargs['render_backend'] = self._cfg.render_backend
        try:
            env = gymnasium.make(self._cfg.env_id, **kwargs)
        except AttributeError as e:
            # ManiSkill reads an unknown camera name as a (nonexistent) global camera attribute
            raise ValueError(
                f"reward_camera {self._cfg.reward_camera!r} is not a sensor camera of {self._cfg.env_id}"
            ) from e
        base = env.unwrapped
        if self._observation_space is None:
            self._observation_space = _to_gym_box(base.single_observation_space)
            self._action_space = _to_gym_box(base.single_action_space)
            if self._seed is not None:
                self._action_space.seed(self._seed)
        return env

    def _camera_config(self, width: int, height: int) -> Dict[str, Any]:
        camera = dict(width=width, height=height)
        pose = self._cfg.reward_camera_pose
        if pose is not None:
            if set(pose) != {'eye', 'target'} or any(len(pose[k]) != 3 for k in pose):
                raise ValueError(f"reward_camera_pose must be dict(eye=[x, y, z], target=[x, y, z]), got {pose!r}")
            if np.allclose(pose['eye'], pose['target']):
                raise ValueError(f"reward_camera_pose: eye and target are the same point {list(pose['eye'])}")
            from mani_skill.utils import sapien_utils
            camera['pose'] = sapien_utils.look_at(eye=list(pose['eye']), target=list(pose['target']))
        fov = self._cfg.reward_camera_fov
        if fov is not None:
            if not 0.0 < float(fov) < np.pi:
                raise ValueError(f"reward_camera_fov must be in (0, pi) radians, got {fov!r}")
            camera['fov'] = float(fov)
        return camera

    def _ensure_spaces(self) -> None:
        # DI-engine env managers read the spaces from an env that was never reset: build them from a
        # temporary ManiSkill env without renderer and cache them (plain gym objects, safe to pickle).
        # No renderer: a Vulkan (lavapipe) device made in the parent hangs forked subprocess envs.
        if self._observation_space is None:
            self._make_env(render=False).close()

    @property
    def observation_space(self) -> gym.spaces.Space:
        self._ensure_spaces()
        return self._observation_space

    @property
    def action_space(self) -> gym.spaces.Space:
        self._ensure_spaces()
        return self._action_space

    @property
    def reward_space(self) -> gym.spaces.Space:
        return self._reward_space

    @property
    def unwrapped_env(self):
        """The ManiSkill gymnasium env (None before the first reset)."""
        return self._env

    # ------------------------------------------------------------------ DI-engine interface
    def seed(self, seed: int, dynamic_seed: bool = True) -> None:
        """DI-engine convention: with ``dynamic_seed`` every reset uses ``seed + 100 * randint(1, 1000)``
        (drawn from a numpy RNG seeded with ``seed``, so the sequence is reproducible); without it every
        reset reuses ``seed`` (same initial state every episode)."""
        self._seed = int(seed)
        self._dynamic_seed = dynamic_seed
        self._seed_rng = np.random.RandomState(self._seed)
        self._reset_count = 0
        if self._action_space is not None:
            self._action_space.seed(self._seed)

    def reset(self) -> np.ndarray:
        if self._env is None:
            self._env = self._make_env()
        reset_seed = None
        if self._seed is not None:
            reset_seed = self._seed
            if self._dynamic_seed:
                reset_seed += 100 * int(self._seed_rng.randint(1, 1000))
            elif self._cfg.vary_static_seed:
                reset_seed = EVAL_SEED_BASE + 1000 * self._seed + self._reset_count
            self._reset_count += 1
            self._action_space.seed(reset_seed)
        obs, _ = self._env.reset(seed=reset_seed)
        # unique across env processes and restarts; the dataset splits train/val by it
        self._episode_id = f"s{reset_seed}-{uuid.uuid4().hex[:10]}"
        self._episode_return = 0.0
        self._episode_len = 0
        self._success_once = False
        self.start_reward_clip()
        return self._to_obs(obs)

    def step(self, action: np.ndarray) -> BaseEnvTimestep:
        assert self._env is not None, "call reset() before step()"
        action = np.asarray(action, dtype=np.float32).reshape(self._action_space.shape)
        obs, reward, terminated, truncated, ms_info = self._env.step(action)
        # the one conversion boundary: batched torch tensors -> numpy / python scalars
        reward = float(_item(reward))
        terminated = bool(_item(terminated)) and bool(self._cfg.terminate_on_success)
        truncated = bool(_item(truncated))
        success = bool(_item(ms_info['success'])) if 'success' in ms_info else False
        done = terminated or truncated
        self._episode_len += 1
        self._episode_return += reward
        self._success_once = self._success_once or success
        info = dict(
            success=success,
            success_once=self._success_once,
            episode_len=self._episode_len,
            terminated=terminated,
            truncated=truncated,
        )
        if done:
            info['eval_episode_return'] = self._episode_return
            # DI-engine's evaluator averages these over its episodes (eval info 'success_mean', ...)
            info['episode_info'] = dict(success=float(success), success_once=float(self._success_once))
        mode = self._cfg.reward_render_mode
        emit = mode == 'every_step' or (mode == 'episode_end' and done)
        if emit or self.renders_every_step:
            image = self.render_reward_image()
        if emit:
            info['reward_image'] = image
            # what the dataset sidecar records next to the image
            info['frame_info'] = dict(episode_id=self._episode_id, step=self._episode_len, **self.label_facts(ms_info))
        return BaseEnvTimestep(self._to_obs(obs), np.array([reward], dtype=np.float32), done, info)

    @property
    def renders_every_step(self) -> bool:
        """True when reward images are clips, whose earlier frames must be rendered as the episode goes."""
        return int(self._cfg.reward_frames) > 1

    def start_reward_clip(self) -> None:
        """Forget the previous episode's frames (and, for clips, render the start frame); ``reset`` calls it, and so
        must code that resets the ManiSkill env directly."""
        self._frames.clear()
        if self.renders_every_step:
            self.render_reward_image()

    def render_reward_image(self) -> np.ndarray:
        """The reward image of the current state: with ``reward_frames`` 1 the RGB uint8 HxWx3 frame from
        ``reward_camera`` at ``image_size``; with k > 1 the clip of the last k frames ``reward_frame_stride`` steps
        apart ending at this one, H x (k*W) x 3. Call it once per step (it adds the frame to the clip history).

        The env runs in state obs mode, so nothing is rendered by ``step``; here the camera's scene is
        updated and that one camera takes a picture. ManiSkill's hidden objects (goal markers) are
        hidden or shown according to ``show_goal_site``."""
        assert self._env is not None, "call reset() before render_reward_image()"
        base = self._env.unwrapped
        for obj in base._hidden_objects:
            if self._cfg.show_goal_site:
                obj.show_visual()
            else:
                obj.hide_visual()
        base.scene.update_render(update_sensors=True, update_human_render_cameras=False)
        camera = base.scene.sensors[self._cfg.reward_camera]
        camera.capture()
        rgb = camera.get_obs(rgb=True, depth=False, position=False, segmentation=False)['rgb']
        self._frames.push(np.ascontiguousarray(rgb[0].cpu().numpy(), dtype=np.uint8))
        return self._frames.clip()

    def random_action(self) -> np.ndarray:
        return self.action_space.sample().astype(np.float32)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env = None

    @classmethod
    def create_evaluator_env_cfg(cls, cfg: dict) -> List[dict]:
        # the evaluator judges by the env's success flag: its envs render no reward images, not even a clip's frames
        return [dict(c, reward_render_mode='none', reward_frames=1)
                for c in cls.replicate_config(cfg, 'evaluator_env_num')]

    def label_facts(self, ms_info: Dict[str, Any]) -> Dict[str, Any]:
        """Facts behind the env's success label for the current state, for the dataset sidecar.

        The boolean flags of ManiSkill's ``evaluate()`` (PickCube: ``is_obj_placed``, ``is_robot_static``,
        ``is_grasped``); ``arm_speed``, the largest arm joint speed (rad/s) that ``is_robot_static`` thresholds
        (PickCube: 0.2), and ``arm_qpos``, the arm's joint positions (rad; what an ideal observer of the frames could
        know); with ``reward_state`` the arm joint velocities as ``reward_state``; for tasks with a ``cube`` and a ``goal_site`` the cube-to-goal distance in metres
        and a ``phase``: at_goal_static (success) | at_goal_moving (cube at the goal, arm moving: a
        single frame cannot tell) | near_goal (within 5 cm) | transport (grasped) | approach."""
        facts: Dict[str, Any] = {}
        for key, value in ms_info.items():
            if key.startswith('is_'):
                v = _item(value)
                if isinstance(v, (bool, np.bool_)):
                    facts[key] = bool(v)
        base = self._env.unwrapped
        robot = getattr(getattr(base, 'agent', None), 'robot', None)
        if robot is not None and hasattr(base.agent, 'is_static'):
            # what ManiSkill's is_static(threshold) compares: the largest arm joint speed (rad/s; fingers excluded)
            qvel = self.arm_joint_velocities()
            facts['arm_speed'] = float(np.abs(qvel).max()) if qvel.size else 0.0  # unrounded: compared with 0.2
            facts['arm_qpos'] = [round(float(q), 6) for q in robot.get_qpos().reshape(-1).cpu().numpy()[:-2]]
            if self._cfg.reward_state:
                facts[REWARD_STATE_KEY] = [round(float(v), 6) for v in qvel]
        if hasattr(base, 'cube') and hasattr(base, 'goal_site'):
            dist = float(np.linalg.norm((base.goal_site.pose.p - base.cube.pose.p).reshape(-1).cpu().numpy()))
            facts['cube_goal_dist'] = round(dist, 5)
            success = bool(_item(ms_info.get('success', False)))
            if success:
                phase = 'at_goal_static'
            elif facts.get('is_obj_placed'):
                phase = 'at_goal_moving'
            elif dist <= NEAR_GOAL_DIST:
                phase = 'near_goal'
            elif facts.get('is_grasped'):
                phase = 'transport'
            else:
                phase = 'approach'
            facts['phase'] = phase
        return facts

    def arm_joint_velocities(self) -> np.ndarray:
        """The arm's joint velocities (rad/s, the two finger joints excluded), float32: what ManiSkill's
        ``is_static`` compares and what ``reward_state`` emits."""
        qvel = self._env.unwrapped.agent.robot.get_qvel().reshape(-1).cpu().numpy()[:-2]
        return np.asarray(qvel, dtype=np.float32)

    def _to_obs(self, obs: Any) -> np.ndarray:
        return np.asarray(obs[0].cpu().numpy(), dtype=np.float32).reshape(-1)

    def __repr__(self) -> str:
        return (
            f"DI-engine ManiSkill Env({self._cfg.env_id}, control_mode={self._cfg.control_mode}, "
            f"reward_render_mode={self._cfg.reward_render_mode})"
        )
