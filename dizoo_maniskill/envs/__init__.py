"""``ManiSkillEnv``: importing this package registers it as ``maniskill`` in DI-engine's ``ENV_REGISTRY``."""
from .maniskill_env import ManiSkillEnv

__all__ = ["ManiSkillEnv"]
