"""RLPD policy (LayerNorm critic ensemble, subset-min TD target) and the demo episode files / buffer."""
import os

import numpy as np
import pytest
import torch
from ding.utils import deep_merge_dicts
from easydict import EasyDict

from ding_ext.demo_episodes import DemoBuffer, episode_names, load_demo_transitions, read_episode, write_episode, \
    write_metadata
from ding_ext.rlpd_policy import RLPDActorCritic, RLPDPolicy

OBS, ACT = 6, 2


def make_policy(**learn):
    cfg = dict(type='rlpd', cuda=False, model=dict(obs_shape=OBS, action_shape=ACT, num_critics=4, hidden_size=32),
               learn=dict(batch_size=32, discount_factor=0.5, **learn))
    cfg = EasyDict(deep_merge_dicts(RLPDPolicy.default_config(), cfg))
    return RLPDPolicy(cfg, enable_field=['learn', 'collect', 'eval'])


def batch(n=32, reward=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [dict(obs=torch.randn(OBS, generator=g), next_obs=torch.randn(OBS, generator=g),
                 action=torch.rand(ACT, generator=g) * 2 - 1, reward=torch.tensor([reward]), done=False)
            for _ in range(n)]


def test_critic_ensemble_has_layer_norm_and_independent_members():
    model = RLPDActorCritic(OBS, ACT, num_critics=5, hidden_size=16)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in model.critic.modules()) == 2
    q = model({'obs': torch.randn(7, OBS), 'action': torch.rand(7, ACT)}, mode='compute_critic')['q_value']
    assert q.shape == (5, 7)
    assert not torch.allclose(q[0], q[1])  # members initialised independently
    mu, sigma = model(torch.randn(3, OBS), mode='compute_actor')['logit']
    assert mu.shape == sigma.shape == (3, ACT) and (sigma > 0).all()
    with pytest.raises(ValueError, match='num_critics >= 2'):
        RLPDActorCritic(OBS, ACT, num_critics=1)


def test_bad_critic_subset_is_rejected():
    with pytest.raises(ValueError, match='critic_subset'):
        make_policy(critic_subset=5)


def test_learning_fits_the_bootstrapped_value_and_actor_follows_the_critic():
    torch.manual_seed(0)
    policy = make_policy(critic_subset=2, learning_rate_q=3e-3, learning_rate_policy=3e-3)
    data = batch(reward=1.0)
    first = policy.learn_mode.forward(data)
    for _ in range(300):
        out = policy.learn_mode.forward(data)
    # r = 1 every step, gamma 0.5, bootstrapping through done (ignore_done): Q -> 1 / (1 - 0.5) = 2 (minus entropy)
    assert out['critic_loss'] < first['critic_loss']
    assert 1.2 < out['q_value'] < 2.8, out
    for key in ('critic_loss', 'policy_loss', 'alpha', 'td_error', 'target_q_value'):
        assert np.isfinite(out[key])
    assert len(out['priority']) == len(data)
    state = policy.learn_mode.state_dict()
    assert {'model', 'target_model', 'optimizer_q', 'optimizer_policy'} <= set(state)
    action = policy.collect_mode.forward({0: torch.randn(OBS)})[0]['action']
    assert action.shape == (ACT, ) and action.abs().max() <= 1


def _episode(T=5, with_images=True, success_at=3):
    ep = dict(obs=np.random.rand(T, OBS).astype(np.float32), next_obs=np.random.rand(T, OBS).astype(np.float32),
              action=np.random.rand(T, ACT).astype(np.float32), reward=np.arange(T, dtype=np.float32),
              done=np.arange(T) == T - 1, success=np.arange(T) >= success_at)
    if with_images:
        ep['image'] = np.random.randint(0, 255, (T, 8, 8, 3), dtype=np.uint8)
        ep['image_step'] = np.arange(T)
    return ep


def test_demo_episodes_roundtrip_metadata_check_and_bad_files(tmp_path):
    d = str(tmp_path / 'demos')
    write_metadata(d, dict(control_mode='pd_ee_delta_pos', env_image_size=[3, 8, 8]))
    write_episode(d, 's1', _episode())
    write_episode(d, 's2', _episode(T=3, with_images=False))
    assert episode_names(d) == ['s1', 's2']
    assert not [f for f in os.listdir(d) if f.startswith('.') or f.endswith('.tmp')]  # atomic: no leftovers
    trs = load_demo_transitions(d, dict(control_mode='pd_ee_delta_pos', show_goal_site=True))
    assert len(trs) == 8
    assert trs[0]['reward'].shape == (1, ) and trs[4]['done'] and not trs[3]['done']
    assert [t['success'] for t in trs[:5]] == [False, False, False, True, True]
    assert all('reward_image' in t for t in trs[:5]) and not any('reward_image' in t for t in trs[5:])
    assert trs[0]['frame_info']['source'] == 'demo'
    with pytest.raises(ValueError, match="control_mode"):
        load_demo_transitions(d, dict(control_mode='pd_joint_delta_pos'))
    with pytest.raises(ValueError, match="control_mode"):
        write_metadata(d, dict(control_mode='pd_joint_delta_pos', env_image_size=[3, 8, 8]))
    with pytest.raises(ValueError, match="different lengths"):
        write_episode(d, 'bad', dict(_episode(), reward=np.zeros(2)))
    with open(os.path.join(d, 'episode_s3.npz'), 'wb') as f:
        f.write(b'not a zip file')
    with pytest.raises(ValueError, match='episode_s3.npz'):
        load_demo_transitions(d)
    with pytest.raises(FileNotFoundError, match='no episode'):
        load_demo_transitions(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='not found'):
        load_demo_transitions(str(tmp_path / 'missing'))
    assert read_episode(os.path.join(d, 'episode_s1.npz'))['image'].shape == (5, 8, 8, 3)


