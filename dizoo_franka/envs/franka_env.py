"""``FrankaEnv``: a Franka arm (FR3 / Panda) driven through franky-control, as a DI-engine env.

**Task: peg insertion.** The peg is held by (in the sim cell: attached to) the hand; the policy moves the TCP
with Cartesian steps until the peg sits in the hole, which is the TCP pose ``target_ee_pose``.

**Randomisations.** At reset the TCP goes to ``reset_ee_pose`` plus a uniform offset within
``+-reset_random_xyz`` per axis (drawn from the env's seeded RNG), clipped into the safety box.

**Success conditions.** The TCP is within ``success_pos_tol`` metres and ``success_rot_tol`` radians of
``target_ee_pose`` (``info['at_target']``) for ``success_hold_steps`` consecutive steps (``info['success']``).
The episode ends on success (``terminate_on_success``), at ``max_episode_steps`` (truncated), or when franky
reports a control error (truncated, after ``recover_from_errors``; the error text is ``info['error']``). Without
a pose oracle (real hardware), ``terminate_on_learned_success`` ends it when a success classifier sees success in
``success_hold_steps`` consecutive frames (``info['learned_success']``, ``info['learned_success_prob']``).

Actions, in [-1, 1]: [dx, dy, dz] (+ [drx, dry, drz] with ``use_rotation``) (+ [gripper] with ``use_gripper``).
Steps are scaled by ``action_scale`` (metres) / ``rotation_scale`` (radians) and added to the measured TCP pose;
the target is clipped into the safety box (``ee_pose_limit_min`` / ``_max``, and ``max_rotation_from_reset``)
less ``braking_margin`` on every face BEFORE it is sent. The margin is the braking distance at the step dynamics
(``max_tcp_speed``, franky's acceleration and jerk limits times ``step_dynamics_factor``; 9 mm at the defaults),
so the commanded trajectory stays in the box even when a new step replaces a motion still running towards a
face. The step actually sent is ``info['action_sent']`` (same units as the action, after
clipping), with the commanded pose in ``info['target_pose']``. A NaN or inf action raises ValueError and sends
nothing. Each step sends one asynchronous Cartesian motion and then waits for the next tick of ``control_hz``.

Observations: ``obs_mode='state'`` gives a flat float32 vector (``STATE_KEYS``: TCP position, TCP quaternion
xyzw in the reset orientation's hemisphere, TCP linear and angular velocity, the estimated external force on the
TCP, gripper width; ``dizoo_franka.envs.franky_arm``);
``obs_mode='state_image'`` gives ``dict(state=..., image=CxHxW uint8)`` (``obs_image_size``, default
``image_size``). Every step puts the camera frame (HxWx3
uint8 at ``image_size``) in ``info['reward_image']`` and the success flag in ``info['success']``, which is what
the project's image reward models and RewardMonitor read.
"""
import time
import uuid
from typing import Any, Dict, Optional, Tuple

import gym
import numpy as np
from ding.envs import BaseEnvTimestep
from ding.utils import ENV_REGISTRY
from scipy.spatial.transform import Rotation

from ding_ext.configured_env import ConfiguredEnv
from ding_ext.learned_success import LearnedSuccess

from . import connections
from .cameras import Camera, make_camera, resize_rgb
from .franky_arm import LOST_CONNECTION_ERRORS, STATE_DIM, STATE_KEYS, FrankyArm, is_control_error
from .safety import SafetyBox, check_finite_action, rotation_angle

OBS_MODES = ('state', 'state_image')


