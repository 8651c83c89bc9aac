"""``FrankyArm``: a Franka arm and its gripper through franky-control, behind the few calls ``FrankaEnv`` makes.

It connects (robot, optional gripper), moves the TCP to absolute Cartesian targets (asynchronously for policy
steps, waiting for reset moves), reads the measured state, recovers from errors and stops. The safety box, the
clipping of targets and the episode logic live in the env; this class only knows the robot and its limits.
"""
import time
from typing import Dict, Optional, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

from .safety import SafetyBox, braking_distance


def _lost_connection_errors() -> tuple:
    """Exceptions that mean the robot or camera is gone (franky's NetworkException when franky imports)."""
    try:
        import franky
        return (franky.NetworkException, ConnectionError, OSError)
    except ImportError:
        return (ConnectionError, OSError)


LOST_CONNECTION_ERRORS = _lost_connection_errors()
PLANNER_FAILURE = 'Motion planner failed'  # franky's RuntimeError when its trajectory planner (Ruckig) fails
# franky's Cartesian translation limits: velocity (m/s), acceleration (m/s^2), jerk (m/s^3)
FRANKA_TRANSLATION_LIMITS = (1.7, 13.0, 6500.0)
GRIPPER_MAX_WIDTH = 0.08  # metres, Franka Hand
SETTLE_TIMEOUT_S = 10.0
STATE_KEYS = ('tcp_pos', 'tcp_quat', 'tcp_lin_vel', 'tcp_ang_vel', 'tcp_force', 'gripper_width')
STATE_DIM = 3 + 4 + 3 + 3 + 3 + 1


def is_control_error(error: BaseException) -> bool:
    """Whether franky raised it because the motion stopped (a reflex, a rejected command, a failed trajectory
    plan), as opposed to a lost connection (franky raises Poco's "Net Exception" as a RuntimeError)."""
    import franky
    if isinstance(error, (franky.ControlException, franky.CommandException)):
        return True
    return isinstance(error, RuntimeError) and str(error).startswith(PLANNER_FAILURE)


def _force(wrench) -> np.ndarray:
    """The force part of franky's external wrench estimate (a Wrench, or six numbers in older versions)."""
    return np.asarray(wrench.force if hasattr(wrench, 'force') else np.asarray(wrench)[:3], dtype=np.float64)


