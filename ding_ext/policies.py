"""DI-engine policy variants whose transitions keep the env's reward image and success flag.

DI-engine's stock ``_process_transition`` drops ``timestep.info``, so an image reward model would
never see the camera frame. These variants copy ``info['reward_image']`` (when the env rendered one
on that step), ``info['success']`` and ``info['frame_info']`` (episode id, step and the facts behind the
label, for the dataset sidecar) into the transition; the reward model's ``estimate()`` scores
the image and returns copies without it, so the learner receives exactly the stock keys plus the
label. Registered names (``*_command`` for DI-engine's serial pipelines):

- ``ppo_reward_image`` / ``ppo_reward_image_command`` (PPO; keep ``recompute_adv=True`` so rewards
  changed by ``estimate()`` reach the advantages)
- ``sac_reward_image`` / ``sac_reward_image_command`` (continuous SAC)
"""
from typing import Any, Dict

from ding.policy import PPOPolicy, SACPolicy
from ding.policy.command_mode_policy_instance import DummyCommandModePolicy
from ding.utils import POLICY_REGISTRY

from .transitions import FRAME_INFO_KEY, IMAGE_KEY

SUCCESS_KEY = 'success'


def with_reward_image(policy_cls: type) -> type:
    """A subclass of ``policy_cls`` whose transitions keep ``reward_image`` and ``success`` from ``timestep.info``.

    (A direct subclass, not a mixin: DI-engine's ``default_config`` walks ``cls.__base__``.)
    """

    class RewardImagePolicy(policy_cls):

        def _process_transition(self, obs: Any, policy_output: Dict[str, Any], timestep: Any) -> Dict[str, Any]:
            transition = super()._process_transition(obs, policy_output, timestep)
            info = timestep.info or {}
            for key in (IMAGE_KEY, SUCCESS_KEY, FRAME_INFO_KEY):
                if key in info and info[key] is not None:
                    transition[key] = info[key]
            return transition

    RewardImagePolicy.__name__ = RewardImagePolicy.__qualname__ = policy_cls.__name__.replace('Policy', 'RewardImagePolicy')
    return RewardImagePolicy


PPORewardImagePolicy = POLICY_REGISTRY.register('ppo_reward_image')(with_reward_image(PPOPolicy))
SACRewardImagePolicy = POLICY_REGISTRY.register('sac_reward_image')(with_reward_image(SACPolicy))


@POLICY_REGISTRY.register('ppo_reward_image_command')
class PPORewardImageCommandModePolicy(PPORewardImagePolicy, DummyCommandModePolicy):
    pass


@POLICY_REGISTRY.register('sac_reward_image_command')
class SACRewardImageCommandModePolicy(SACRewardImagePolicy, DummyCommandModePolicy):
    pass
