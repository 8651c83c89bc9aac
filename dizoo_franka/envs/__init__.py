"""``FrankaEnv``: importing this package registers it as ``franka`` in DI-engine's ``ENV_REGISTRY``.

It also imports ``ding_ext`` (the reward models and ``*_reward_image`` policies register themselves), as
``dizoo_maniskill`` does. ``dizoo_franka`` itself imports nothing: its ``sim_cell`` runs in the robot-sim venv,
which has neither DI-engine nor torch.
"""
import ding_ext  # noqa: F401

from .cameras import Camera, OpenCVCamera, RealSenseCamera, SimCamera, make_camera
from .franka_env import FrankaEnv
from .safety import SafetyBox

__all__ = ["Camera", "FrankaEnv", "OpenCVCamera", "RealSenseCamera", "SafetyBox", "SimCamera", "make_camera"]