class FrankyArm:
    """One connected arm. ``step_dynamics`` (speed capped at ``max_tcp_speed``, acceleration and jerk times
    ``step_dynamics_factor``) drive the policy's steps; ``braking_margin`` is the braking distance at them."""

    def __init__(self, robot_ip: str, realtime_config: str, use_gripper: bool, step_dynamics_factor: float,
                 max_tcp_speed: float) -> None:
        self.robot_ip, self.realtime_config = robot_ip, str(realtime_config).lower()
        self.use_gripper = bool(use_gripper)
        self.step_dynamics_factor, self.max_tcp_speed = float(step_dynamics_factor), float(max_tcp_speed)
        self.robot = None  # franky.Robot
        self.gripper = None
        self.gripper_width_cmd: Optional[float] = None
        self._gripper_future = None  # the running gripper move (franky BoolFuture)
        self.set_translation_limits(*FRANKA_TRANSLATION_LIMITS)  # again with the robot's own once connected

    @property
    def connected(self) -> bool:
        return self.robot is not None

    def connect(self) -> None:
        import franky
        realtime = {'enforce': franky.RealtimeConfig.Enforce, 'ignore': franky.RealtimeConfig.Ignore}
        self.robot = franky.Robot(self.robot_ip, realtime_config=realtime[self.realtime_config])
        if self.use_gripper:
            self.gripper = franky.Gripper(self.robot_ip)
        self.set_translation_limits(
            self.robot.translation_velocity_limit.get(), self.robot.translation_acceleration_limit.get(),
            self.robot.translation_jerk_limit.get()
        )

    def set_translation_limits(self, velocity: float, acceleration: float, jerk: float) -> None:
        factor = self.step_dynamics_factor
        self.step_dynamics = (min(1.0, self.max_tcp_speed / velocity), factor, factor)
        self.braking_margin = braking_distance(velocity * self.step_dynamics[0], acceleration * factor, jerk * factor)

    def use_dynamics(self, factor: Optional[float] = None) -> None:
        """``factor`` of all franky limits (reset moves), or the step dynamics when None."""
        import franky
        self.robot.relative_dynamics_factor = (
            franky.RelativeDynamicsFactor(*self.step_dynamics) if factor is None else float(factor)
        )

    def move_to(self, position: np.ndarray, rotation: Rotation, box: SafetyBox, asynchronous: bool,
                settle_tol: float = 0.002) -> None:
        """Start a Cartesian motion to the pose (clipped into ``box``: the last line of defence, never send
        outside). Not asynchronous: wait for the motion to end and the measured TCP to come within ``settle_tol``
        metres of the target (at most SETTLE_TIMEOUT_S)."""
        import franky
        position = box.clip_position(position)
        target = franky.Affine(np.asarray(position, dtype=np.float64), rotation.as_quat())
        self.robot.move(franky.CartesianMotion(target, franky.ReferenceType.Absolute), asynchronous=asynchronous)
        if not asynchronous:  # the commanded motion has ended; the arm may still be catching up with it
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while np.linalg.norm(self.measured_pose()[0] - position) > settle_tol and time.monotonic() < deadline:
                time.sleep(0.01)

    def poll(self) -> None:
        """Raise the errors of the running motion (reflexes included)."""
        self.robot.poll_motion()

    def recover(self) -> bool:
        """``recover_from_errors``; when franky reports failure, whether the errors clear within 2 s (its state
        can lag the recovery's reply on a loaded machine)."""
        recovered = bool(self.robot.recover_from_errors())
        deadline = time.monotonic() + 2.0
        while not recovered and time.monotonic() < deadline:
            time.sleep(0.05)
            recovered = not self.robot.has_errors
        return recovered

    def move_gripper(self, width: float, speed: float) -> None:
        """Wait for a running gripper move, then move to ``width`` and wait (reset)."""
        if self.gripper is None:
            return
        if self._gripper_future is not None:
            self._gripper_future.wait(10.0)
            self._gripper_future = None
        self.gripper.move(float(width), float(speed))
        self.gripper_width_cmd = float(width)

    def command_gripper(self, command: float, speed: float, deadband: float) -> float:
        """Start a gripper move to the width of ``command`` (-1 closed ... +1 open) unless it is within
        ``deadband`` of the last one or the last move still runs (never blocks the control loop); returns the
        gripper action in effect."""
        width = (command + 1.0) / 2.0 * GRIPPER_MAX_WIDTH
        busy = self._gripper_future is not None and not self._gripper_future.wait(0.0)
        if not busy and abs(width - self.gripper_width_cmd) > deadband:
            self._gripper_future = self.gripper.move_async(float(width), float(speed))  # runs on while stepping
            self.gripper_width_cmd = float(width)
        return self.gripper_width_cmd / GRIPPER_MAX_WIDTH * 2.0 - 1.0

    def measured_pose(self) -> Tuple[np.ndarray, Rotation]:
        pose = self.robot.current_cartesian_state.pose.end_effector_pose
        return np.asarray(pose.translation, dtype=np.float64), Rotation.from_quat(np.asarray(pose.quaternion))

    def state(self, reference_rotation: Rotation) -> Dict[str, np.ndarray]:
        """The measured state, one entry per ``STATE_KEYS`` name: the quaternion (xyzw) in the hemisphere of
        ``reference_rotation`` (no sign flips near it), ``tcp_force`` the estimated external force on the TCP
        (N, base frame, ``O_F_ext_hat_K``; zeros where the robot or sim does not estimate it)."""
        state = self.robot.state
        cartesian = self.robot.current_cartesian_state
        pose = cartesian.pose.end_effector_pose
        quat = np.asarray(pose.quaternion, dtype=np.float64)
        if np.dot(quat, reference_rotation.as_quat()) < 0:
            quat = -quat
        twist = cartesian.velocity.end_effector_twist
        width = self.gripper.width if self.gripper is not None else 0.0
        return dict(tcp_pos=np.asarray(pose.translation), tcp_quat=quat, tcp_lin_vel=np.asarray(twist.linear),
                    tcp_ang_vel=np.asarray(twist.angular), tcp_force=_force(state.O_F_ext_hat_K),
                    gripper_width=np.array([width]))

    def drop(self) -> None:
        """Forget robot and gripper after a lost connection (nothing is sent to them any more)."""
        self.robot = self.gripper = self._gripper_future = None

    def close(self) -> None:
        if self.robot is not None:
            try:
                self.robot.stop()
                self.robot.join_motion()
            except Exception:  # a robot in an error state has nothing to stop; closing must not raise
                pass
        if self._gripper_future is not None:
            self._gripper_future.wait(10.0)
        self.drop()
