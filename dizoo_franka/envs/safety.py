"""Safety checks applied to every Franka command before it is sent: finite actions and a workspace box.

Kept free of franky and DI-engine so it can be read and tested alone. Poses here are a position (3,) in metres in
the robot base frame and a ``scipy.spatial.transform.Rotation``.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.spatial.transform import Rotation


def check_finite_action(action: np.ndarray) -> None:
    """Raise ValueError on any NaN or infinite entry (the caller then sends nothing)."""
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action contains NaN or inf, nothing was sent to the robot: {action.tolist()}")


class SafetyBox:
    """An axis-aligned box for the TCP position, and optionally a bound on its rotation away from a reference.

    ``clip_position`` puts a target position inside ``[low, high]`` (per axis). ``clip_rotation`` bounds each
    component of the rotation vector of ``reference^-1 * target`` (the rotation away from the reset orientation,
    in the reference's own frame) to ``[-max_rotation, max_rotation]`` radians.
    """

    def __init__(self, low: Sequence[float], high: Sequence[float], max_rotation: Optional[float] = None) -> None:
        self.low = np.asarray(low, dtype=np.float64).reshape(-1)
        self.high = np.asarray(high, dtype=np.float64).reshape(-1)
        if self.low.shape != (3, ) or self.high.shape != (3, ):
            raise ValueError(f"the safety box needs 3 lower and 3 upper limits (x, y, z), got {low} and {high}")
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high)) and np.all(self.low <= self.high)):
            raise ValueError(f"the safety box must be finite with low <= high, got low={low} high={high}")
        self.max_rotation = None if max_rotation is None else float(max_rotation)

    def shrunk(self, margin: float) -> "SafetyBox":
        """The box moved inwards by ``margin`` metres on every face (same rotation bound)."""
        margin = float(margin)
        if margin < 0 or np.any(self.high - self.low < 2 * margin):
            raise ValueError(
                f"the safety box {self.low.tolist()} .. {self.high.tolist()} is too small for a braking margin of "
                f"{margin:.4f} m on each face: widen it, or lower max_tcp_speed (the margin grows with its square)"
            )
        return SafetyBox(self.low + margin, self.high - margin, self.max_rotation)

    def contains(self, position: Sequence[float], tolerance: float = 0.0) -> bool:
        position = np.asarray(position, dtype=np.float64)
        return bool(np.all(position >= self.low - tolerance) and np.all(position <= self.high + tolerance))

    def clip_position(self, position: Sequence[float]) -> np.ndarray:
        return np.clip(np.asarray(position, dtype=np.float64), self.low, self.high)

    def clip_rotation(self, target: Rotation, reference: Rotation) -> Rotation:
        if self.max_rotation is None:
            return target
        away = (reference.inv() * target).as_rotvec()
        return reference * Rotation.from_rotvec(np.clip(away, -self.max_rotation, self.max_rotation))

    def clip_pose(self, position: Sequence[float], rotation: Rotation,
                  reference: Rotation) -> Tuple[np.ndarray, Rotation, bool]:
        """(clipped position, clipped rotation, whether anything was changed)."""
        position = np.asarray(position, dtype=np.float64)
        clipped_position = self.clip_position(position)
        clipped_rotation = self.clip_rotation(rotation, reference)
        changed = bool(
            np.any(clipped_position != position) or rotation_angle(clipped_rotation, rotation) > 1e-9
        )
        return clipped_position, clipped_rotation, changed


def braking_distance(speed: float, acceleration: float, jerk: float) -> float:
    """How far a jerk-limited trajectory can still travel along one axis before it stands still.

    Worst case: it moves outwards at ``speed`` while accelerating outwards at ``acceleration``. Bringing the
    acceleration to zero takes ``acceleration / jerk`` seconds (the speed grows by ``acceleration**2 / (2 jerk)``
    meanwhile), then the stop itself covers ``v**2 / (2 acceleration) + v * acceleration / (2 jerk)``. A planner
    within these limits (franky's Ruckig) goes past its target only while braking from at most ``speed``; with
    every target inside ``box.shrunk(braking_distance(...))``, its commanded trajectory stays inside ``box`` even
    when a new target replaces a motion that is still running.
    """
    if min(speed, acceleration, jerk) <= 0:
        raise ValueError(f"speed, acceleration and jerk must be positive, got {speed}, {acceleration}, {jerk}")
    ramp = acceleration / jerk
    v = speed + acceleration * ramp / 2
    return float(v * ramp + v * v / (2 * acceleration) + v * ramp / 2)


def rotation_angle(a: Rotation, b: Rotation) -> float:
    """Geodesic angle (radians) between two orientations."""
    return float((a.inv() * b).magnitude())
