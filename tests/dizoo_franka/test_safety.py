"""``SafetyBox`` alone (no robot): position clipping, rotation bound, invalid boxes, non-finite actions."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dizoo_franka.envs.safety import SafetyBox, check_finite_action, rotation_angle


def test_clip_pose_position_and_rotation():
    box = SafetyBox([0.4, -0.1, 0.1], [0.7, 0.2, 0.4], max_rotation=0.3)
    reference = Rotation.from_rotvec([np.pi, 0.0, 0.0])
    target = reference * Rotation.from_rotvec([0.5, -0.1, 0.0])
    position, rotation, changed = box.clip_pose([1.0, 0.0, -2.0], target, reference)
    np.testing.assert_allclose(position, [0.7, 0.0, 0.1])
    np.testing.assert_allclose((reference.inv() * rotation).as_rotvec(), [0.3, -0.1, 0.0], atol=1e-9)
    assert changed
    position, rotation, changed = box.clip_pose([0.5, 0.0, 0.2], reference, reference)
    assert not changed and rotation_angle(rotation, reference) < 1e-12


def test_invalid_box_and_non_finite_action():
    with pytest.raises(ValueError, match="low <= high"):
        SafetyBox([0.5, 0.0, 0.0], [0.4, 1.0, 1.0])
    with pytest.raises(ValueError, match="3 lower and 3 upper"):
        SafetyBox([0.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        check_finite_action(np.array([0.0, -np.inf, 0.0]))
    check_finite_action(np.zeros(4))
