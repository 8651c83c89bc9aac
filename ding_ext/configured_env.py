"""``ConfiguredEnv``: the config plumbing every DI-engine env of the project shares.

An env lists its options with their defaults in a class attribute ``config`` (DI-engine's style, one comment
per option); ``default_config()`` returns them as an EasyDict, ``merge_config(cfg)`` lays a user config over
them, and ``create_collector_env_cfg`` / ``create_evaluator_env_cfg`` replicate a config
``collector_env_num`` / ``evaluator_env_num`` times (without the env-manager block).
"""
import copy
from typing import List, Optional

from ding.envs import BaseEnv
from easydict import EasyDict


class ConfiguredEnv(BaseEnv):
    """A ``BaseEnv`` whose options are its class attribute ``config``."""

    config: dict = {}

    @classmethod
    def default_config(cls: type) -> EasyDict:
        cfg = EasyDict(copy.deepcopy(cls.config))
        cfg.cfg_type = cls.__name__ + 'Dict'
        return cfg

    def merge_config(self, cfg: Optional[dict]) -> EasyDict:
        """The defaults with ``cfg`` laid over them (copied: the caller's dict is never changed)."""
        merged = self.default_config()
        merged.update(copy.deepcopy(dict(cfg or {})))
        return merged

    @staticmethod
    def replicate_config(cfg: dict, num_key: str) -> List[dict]:
        cfg = copy.deepcopy(cfg)
        num = cfg.pop(num_key, 1)
        cfg.pop('manager', None)
        return [cfg for _ in range(num)]

    @classmethod
    def create_collector_env_cfg(cls, cfg: dict) -> List[dict]:
        return cls.replicate_config(cfg, 'collector_env_num')

    @classmethod
    def create_evaluator_env_cfg(cls, cfg: dict) -> List[dict]:
        return cls.replicate_config(cfg, 'evaluator_env_num')
