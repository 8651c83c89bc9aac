"""RLPD with image + state observations: the shared conv encoder (trained by the critic loss only), demo episodes that
give image observations from their recorded frames, and the learner on a batch mixing demo and online transitions."""
import numpy as np
import pytest
import torch
from ding.utils import deep_merge_dicts
from easydict import EasyDict

from ding_ext.demo_episodes import load_demo_transitions, read_episode, write_episode, write_metadata
from ding_ext.demo_replay_buffer import DemoMixReplayBuffer
from ding_ext.image_encoder import ImageStateEncoder
from ding_ext.image_utils import resize_rgb
from ding_ext.rlpd_policy import RLPDActorCritic, RLPDPolicy

STATE, ACT, IMAGE = 5, 3, [3, 32, 32]


def make_policy(**learn):
    cfg = dict(type='rlpd', cuda=False,
               model=dict(obs_shape=STATE, action_shape=ACT, num_critics=2, hidden_size=32, image_shape=IMAGE,
                          encoder=dict(channels=8, feature_dim=16)),
               learn=dict(batch_size=16, discount_factor=0.5, learning_rate_q=1e-3, learning_rate_policy=1e-3, **learn))
    cfg = EasyDict(deep_merge_dicts(RLPDPolicy.default_config(), cfg))
    return RLPDPolicy(cfg, enable_field=['learn', 'collect', 'eval'])


