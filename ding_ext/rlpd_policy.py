"""RLPD (Ball et al., 2023, "Efficient Online RL with Offline Data") as a DI-engine policy.

SAC with the three changes RLPD makes for learning from few env samples next to demonstrations:

- LayerNorm in every critic layer (keeps Q-values bounded when the data mixes demos and online samples);
- an ensemble of ``num_critics`` critics; the TD target is the minimum over a random subset of
  ``critic_subset`` target critics (REDQ-style pessimism), the actor maximises their mean;
- a high update-to-data ratio (``learn.utd_ratio``: gradient updates per collected env step, applied by
  ``entry.serial_pipeline_reward_model_offpolicy``);

plus symmetric sampling (half demonstrations, half online data in each batch), which lives in the
entry's demo buffer (``demo_buffer`` config block). Registered names: ``rlpd``, ``rlpd_command``,
``rlpd_reward_image`` and ``rlpd_reward_image_command`` (transitions keep the reward image and success
flag, see ``ding_ext.policies``). Model: ``rlpd_qac`` (``RLPDActorCritic``): flat observations, or with
``model.image_shape`` camera images plus state through a shared conv encoder (``ding_ext.image_encoder``; the critic
loss trains it, the actor reads its features detached, as pixel SAC / DrQ do).
"""
import math
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from ding.policy import SACPolicy
from ding.policy.command_mode_policy_instance import DummyCommandModePolicy
from ding.policy.common_utils import default_preprocess_learn
from ding.torch_utils import to_device
from ding.utils import MODEL_REGISTRY, POLICY_REGISTRY
from torch.distributions import Independent, Normal

from .image_encoder import ImageStateEncoder, check_image_obs
from .policies import with_reward_image

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