@ENV_REGISTRY.register('franka')
class FrankaEnv(ConfiguredEnv):
    """Franka peg insertion over franky (real robot or the franky-sim cell); see the module docstring."""

    config = dict(
        # (str) Robot (FCI) address; the sim cell prints its own in its READY line.
        robot_ip='172.16.0.2',
        # (str) 'enforce' on a real-time robot PC; 'ignore' for the sim cell or a PC without a realtime kernel.
        realtime_config='enforce',
        # (int) Policy steps per second (wall clock).
        control_hz=10,
        # (float) Metres per unit of translation action per step.
        action_scale=0.02,
        # (bool) Add [drx, dry, drz] rotation-vector steps (base frame) to the action.
        use_rotation=False,
        # (float) Radians per unit of rotation action per step.
        rotation_scale=0.05,
        # (bool) Add a gripper action: -1 closed ... +1 open (GRIPPER_MAX_WIDTH).
        use_gripper=True,
        # (float) A gripper command is sent only when the requested width moves more than this (m).
        gripper_deadband=0.005,
        # (float) Gripper speed (m/s).
        gripper_speed=0.05,
        # (list) Safety box for the TCP position [x, y, z] (m, base frame); every target is clipped into it.
        ee_pose_limit_min=[0.40, -0.10, 0.10],
        # (list) Upper corner of the safety box [x, y, z].
        ee_pose_limit_max=[0.70, 0.25, 0.45],
        # (float) Largest rotation away from the reset orientation, per rotation-vector component (rad).
        max_rotation_from_reset=0.3,
        # (list) Reset TCP pose [x, y, z, rx, ry, rz] (m, rotation vector in rad).
        reset_ee_pose=[0.55, 0.08, 0.25, np.pi, 0.0, 0.0],
        # (list) Uniform random offset (+-, m per axis) added to the reset position.
        reset_random_xyz=[0.0, 0.0, 0.0],
        # (float) Reset waits (up to 10 s) until the measured TCP is this close to each reset target (m).
        reset_settle_tol=0.002,
        # (float) Gripper width at reset (m).
        reset_gripper_width=0.04,
        # (float) Speed factor (0, 1] of franky's velocity/acceleration/jerk limits for the reset motion.
        reset_dynamics_factor=0.1,
        # (float) Acceleration and jerk factor (0, 1] of franky's limits for the policy's steps.
        step_dynamics_factor=0.3,
        # (float) Top speed of the TCP during the policy's steps (m/s); the commanded targets keep the braking
        # distance at this speed (and the step acceleration and jerk) from every face of the safety box.
        max_tcp_speed=0.25,
        # (list) TCP pose [x, y, z, rx, ry, rz] with the peg inserted (sim cell: 3 cm deep in the hole).
        target_ee_pose=[0.55, 0.08, 0.12, np.pi, 0.0, 0.0],
        # (float) Position tolerance of success (m).
        success_pos_tol=0.005,
        # (float) Orientation tolerance of success (rad).
        success_rot_tol=0.1,
        # (int) Consecutive steps within tolerance that make a success.
        success_hold_steps=20,
        # (bool) End the episode at success.
        terminate_on_success=True,
        # (bool) End the episode when the learned classifier (``learned_success_checkpoint``) sees success in
        # ``success_hold_steps`` consecutive frames: on hardware without a pose oracle (RLinf, HIL-SERL do so).
        terminate_on_learned_success=False,
        # (str) Classifier checkpoint (ding_ext's train_reward_model) for terminate_on_learned_success.
        learned_success_checkpoint=None,
        # (float) Its success threshold; None: the checkpoint's calibrated_threshold, else 0.5.
        learned_success_threshold=None,
        # (int) Episode length after which the episode is truncated.
        max_episode_steps=200,
        # (dict) Camera: type sim | opencv | realsense and its arguments (see cameras.make_camera).
        camera=dict(type='sim', host='127.0.0.1', port=0),
        # (list) Image size [C, H, W] of the observation image and info['reward_image']; C must be 3.
        image_size=[3, 128, 128],
        # (list|None) Size [3, H, W] of the observation image alone (obs_mode 'state_image'), e.g. smaller than
        # image_size to keep a replay buffer of image observations small; None: image_size.
        obs_image_size=None,
        # (str) 'state' (flat float32 vector) or 'state_image' (dict(state, image)).
        obs_mode='state_image',
        # (int) Number of collector envs (a real robot: 1, with the 'base' env manager).
        collector_env_num=1,
        # (int) Number of evaluator envs.
        evaluator_env_num=1,
    )

    def __init__(self, cfg: Optional[dict] = None) -> None:
        self._cfg = cfg = self.merge_config(cfg)
        if cfg.obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {cfg.obs_mode!r}")
        if len(cfg.image_size) != 3 or int(cfg.image_size[0]) != 3:
            raise ValueError(f"image_size must be [3, H, W], got {cfg.image_size!r}")
        if str(cfg.realtime_config).lower() not in ('enforce', 'ignore'):
            raise ValueError(f"realtime_config must be 'enforce' or 'ignore', got {cfg.realtime_config!r}")
        self.safety_box = SafetyBox(cfg.ee_pose_limit_min, cfg.ee_pose_limit_max, cfg.max_rotation_from_reset)
        if not 0 < float(cfg.step_dynamics_factor) <= 1 or not 0 < float(cfg.reset_dynamics_factor) <= 1:
            raise ValueError("step_dynamics_factor and reset_dynamics_factor must be in (0, 1], got "
                             f"{cfg.step_dynamics_factor} and {cfg.reset_dynamics_factor}")
        if float(cfg.max_tcp_speed) <= 0:
            raise ValueError(f"max_tcp_speed must be positive (m/s), got {cfg.max_tcp_speed}")
        self.arm = self._own_arm()
        self._set_command_box()
        self._reset_pos, self._reset_rot = _pose_from_config(cfg.reset_ee_pose, 'reset_ee_pose')
        self._target_pos, self._target_rot = _pose_from_config(cfg.target_ee_pose, 'target_ee_pose')
        self._action_dim = 3 + 3 * bool(cfg.use_rotation) + bool(cfg.use_gripper)
        self._action_space = gym.spaces.Box(-1.0, 1.0, shape=(self._action_dim, ), dtype=np.float32)
        if cfg.obs_image_size is not None and (len(cfg.obs_image_size) != 3 or int(cfg.obs_image_size[0]) != 3):
            raise ValueError(f"obs_image_size must be [3, H, W] or None, got {cfg.obs_image_size!r}")
        _, height, width = (int(v) for v in (cfg.obs_image_size or cfg.image_size))
        state_space = gym.spaces.Box(-np.inf, np.inf, shape=(STATE_DIM, ), dtype=np.float32)
        if cfg.obs_mode == 'state':
            self._observation_space = state_space
        else:
            image_space = gym.spaces.Box(0, 255, shape=(3, height, width), dtype=np.uint8)
            self._observation_space = gym.spaces.Dict(dict(state=state_space, image=image_space))
        self._reward_space = gym.spaces.Box(-np.inf, np.inf, shape=(1, ), dtype=np.float32)
        self.learned_success = LearnedSuccess(
            cfg.learned_success_checkpoint, cfg.success_hold_steps, cfg.learned_success_threshold
        ) if cfg.terminate_on_learned_success else None
        self.camera: Optional[Camera] = None
        self._connection: Optional[connections.SharedConnection] = None
        self._rng = np.random.RandomState()
        self._last_obs = self._last_pose = self._last_image = None
        self._next_tick = 0.0
        self._episode_id = None
        self._episode_len = 0
        self._episode_return = 0.0
        self._hold_count = 0
        self._success_once = False

    def _own_arm(self) -> FrankyArm:
        """A (not yet connected) arm with this env's settings."""
        c = self._cfg
        return FrankyArm(c.robot_ip, c.realtime_config, c.use_gripper, c.step_dynamics_factor, c.max_tcp_speed)

    @property
    def robot(self) -> Any:
        """The connected ``franky.Robot`` (None before the first reset and after a lost connection)."""
        return self.arm.robot

    def _set_command_box(self) -> None:
        """The box every target is clipped into: the safety box less the arm's braking distance at the step
        dynamics (``braking_margin``, metres)."""
        self.braking_margin = self.arm.braking_margin
        self.command_box = self.safety_box.shrunk(self.braking_margin)

    # ------------------------------------------------------------------ connection
    def connect(self) -> None:
        """Connect robot, gripper and camera (done by the first reset; nothing touches hardware before). Envs of one
        process share them (``connections``: a collector's and an evaluator's env take turns on one arm)."""

        def open_connection():
            self.arm.connect()
            return self.arm, make_camera(self._cfg.camera)

        self._connection = connections.acquire(self._cfg.robot_ip, self, open_connection)
        self.arm, self.camera = self._connection.arm, self._connection.camera
        self._set_command_box()

    def _drop_connection(self) -> None:
        """Forget robot, gripper and camera after a lost connection (nothing is sent to them any more)."""
        connections.drop(self._cfg.robot_ip)
        if self.camera is not None:
            try:
                self.camera.close()
            except OSError:
                pass
        self.arm.drop()
        self.camera = None

    def close(self) -> None:
        if self.arm.connected and not connections.release(self._cfg.robot_ip, self):
            self.arm, self.camera = self._own_arm(), None  # another env still drives them
            return
        self.arm.close()
        if self.camera is not None:
            self.camera.close()
        self.camera = None

    # ------------------------------------------------------------------ DI-engine interface
    def seed(self, seed: int, dynamic_seed: bool = True) -> None:
        self._rng = np.random.RandomState(int(seed))
        self._action_space.seed(int(seed))

    def reset(self) -> Any:
        if not self.arm.connected:
            try:
                self.connect()
            except LOST_CONNECTION_ERRORS as e:
                self._drop_connection()
                raise ConnectionError(f"cannot connect to the robot at {self._cfg.robot_ip} or its camera "
                                      f"({type(e).__name__}: {e})") from e
        connections.take_turn(self._connection, self)
        if self.robot.has_errors:
            self.robot.recover_from_errors()
        offset = self._rng.uniform(-1.0, 1.0, size=3) * np.asarray(self._cfg.reset_random_xyz, dtype=np.float64)
        goal = self.command_box.clip_position(self._reset_pos + offset)
        self.arm.use_dynamics(float(self._cfg.reset_dynamics_factor))
        pos, _ = self.arm.measured_pose()
        tol = float(self._cfg.reset_settle_tol)
        if pos[2] < goal[2]:  # lift straight up first: never drag a peg sideways out of the hole
            self.arm.move_to(np.array([pos[0], pos[1], goal[2]]), self._reset_rot, self.command_box, False, tol)
        self.arm.move_to(goal, self._reset_rot, self.command_box, False, tol)
        self.arm.move_gripper(self._cfg.reset_gripper_width, self._cfg.gripper_speed)
        self.arm.use_dynamics()
        self._episode_id = f"franka-{uuid.uuid4().hex[:10]}"
        self._episode_len = 0
        self._episode_return = 0.0
        self._hold_count = 0
        if self.learned_success is not None:
            self.learned_success.reset()
        self._success_once = False
        self._next_tick = time.monotonic() + 1.0 / float(self._cfg.control_hz)
        obs, _ = self._observe()
        return obs

    def step(self, action: np.ndarray) -> BaseEnvTimestep:
        assert self.arm.connected, "call reset() before step()"
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self._action_dim, ):
            raise ValueError(f"action must have {self._action_dim} entries, got shape {action.shape}")
        check_finite_action(action)
        if not connections.take_turn(self._connection, self):
            return self._turn_lost()
        action = np.clip(action, -1.0, 1.0)
        info: Dict[str, Any] = {}
        error = None
        try:
            try:
                sent = self._send_action(action, info)
                time.sleep(max(0.0, self._next_tick - time.monotonic()))
                self.arm.poll()
            except Exception as e:  # noqa: BLE001  (franky's control errors; the rest is raised again)
                if not is_control_error(e):
                    raise
                # a reflex, a rejected command or a failed trajectory plan: the motion stopped; recover and end
                # the episode (truncated)
                error = f"{type(e).__name__}: {e}"
                info['recovered'] = self.arm.recover()
                sent = np.zeros_like(action) if 'action_sent' not in info else info['action_sent']
            obs, (pos, rot) = self._observe(info)
        except LOST_CONNECTION_ERRORS + (RuntimeError, ) as e:
            if isinstance(e, RuntimeError) and 'Net' not in str(e):  # franky raises Poco's "Net Exception" as such
                raise
            error = (f"lost the connection to the robot at {self._cfg.robot_ip} or its camera "
                     f"({type(e).__name__}: {e}); the episode ends here, the next reset() reconnects")
            info['connection_lost'] = True
            self._drop_connection()
            sent = np.zeros_like(action)
            obs, (pos, rot) = self._last_obs, self._last_pose
            info['reward_image'] = self._last_image
        self._next_tick = max(self._next_tick + 1.0 / float(self._cfg.control_hz), time.monotonic())
        self._episode_len += 1
        at_target = bool(
            np.linalg.norm(pos - self._target_pos) <= float(self._cfg.success_pos_tol)
            and rotation_angle(rot, self._target_rot) <= float(self._cfg.success_rot_tol)
        )
        self._hold_count = self._hold_count + 1 if at_target else 0
        success = self._hold_count >= int(self._cfg.success_hold_steps)
        self._success_once = self._success_once or success
        reward = float(success)
        self._episode_return += reward
        terminated = success and bool(self._cfg.terminate_on_success)
        if self.learned_success is not None and 'connection_lost' not in info:
            prob, hold, learned = self.learned_success.update(info['reward_image'])
            info.update(learned_success_prob=prob, learned_hold_steps=hold, learned_success=learned)
            terminated = terminated or learned
        truncated = (error is not None or self._episode_len >= int(self._cfg.max_episode_steps)) and not terminated
        done = terminated or truncated
        info.update(
            action_sent=np.asarray(sent, dtype=np.float32),
            at_target=at_target,
            hold_steps=self._hold_count,
            success=success,
            success_once=self._success_once,
            episode_len=self._episode_len,
            terminated=terminated,
            truncated=truncated,
            frame_info=dict(episode_id=self._episode_id, step=self._episode_len, at_target=at_target,
                            target_dist=round(float(np.linalg.norm(pos - self._target_pos)), 5)),
        )
        if error is not None:
            info['error'] = error
        if done:
            info['eval_episode_return'] = self._episode_return
            info['episode_info'] = dict(success=float(success), success_once=float(self._success_once))
        return BaseEnvTimestep(obs, np.array([reward], dtype=np.float32), done, info)

    def _turn_lost(self) -> BaseEnvTimestep:
        """The last step of an episode whose arm another env of this process drove since its previous step (an
        evaluation between two collection calls): nothing is sent, the observation stays the last one, truncated."""
        self._episode_len += 1
        error = "another env of this process drove the arm since this episode's last step; the episode ends here"
        info = dict(action_sent=np.zeros(self._action_dim, dtype=np.float32), at_target=False, hold_steps=0,
                    success=False, success_once=self._success_once, episode_len=self._episode_len, terminated=False,
                    truncated=True, error=error, reward_image=self._last_image,
                    eval_episode_return=self._episode_return,
                    frame_info=dict(episode_id=self._episode_id, step=self._episode_len, at_target=False),
                    episode_info=dict(success=0.0, success_once=float(self._success_once)))
        return BaseEnvTimestep(self._last_obs, np.zeros(1, dtype=np.float32), True, info)

    # ------------------------------------------------------------------ commands and observations
    def _send_action(self, action: np.ndarray, info: Dict[str, Any]) -> np.ndarray:
        """Clip the commanded pose into the safety box, send it, and return the action actually sent."""
        pos, rot = self.arm.measured_pose()
        target_pos = pos + action[:3] * float(self._cfg.action_scale)
        if self._cfg.use_rotation:
            target_rot = Rotation.from_rotvec(action[3:6] * float(self._cfg.rotation_scale)) * rot
        else:
            target_rot = self._reset_rot
        target_pos, target_rot, clipped = self.command_box.clip_pose(target_pos, target_rot, self._reset_rot)
        sent = np.zeros_like(action)
        sent[:3] = (target_pos - pos) / float(self._cfg.action_scale)
        if self._cfg.use_rotation:
            sent[3:6] = (target_rot * rot.inv()).as_rotvec() / float(self._cfg.rotation_scale)
        info.update(target_pose=np.concatenate([target_pos, target_rot.as_quat()]).astype(np.float32),
                    clipped=clipped, action_sent=sent)
        self.arm.move_to(target_pos, target_rot, self.command_box, asynchronous=True)
        if self._cfg.use_gripper:
            sent[-1] = self.arm.command_gripper(action[-1], float(self._cfg.gripper_speed),
                                                float(self._cfg.gripper_deadband))
        return sent

    def robot_state(self) -> Dict[str, np.ndarray]:
        """The measured state, one entry per ``STATE_KEYS`` name (quaternion in the reset orientation's
        hemisphere)."""
        return self.arm.state(self._reset_rot)

    def _observe(self, info: Optional[Dict[str, Any]] = None) -> Tuple[Any, Tuple[np.ndarray, Rotation]]:
        state = self.robot_state()
        vector = np.concatenate([state[k] for k in STATE_KEYS]).astype(np.float32)
        _, height, width = (int(v) for v in self._cfg.image_size)
        image = resize_rgb(self.camera.read(), height, width)
        if info is not None:
            info['reward_image'] = image
        pose = (np.asarray(state['tcp_pos'], dtype=np.float64), Rotation.from_quat(state['tcp_quat']))
        if self._cfg.obs_mode == 'state':
            obs = vector
        else:
            obs_image = image
            if self._cfg.obs_image_size is not None:
                obs_image = resize_rgb(image, *self._observation_space['image'].shape[1:])
            obs = dict(state=vector, image=np.ascontiguousarray(obs_image.transpose(2, 0, 1)))
        self._last_obs, self._last_pose, self._last_image = obs, pose, image  # what a lost connection returns
        return obs, pose

    # ------------------------------------------------------------------ spaces and env configs
    @property
    def observation_space(self) -> gym.spaces.Space:
        return self._observation_space

    @property
    def action_space(self) -> gym.spaces.Space:
        return self._action_space

    @property
    def reward_space(self) -> gym.spaces.Space:
        return self._reward_space

    def random_action(self) -> np.ndarray:
        return self._action_space.sample().astype(np.float32)

    def __repr__(self) -> str:
        return f"DI-engine Franka Env(robot_ip={self._cfg.robot_ip}, control_hz={self._cfg.control_hz})"


def _pose_from_config(pose: Any, name: str) -> Tuple[np.ndarray, Rotation]:
    pose = np.asarray(pose, dtype=np.float64).reshape(-1)
    if pose.shape != (6, ) or not np.all(np.isfinite(pose)):
        raise ValueError(f"{name} must be 6 finite numbers [x, y, z, rx, ry, rz], got {pose.tolist()}")
    return pose[:3], Rotation.from_rotvec(pose[3:])