def image_obs(n, seed=0, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    return dict(state=torch.randn(n, STATE, generator=g),
                image=torch.randint(0, 256, (n, *IMAGE), generator=g).to(dtype))


def image_batch(n=16, seed=0):
    obs, next_obs = image_obs(n, seed), image_obs(n, seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    return [dict(obs={k: v[i] for k, v in obs.items()}, next_obs={k: v[i] for k, v in next_obs.items()},
                 action=torch.rand(ACT, generator=g) * 2 - 1, reward=torch.tensor([float(i % 2)]), done=False,
                 is_demo=i < n // 2) for i in range(n)]


def test_encoder_shapes_pixel_scale_and_clear_errors():
    enc = ImageStateEncoder(IMAGE, STATE, channels=8, feature_dim=16, random_shift=2)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in enc.modules()) == 4
    assert any(isinstance(m, torch.nn.LayerNorm) for m in enc.projection)
    enc.eval()
    obs = image_obs(3)
    out = enc(obs)
    assert out.shape == (3, 16 + STATE) and torch.equal(out[:, 16:], obs['state'])
    # uint8 (replay buffer) and float 0..255 (DI-engine's collectors) are the same pixels
    assert torch.allclose(out, enc(dict(obs, image=obs['image'].float())))
    enc.train()  # random shift only while training
    assert not torch.allclose(enc(obs)[:, :16], out[:, :16])
    with pytest.raises(ValueError, match=r'expects \[3, 32, 32\]'):
        enc(dict(obs, image=torch.zeros(3, 3, 24, 24, dtype=torch.uint8)))
    with pytest.raises(ValueError, match='too small'):
        ImageStateEncoder([3, 8, 8], STATE)
    model = RLPDActorCritic(STATE, ACT, hidden_size=16, image_shape=IMAGE, encoder=dict(channels=8, feature_dim=16))
    with pytest.raises(ValueError, match='dict\\(state=..., image=...\\)'):
        model(torch.zeros(2, STATE), mode='compute_actor')
    with pytest.raises(ValueError, match='model.image_shape'):
        RLPDActorCritic(STATE, ACT, hidden_size=16)(image_obs(2), mode='compute_actor')


def test_critic_loss_trains_the_encoder_and_the_actor_reads_detached_features():
    torch.manual_seed(0)
    policy = make_policy()
    model = policy._model
    assert {id(p) for p in model.encoder.parameters()} <= \
        {id(p) for g in policy._optimizer_q.param_groups for p in g['params']}
    assert not {id(p) for p in model.encoder.parameters()} & \
        {id(p) for g in policy._optimizer_policy.param_groups for p in g['params']}
    # the actor's gradient stops at the features: a policy-loss backward leaves the encoder without gradients
    mu, _ = model(image_obs(4), mode='compute_actor')['logit']
    mu.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    encoder = [p.detach().clone() for p in model.encoder.parameters()]
    data = image_batch()
    first = policy.learn_mode.forward(data)
    for _ in range(30):
        out = policy.learn_mode.forward(data)
    assert not all(torch.equal(a, b) for a, b in zip(encoder, model.encoder.parameters()))
    assert out['critic_loss'] < first['critic_loss'] and np.isfinite(out['policy_loss'])
    # collect mode: DI-engine passes float images of one env step
    obs = {k: v[0].float() for k, v in image_obs(1).items()}
    action = policy.collect_mode.forward({0: obs})[0]['action']
    assert action.shape == (ACT, ) and action.abs().max() <= 1


def test_pretrain_on_demos_with_image_observations():
    torch.manual_seed(0)
    demos = image_batch(n=32)
    for t in demos:
        t['action'] = torch.tanh(t['obs']['state'][:ACT])
    policy = make_policy(bc_pretrain_iterations=150, bc_action_noise=0.05)
    encoder = [p.detach().clone() for p in policy._model.encoder.parameters()]
    stats = policy.pretrain_on_demos(demos)
    assert stats['bc_pretrain_last_loss'] < 0.3 * stats['bc_pretrain_first_loss']
    # cloning trains the actor on the encoder's features; the encoder itself learns with the critics
    assert all(torch.equal(a, b) for a, b in zip(encoder, policy._model.encoder.parameters()))


def recorded_episode(T=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (T + 1, size, size, 3), dtype=np.uint8)  # reset frame, then one per step
    state = rng.random((T + 1, STATE), dtype=np.float32)
    return dict(obs=state[:-1], next_obs=state[1:], action=rng.random((T, ACT), dtype=np.float32),
                reward=np.zeros(T, np.float32), done=np.arange(T) == T - 1, success=np.arange(T) >= T - 2,
                image=frames[1:], image_step=np.arange(T), reset_image=frames[0])


def test_demo_episodes_give_image_observations_from_the_recorded_frames(tmp_path):
    d = str(tmp_path / 'demos')
    write_metadata(d, dict(env='franka', image_size=[3, 16, 16]))
    ep = recorded_episode()
    assert read_episode(write_episode(d, '0000', ep))['reset_image'].shape == (16, 16, 3)
    old = {k: v for k, v in recorded_episode(T=3, seed=1).items() if k != 'reset_image'}  # before reset frames
    write_episode(d, '0001', old)
    flat = load_demo_transitions(d)  # both load with flat observations, as before
    assert len(flat) == 7 and all(t['obs'].shape == (STATE, ) for t in flat)
    with pytest.raises(ValueError, match="episode '0001' has no 'reset_image'"):
        load_demo_transitions(d, obs_image=True)
    trs = load_demo_transitions(d, obs_image=True, max_episodes=1)
    assert len(trs) == 4
    for t, tr in enumerate(trs):
        # obs t: the frame after step t - 1 (the reset frame at t = 0), CxHxW uint8; next_obs t: the frame after t
        assert tr['obs']['image'].dtype == torch.uint8 and tr['obs']['image'].shape == (3, 16, 16)
        want = ep['reset_image'] if t == 0 else ep['image'][t - 1]
        assert np.array_equal(tr['obs']['image'].numpy().transpose(1, 2, 0), want)
        assert np.array_equal(tr['next_obs']['image'].numpy().transpose(1, 2, 0), ep['image'][t])
        assert np.allclose(tr['obs']['state'].numpy(), ep['obs'][t])
        assert np.array_equal(tr['reward_image'], ep['image'][t])  # the reward image is still the recorded frame
    assert trs[0]['next_obs']['image'] is trs[1]['obs']['image']  # one tensor per frame
    small = load_demo_transitions(d, obs_image=True, obs_image_size=[3, 8, 8], max_episodes=1)
    assert np.array_equal(small[2]['obs']['image'].numpy().transpose(1, 2, 0), resize_rgb(ep['image'][1], 8, 8))
    # success_only leaves out episodes that never reach success
    write_episode(d, '0002', dict(recorded_episode(seed=2), success=np.zeros(4, bool)))
    names = {tr['frame_info']['episode_id'] for tr in load_demo_transitions(d, success_only=True)}
    assert names == {'demo-0000', 'demo-0001'}
    with pytest.raises(ValueError, match="'reset_image' needs 'image' frames of the same shape"):
        write_episode(d, 'bad', dict(ep, reset_image=np.zeros((8, 8, 3), np.uint8)))


def test_demo_mix_buffer_batches_image_observations_for_the_learner(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DI-engine's buffer logs under ./<exp_name>
    d = str(tmp_path / 'demos')
    write_metadata(d, dict(env='franka'))
    for i in range(2):
        write_episode(d, f'{i:04d}', recorded_episode(T=6, size=32, seed=i))
    cfg = EasyDict(deep_merge_dicts(DemoMixReplayBuffer.default_config(), dict(
        replay_buffer_size=100, demo_path=d, demo_obs_image=True, demo_obs_image_size=IMAGE, demo_success_only=True,
        demo_env_metadata=dict(env='franka'))))
    buffer = DemoMixReplayBuffer(cfg, exp_name='exp')
    try:
        online = image_batch(n=8, seed=5)
        for t in online:
            t.pop('is_demo')
        buffer.push(online, cur_collector_envstep=0)
        batch = buffer.sample(16, 0)
        assert sum(t['is_demo'] for t in batch) == 8
        assert all(t['obs']['image'].shape == tuple(IMAGE) for t in batch)
        out = make_policy().learn_mode.forward([{k: t[k] for k in ('obs', 'next_obs', 'action', 'reward', 'done')}
                                                for t in batch])
        assert np.isfinite(out['critic_loss'])
    finally:
        from entry.serial_entry_reward_model import close_replay_buffer
        close_replay_buffer(buffer)