# Learner settings for RLPD from a small demo buffer with a behaviour-cloning start, measured on PickCube (README,
# "RL with the learned reward"); the PickCube and Franka configs start from them (``dict(RLPD_DEMO_LEARN, ...)``).
RLPD_DEMO_LEARN = dict(
    learning_rate_q=3e-4, learning_rate_policy=3e-4, learning_rate_alpha=3e-4, auto_alpha=True, target_theta=0.005,
    critic_subset=2, ignore_done=True,
    # a strong behaviour-cloning term keeps the cloned actor near the demos while the critics learn: with bc_weight 1
    # or 2.5 the untrained critics' gradients pulled a cloned policy from 80% success to 10-15% within 1000 updates;
    # with 10 it stayed at 80-100% (oracle reward, 40 scripted demos)
    bc_weight=10.0,
    # little action noise: PickCube's success needs the robot static at the goal, and SAC's default noise
    # (alpha 0.2, target entropy -4) kept it moving: 0 successes in 5,376 collected steps while the same policy
    # succeeded in 15-45% of its deterministic eval episodes. The cloned actor starts at pre-tanh std 0.03:
    # 58 of 500 collected steps succeeded (20 demos), 6 at 0.1, 0 with the noise fitted to the demos
    alpha=0.01,
    target_entropy=-12,
    bc_action_noise=0.03,
)


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied at once: input (n, B, in) -> (n, B, out)."""

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class CriticEnsemble(nn.Module):
    """``n`` Q(s, a) MLPs with LayerNorm after each hidden layer, evaluated in one batched pass."""

    def __init__(self, n: int, in_features: int, hidden: int, layers: int, layer_norm: bool) -> None:
        super().__init__()
        self.n = n
        dims = [in_features] + [hidden] * layers
        self.hidden = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) if layer_norm else nn.Identity() for _ in range(layers))
        self.out = EnsembleLinear(n, hidden, 1)

    def forward(self, obs_action: torch.Tensor) -> torch.Tensor:
        x = obs_action.unsqueeze(0).expand(self.n, -1, -1)
        for linear, norm in zip(self.hidden, self.norms):
            x = F.relu(norm(linear(x)))
        return self.out(x).squeeze(-1)  # (n, B)


@MODEL_REGISTRY.register('rlpd_qac')
class RLPDActorCritic(nn.Module):
    """Gaussian actor (tanh-squashed by the policy) and a LayerNorm critic ensemble.

    Flat observations by default; with ``image_shape`` the observations are ``dict(state=(obs_shape,), image=
    image_shape)`` and one ``ImageStateEncoder`` (``ding_ext.image_encoder``, options in ``encoder``) turns them into
    the features both heads read: the critics train it, the actor gets its features detached.

    ``forward(obs, mode='compute_actor')`` -> ``{'logit': [mu, sigma]}``;
    ``forward({'obs', 'action'}, mode='compute_critic')`` -> ``{'q_value': (num_critics, B)}``;
    ``encode(obs)``, ``actor_logit(features)`` and ``q_values(features, action)`` are the same steps on features
    computed once (the learner encodes each batch once).
    """
    mode = ['compute_actor', 'compute_critic']

    def __init__(self, obs_shape: int, action_shape: int, num_critics: int = 2, hidden_size: int = 256,
                 num_layers: int = 2, critic_layer_norm: bool = True, image_shape: Optional[List[int]] = None,
                 encoder: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        super().__init__()
        if int(num_critics) < 2:
            raise ValueError(f"rlpd_qac needs num_critics >= 2 (the TD target takes a minimum), got {num_critics}")
        obs_shape, action_shape = int(obs_shape), int(action_shape)
        self.encoder = ImageStateEncoder(image_shape, obs_shape, **dict(encoder or {})) if image_shape else None
        features = self.encoder.out_dim if self.encoder is not None else obs_shape
        dims = [features] + [hidden_size] * num_layers
        trunk = []
        for a, b in zip(dims[:-1], dims[1:]):
            trunk += [nn.Linear(a, b), nn.ReLU()]
        self.actor = nn.Sequential(*trunk, nn.Linear(hidden_size, 2 * action_shape))
        self.critic = CriticEnsemble(int(num_critics), features + action_shape, hidden_size, num_layers,
                                     critic_layer_norm)
        self.action_shape = action_shape

    @staticmethod
    def _gaussian(out: torch.Tensor) -> List[torch.Tensor]:
        mu, log_std = out.chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return [mu, log_std.exp()]

    def encode(self, obs: Any, detach: bool = False) -> torch.Tensor:
        """The features the heads read: the flat observation itself, or the image encoder's output."""
        if self.encoder is None:
            if isinstance(obs, Mapping):
                raise ValueError(f"rlpd_qac got dict observations (keys {sorted(obs)}) but has no image encoder: "
                                 "set model.image_shape (and obs_shape to the state size)")
            return obs
        check_image_obs(obs, 'rlpd_qac')
        features = self.encoder(obs)
        return features.detach() if detach else features

    def actor_logit(self, features: torch.Tensor) -> List[torch.Tensor]:
        return self._gaussian(self.actor(features))

    def q_values(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if action.dim() == 1:
            action = action.unsqueeze(-1)
        return self.critic(torch.cat([features, action], dim=-1))

    def action_noise(self, features: torch.Tensor) -> torch.Tensor:
        """The actor's sigma with the actor's hidden layers held fixed (gradients reach its last layer only)."""
        with torch.no_grad():
            hidden = self.actor[:-1](features)
        return self._gaussian(self.actor[-1](hidden))[1]

    def forward(self, inputs: Any, mode: str) -> Dict[str, Any]:
        if mode == 'compute_actor':
            return {'logit': self.actor_logit(self.encode(inputs, detach=True))}
        if mode == 'compute_critic':
            return {'q_value': self.q_values(self.encode(inputs['obs']), inputs['action'])}
        raise ValueError(f"unknown mode {mode!r}; expected one of {self.mode}")


def _squashed_sample(mu: torch.Tensor, sigma: torch.Tensor):
    """tanh(N(mu, sigma)) sample and its log-probability (with the tanh change of variables)."""
    dist = Independent(Normal(mu, sigma), 1)
    pre = dist.rsample()
    action = torch.tanh(pre)
    log_prob = dist.log_prob(pre) - torch.log(1 - action.pow(2) + 1e-6).sum(-1)
    return action, log_prob


def _stack_obs(observations: List[Any]) -> Any:
    """A batch of flat observations (float32) or of dict observations (each entry stacked as it is: uint8 images
    stay uint8)."""
    if isinstance(observations[0], Mapping):
        return {k: torch.stack([torch.as_tensor(o[k]) for o in observations]) for k in observations[0]}
    return torch.stack([torch.as_tensor(o, dtype=torch.float32) for o in observations])


def _index_obs(obs: Any, idx: torch.Tensor) -> Any:
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, Mapping) else obs[idx]