def test_demo_buffer_samples_scored_copies_and_rescores():
    from tests.ding_ext.helpers import force_probability, make_model
    trs = [dict(obs=np.zeros(OBS, np.float32), reward=np.asarray([5.0], np.float32), done=i == 9, success=i % 2 == 0,
                reward_image=np.full((8, 8, 3), i, np.uint8), frame_info={}) for i in range(10)]
    buf = DemoBuffer(trs, seed=0)
    assert len(buf) == 10 and buf.success_fraction() == 0.5
    # unscored: the recorded transitions, images included (a model that scores sampled batches scores them)
    assert all('reward_image' in t and float(t['reward'][0]) == 5.0 for t in buf.sample(20))
    buf.rescore(None)  # the env reward, without the images
    assert all('reward_image' not in t and float(t['reward'][0]) == 5.0 for t in buf.sample(20))
    model = make_model(reward_mode='per_step', success_reward=1.0, fail_reward=0.0)
    force_probability(model, 0.9)
    buf.rescore(model)
    sample = buf.sample(400)
    assert len(sample) == 400 and all(float(t['reward'].reshape(-1)[0]) == 1.0 for t in sample)
    assert all('reward_image' not in t for t in sample)
    force_probability(model, 0.1)  # a co-trained model changed: rescoring follows it
    buf.rescore(model)
    assert all(float(t['reward'].reshape(-1)[0]) == 0.0 for t in buf.sample(50))
    assert 'reward_image' in buf.raw[0]  # kept for the next rescore
    terminal = make_model(reward_mode='terminal', success_reward=1.0, fail_reward=0.0)
    force_probability(terminal, 0.9)
    buf.rescore(terminal)  # terminal: only the episode's last (done) transition is scored
    assert [float(t['reward'].reshape(-1)[0]) for t in buf.scored] == [0.0] * 9 + [1.0]
    with pytest.raises(ValueError):
        DemoBuffer([])


def test_behaviour_cloning_term_pulls_the_actor_to_demo_actions():
    torch.manual_seed(0)
    data = batch(n=32, reward=0.0)
    target = torch.tensor([0.7, -0.4])
    for i, t in enumerate(data):
        t['is_demo'] = i % 2 == 0
        if t['is_demo']:
            t['action'] = target.clone()
    demo_obs = torch.stack([t['obs'] for t in data if t['is_demo']])

    def demo_error(policy):
        mu, _ = policy._model(demo_obs, mode='compute_actor')['logit']
        return (torch.tanh(mu) - target).abs().mean().item()

    plain, cloned = make_policy(learning_rate_policy=3e-3), make_policy(learning_rate_policy=3e-3, bc_weight=2.0)
    start = demo_error(cloned)
    for _ in range(150):
        out_plain, out = plain.learn_mode.forward(data), cloned.learn_mode.forward(data)
    assert 'bc_loss' not in out_plain and out['bc_loss'] < 0.05
    assert demo_error(cloned) < 0.15 < start and demo_error(cloned) < demo_error(plain)


def test_pretrain_on_demos_clones_the_demo_actions_before_rl():
    torch.manual_seed(0)
    demos = batch(n=64, reward=0.0)
    w = torch.tensor([[0.5, -0.3], [-0.2, 0.4], [0.1, 0.1], [0.3, 0.0], [0.0, -0.5], [0.2, 0.2]])
    for t in demos:  # a smooth function of the observation, inside the tanh range
        t['action'] = torch.tanh(t['obs'] @ w)
    obs, act = torch.stack([t['obs'] for t in demos]), torch.stack([t['action'] for t in demos])

    def error(policy):
        return (torch.tanh(policy._model(obs, mode='compute_actor')['logit'][0]) - act).pow(2).sum(-1).mean().item()

    assert make_policy().pretrain_on_demos(demos) is None  # bc_pretrain_iterations=0: nothing happens
    def noise(policy):
        return policy._model(obs, mode='compute_actor')['logit'][1].mean().item()

    policy = make_policy(bc_pretrain_iterations=300, learning_rate_policy=3e-3, bc_action_noise=0.05)
    start = error(policy)
    assert noise(policy) > 0.2
    stats = policy.pretrain_on_demos(demos)
    assert noise(policy) == pytest.approx(0.05, rel=0.2)  # the noise RL starts from: bc_action_noise
    assert stats['iterations'] == 300 and stats['demo_transitions'] == 64
    assert stats['bc_pretrain_last_loss'] < 0.2 * stats['bc_pretrain_first_loss']
    assert error(policy) < 0.2 * start
    with pytest.raises(ValueError, match='demo buffer is empty'):
        policy.pretrain_on_demos([])
    with pytest.raises(ValueError, match='bc_action_noise'):
        make_policy(bc_pretrain_iterations=1, bc_action_noise=0.0).pretrain_on_demos(demos)


def test_actor_warmup_trains_the_critics_only():
    torch.manual_seed(0)
    policy = make_policy(actor_warmup_updates=3, bc_weight=1.0)
    actor = [p.detach().clone() for p in policy._model.actor.parameters()]
    critic = [p.detach().clone() for p in policy._model.critic.parameters()]
    alpha = policy._alpha.item()
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    for _ in range(3):
        out = policy.learn_mode.forward(batch())
        assert out['policy_loss'] == 0.0 and out['critic_loss'] > 0
    assert same(actor, policy._model.actor.parameters()) and policy._alpha.item() == alpha
    assert not same(critic, policy._model.critic.parameters())
    policy.learn_mode.forward(batch())  # the 4th update moves the actor
    assert not same(actor, policy._model.actor.parameters())