@POLICY_REGISTRY.register('rlpd')
class RLPDPolicy(SACPolicy):
    """SAC with a LayerNorm critic ensemble and random-subset TD targets (see the module docstring)."""

    config = dict(
        SACPolicy.config,
        type='rlpd',
        model=dict(num_critics=2, hidden_size=256, num_layers=2, critic_layer_norm=True),
        learn=dict(
            SACPolicy.config['learn'],
            # (int) Target critics whose minimum forms the TD target (RLPD: 2 of an ensemble of 10).
            critic_subset=2,
            # (float|None) Gradient updates per collected env step; None keeps update_per_collect per iteration.
            utd_ratio=None,
            # (bool) Time-limit truncations are not terminal: bootstrap through ``done`` (fixed-horizon tasks).
            ignore_done=True,
            # (float) Weight of a behaviour-cloning term on the demonstrations of each batch (squared error between
            # the actor's mean action and the demo action, for transitions marked ``is_demo``); 0 = plain RLPD.
            bc_weight=0.0,
            # (int) Behaviour-cloning steps of the actor on the demonstrations before RL starts (``pretrain_on_demos``,
            # called by our entry at set-up): RL then starts from the demos' behaviour instead of a random policy.
            bc_pretrain_iterations=0,
            # (float) The action noise (pre-tanh std) the cloned actor starts RL with; SAC's temperature tunes it after.
            bc_action_noise=0.03,
            # (int) Updates that train the critics only, before the actor and the temperature learn: the actor (e.g.
            # pretrained on the demos) is not pushed around by the gradients of untrained critics.
            actor_warmup_updates=0,
        ),
    )

    def default_model(self):
        return 'rlpd_qac', ['ding_ext.rlpd_policy']

    def _init_learn(self) -> None:
        self._cfg.model.setdefault('twin_critic', False)  # SACPolicy reads it; the ensemble replaces it
        super()._init_learn()
        n = self._model.critic.n
        self._critic_subset = int(self._cfg.learn.critic_subset)
        self._bc_weight = float(self._cfg.learn.get('bc_weight', 0.0))
        self._actor_warmup = int(self._cfg.learn.get('actor_warmup_updates', 0) or 0)
        self._updates = 0
        if not 1 <= self._critic_subset <= n:
            raise ValueError(f"learn.critic_subset must be in [1, num_critics={n}], got {self._critic_subset}")
        if getattr(self._model, 'encoder', None) is not None:  # the critic loss trains the shared image encoder
            self._optimizer_q = torch.optim.Adam(
                list(self._model.critic.parameters()) + list(self._model.encoder.parameters()),
                lr=self._cfg.learn.learning_rate_q
            )

    def _forward_learn(self, data: List[Dict[str, Any]]) -> Dict[str, Any]:
        data = default_preprocess_learn(data, use_priority=False, use_priority_IS_weight=False,
                                        ignore_done=self._cfg.learn.ignore_done, use_nstep=False)
        self._learn_model.train()
        self._target_model.train()
        model, target_model = self._learn_model, self._target_model
        obs, next_obs = data['obs'], data['next_obs']
        reward, done = data['reward'].reshape(-1), data['done'].float().reshape(-1)

        with torch.no_grad():
            mu, sigma = model.actor_logit(model.encode(next_obs))
            next_action, next_log_prob = _squashed_sample(mu, sigma)
            target_q = target_model.q_values(target_model.encode(next_obs), next_action)
            subset = torch.randperm(target_q.shape[0])[:self._critic_subset]
            target_v = target_q[subset].min(dim=0).values - self._alpha * next_log_prob
            target = reward + self._gamma * (1 - done) * target_v

        features = model.encode(obs)  # with an image encoder: trained by the critic loss only
        q = model.q_values(features, data['action'])
        critic_loss = F.mse_loss(q, target.unsqueeze(0).expand_as(q), reduction='none').mean(dim=1).sum()
        self._optimizer_q.zero_grad()
        critic_loss.backward()
        self._optimizer_q.step()
        self._target_model.update(self._learn_model.state_dict())  # Polyak averaging (only its critics are read)

        self._updates += 1
        out = {'critic_loss': critic_loss.item()}
        if self._updates <= self._actor_warmup:  # critics only (the actor's monitored losses read 0)
            out.update(policy_loss=0.0, **({'alpha_loss': 0.0} if self._auto_alpha else {}),
                       **({'bc_loss': 0.0} if self._bc_weight > 0 else {}))
            return self._learn_output(out, q, target, None)
        features = features.detach()  # the actor's loss does not reach the encoder
        mu, sigma = model.actor_logit(features)
        action, log_prob = _squashed_sample(mu, sigma)
        q_pi = model.q_values(features, action).mean(0)
        policy_loss = (self._alpha * log_prob - q_pi).mean()
        bc_loss = None
        if self._bc_weight > 0 and 'is_demo' in data and bool(data['is_demo'].any()):
            demo = data['is_demo'].bool().reshape(-1)
            bc_loss = (torch.tanh(mu[demo]) - data['action'][demo]).pow(2).sum(-1).mean()
            policy_loss = policy_loss + self._bc_weight * bc_loss
        self._optimizer_policy.zero_grad()
        policy_loss.backward()
        self._optimizer_policy.step()

        out['policy_loss'] = policy_loss.item()
        if bc_loss is not None:
            out['bc_loss'] = bc_loss.item()
        if self._auto_alpha:
            entropy_gap = (log_prob + self._target_entropy).detach()
            alpha_param = self._log_alpha if self._log_space else self._alpha
            alpha_loss = -(alpha_param * entropy_gap).mean()
            self._alpha_optim.zero_grad()
            alpha_loss.backward()
            self._alpha_optim.step()
            if self._log_space:
                self._alpha = self._log_alpha.detach().exp()
            else:
                self._alpha.data.clamp_(min=0)
            out['alpha_loss'] = alpha_loss.item()
        return self._learn_output(out, q, target, log_prob)

    def _learn_output(self, losses: Dict[str, float], q: torch.Tensor, target: torch.Tensor,
                      log_prob: Optional[torch.Tensor]) -> Dict[str, Any]:
        td_error = (q.detach() - target.unsqueeze(0)).abs().mean(0)
        return {
            **losses,
            'total_loss': sum(losses.values()),
            'cur_lr_q': self._optimizer_q.defaults['lr'],
            'cur_lr_p': self._optimizer_policy.defaults['lr'],
            'priority': td_error.tolist(),
            'td_error': td_error.mean().item(),
            'alpha': float(self._alpha.item()),
            'target_q_value': target.mean().item(),
            'q_value': q.detach().mean().item(),
            'transformed_log_prob': float('nan') if log_prob is None else log_prob.mean().item(),
        }

    def pretrain_on_demos(self, transitions: List[Dict[str, Any]]) -> Optional[Dict[str, float]]:
        """Behaviour cloning of the actor on ``transitions`` (``learn.bc_pretrain_iterations`` steps of
        ``learn.batch_size``, the policy optimiser): squared error of the mean action, and the action noise brought to
        ``learn.bc_action_noise`` (through the actor's last layer); the first and last losses, or None when disabled.

        The noise is set, not fitted to the demos: a deterministic expert's saturated actions (+-1) put the
        pre-tanh residuals far out, and the fitted noise (sigma 2-3.5) left 0 of 500 collected PickCube steps a
        success (the robot must rest at the goal), against 58 of 500 at sigma 0.03 and 6 at 0.1 (20 demos)."""
        iterations = int(self._cfg.learn.get('bc_pretrain_iterations', 0) or 0)
        if iterations <= 0:
            return None
        if not transitions:
            raise ValueError("learn.bc_pretrain_iterations > 0 needs demonstrations, and the demo buffer is empty")
        obs = to_device(_stack_obs([t['obs'] for t in transitions]), self._device)
        action = torch.stack([torch.as_tensor(t['action'], dtype=torch.float32) for t in transitions]).to(self._device)
        action = action.reshape(len(transitions), -1).clamp(-1.0, 1.0)
        target_noise = float(self._cfg.learn.get('bc_action_noise', 0.03))
        if not target_noise > 0:
            raise ValueError(f"learn.bc_action_noise must be > 0 (the actor's pre-tanh std after cloning), got {target_noise}")
        self._learn_model.train()
        losses = []
        n = len(transitions)
        for _ in range(iterations):
            idx = torch.randint(n, (min(int(self._cfg.learn.batch_size), n), ), device=action.device)
            features = self._model.encode(_index_obs(obs, idx), detach=True)  # (the encoder learns with the critics)
            mu = self._model.actor_logit(features)[0]
            # the mean action by squared error; the noise, through the last layer only, to bc_action_noise
            sigma = self._model.action_noise(features)
            noise = (sigma.log() - math.log(target_noise)).pow(2).sum(-1).mean()
            loss = (torch.tanh(mu) - action[idx]).pow(2).sum(-1).mean() + noise
            self._optimizer_policy.zero_grad()
            loss.backward()
            self._optimizer_policy.step()
            losses.append(loss.item())
        return {'bc_pretrain_first_loss': losses[0], 'bc_pretrain_last_loss': losses[-1], 'iterations': iterations,
                'demo_transitions': len(transitions)}

    def _monitor_vars_learn(self) -> List[str]:
        keys = ['critic_loss', 'policy_loss', 'total_loss', 'cur_lr_q', 'cur_lr_p', 'td_error', 'alpha',
                'target_q_value', 'q_value', 'transformed_log_prob']
        return keys + (['alpha_loss'] if self._auto_alpha else []) + (['bc_loss'] if self._bc_weight > 0 else [])


@POLICY_REGISTRY.register('rlpd_command')
class RLPDCommandModePolicy(RLPDPolicy, DummyCommandModePolicy):
    pass


RLPDRewardImagePolicy = POLICY_REGISTRY.register('rlpd_reward_image')(with_reward_image(RLPDPolicy))


@POLICY_REGISTRY.register('rlpd_reward_image_command')
class RLPDRewardImageCommandModePolicy(RLPDRewardImagePolicy, DummyCommandModePolicy):
    pass
