"""Score each image once: a frozen model's ``estimate()`` reuses the probability stored with a transition however often
the replay buffer (DI-engine's naive buffer, our demo_mix) returns it; a co-trained model scores it again after its
weights changed; the fast scoring path gives the plain network's probabilities."""
import warnings

import numpy as np
import pytest
import torch
from ding.worker import create_buffer
from easydict import EasyDict

from ding_ext.demo_episodes import write_episode, write_metadata
from ding_ext.inference_network import InferenceNetwork
from ding_ext.transitions import SCORE_KEY
from entry.serial_entry_reward_model import close_replay_buffer

from .helpers import count_forward_calls, make_model, separable_images

OBS = 4


def online_transitions(n, seed=0):
    images, labels = separable_images(n // 2, seed=seed)
    return [dict(obs=torch.full((OBS, ), float(i)), next_obs=torch.zeros(OBS), action=torch.zeros(2),
                 reward=torch.tensor([0.25]), done=False, reward_image=images[i], success=bool(labels[i]))
            for i in range(n)]


def frozen_pair(tmp_path, **overrides):
    """A frozen per-step model loaded from a checkpoint, and the same weights with score_once off."""
    trained = make_model(reward_mode='per_step')
    ckpt = trained.save(str(tmp_path / 'rm.safetensors'))
    cfg = dict(reward_mode='per_step', cooptrain_reward=False, checkpoint_path=ckpt, use_soft_reward=True, **overrides)
    return make_model(**cfg), make_model(score_once=False, **cfg)


@pytest.fixture
def naive_buffer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the buffer's throughput logger writes under the working directory
    buf = create_buffer(EasyDict(type='naive', replay_buffer_size=100, deepcopy=False, enable_track_used_data=False,
                                 periodic_thruput_seconds=60), exp_name='buf')
    yield buf
    close_replay_buffer(buf)


def test_frozen_model_scores_each_stored_image_once_across_repeated_sampling(tmp_path, naive_buffer):
    model, every_time = frozen_pair(tmp_path)
    scored, scored_every_time = [], []
    count_forward_calls(model, scored)
    count_forward_calls(every_time, scored_every_time)
    naive_buffer.push(online_transitions(20), cur_collector_envstep=0)
    seen = set()
    for it in range(12):
        batch = naive_buffer.sample(8, it)
        seen |= {int(t['obs'][0]) for t in batch}
        out = model.estimate(batch)
        ref = every_time.estimate(batch)
        # the same rewards as scoring every time, and the learner's copies carry neither image nor stored score
        assert torch.allclose(torch.stack([t['reward'] for t in out]), torch.stack([t['reward'] for t in ref]))
        assert not any(SCORE_KEY in t or 'reward_image' in t for t in out)
    assert sum(scored) == len(seen) < 12 * 8  # each distinct transition once
    assert sum(scored_every_time) == 12 * 8  # score_once off: every sampled image, every time


def test_frozen_model_reuses_the_score_of_a_transition_stored_without_its_image(tmp_path):
    model, _ = frozen_pair(tmp_path)
    scored = []
    count_forward_calls(model, scored)
    data = online_transitions(6)
    first = model.estimate(data)  # as our entry does when transitions enter the buffer
    stored = [{k: v for k, v in t.items() if k != 'reward_image'} for t in data]
    again = model.estimate(stored)
    assert sum(scored) == 6
    assert [float(t['reward']) for t in again] == [float(t['reward']) for t in first]


def test_cotrained_model_scores_again_after_a_weight_update(tmp_path, naive_buffer):
    model = make_model(reward_mode='per_step', use_soft_reward=True, update_per_collect=2, batch_size=4)
    scored = []
    count_forward_calls(model, scored)
    data = online_transitions(10)
    naive_buffer.push(data, cur_collector_envstep=0)
    everything = lambda it: naive_buffer.sample(10, it, replace=False)  # noqa: E731
    model.estimate(everything(0))
    model.estimate(everything(1))
    assert sum(scored) == 10  # unchanged weights: scored once
    version = model.model_version
    model.collect_data(data)
    assert model.train() is not None
    assert model.model_version != version
    out = model.estimate(everything(2))
    assert sum(scored) == 20  # the new weights scored every stored image again
    fresh = model.predict_proba(np.stack([t['reward_image'] for t in data]))
    probs = {int(t['obs'][0]): float(t['reward']) for t in out}
    assert [probs[i] for i in range(10)] == pytest.approx(fresh.tolist(), abs=1e-6)
    assert all(t[SCORE_KEY].version == model.model_version for t in data)  # stored with the transitions


def test_train_interval_keeps_stored_scores_between_trainings(tmp_path, naive_buffer):
    model = make_model(reward_mode='per_step', use_soft_reward=True, update_per_collect=2, batch_size=4,
                       train_interval=3)
    scored = []
    count_forward_calls(model, scored)
    data = online_transitions(10)
    naive_buffer.push(data, cur_collector_envstep=0)
    everything = lambda it: naive_buffer.sample(10, it, replace=False)  # noqa: E731
    model.collect_data(data)
    model.estimate(everything(0))
    for it in (1, 2):  # the calls between trainings add data and leave the weights (and stored scores) alone
        assert model.train() is None
        model.estimate(everything(it))
    assert sum(scored) == 10 and model.train_iter == 0
    assert model.train() is not None  # the third call trains
    assert model.train_iter == 2
    model.estimate(everything(3))
    assert sum(scored) == 20
    with pytest.raises(ValueError, match='train_interval'):
        make_model(train_interval=0)


def test_demo_mix_samples_share_the_stored_score(tmp_path, monkeypatch):
    import ding_ext.demo_replay_buffer  # noqa: F401  (registers demo_mix)
    monkeypatch.chdir(tmp_path)
    d = str(tmp_path / 'demos')
    write_metadata(d, dict(control_mode='pd_ee_delta_pos'))
    rng = np.random.default_rng(0)
    write_episode(d, 's1', dict(obs=rng.random((6, OBS), np.float32), next_obs=rng.random((6, OBS), np.float32),
                                action=rng.random((6, 2), np.float32), reward=np.zeros(6, np.float32),
                                done=np.arange(6) == 5, success=np.arange(6) >= 3,
                                image=rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), image_step=np.arange(6),
                                reward_state=rng.random((6, 7), np.float32)))
    buf = create_buffer(EasyDict(type='demo_mix', replay_buffer_size=100, deepcopy=False, demo_path=d,
                                 demo_sample_ratio=0.5, enable_track_used_data=False, periodic_thruput_seconds=60),
                        exp_name='buf')
    try:
        model, _ = frozen_pair(tmp_path)
        scored = []
        count_forward_calls(model, scored)
        online = online_transitions(6)
        model.estimate(online)  # scored as they enter the buffer, stored without their images (as our entry does)
        buf.push([{k: v for k, v in t.items() if k != 'reward_image'} for t in online], cur_collector_envstep=0)
        demos_seen = set()
        for it in range(10):
            batch = buf.sample(8, it)  # demos are drawn with replacement: a batch may hold one twice
            demos_seen |= {id(t['obs']) for t in batch if t['is_demo']}
            # the demos keep their images and frame_info (a gated model's joint velocities) although the online
            # transitions have none; estimate() hands the learner neither
            assert all(len(t['frame_info']['reward_state']) == 7 for t in batch if t['is_demo'])
            out = model.estimate(batch)
            assert sum(t['is_demo'] for t in out) == 4 and not any('frame_info' in t for t in out)
        assert sum(scored) == 6 + len(demos_seen)  # each online transition and each sampled demo scored once
    finally:
        close_replay_buffer(buf)


@pytest.mark.parametrize('channels_last', [True, False])
def test_fast_scoring_gives_the_plain_networks_probabilities(channels_last):
    """BatchNorm folding and channels_last change the arithmetic's order only: within 1e-5 of the plain network."""
    model = make_model(channels_last=channels_last)
    images, _ = separable_images(6)
    model.train_step(images, torch.tensor([1.0] * 6 + [0.0] * 6))  # non-trivial BatchNorm statistics
    with torch.inference_mode():
        plain = torch.sigmoid(model.network.eval()(model.preprocess_images(images)))
    fast = model.predict_proba(images)
    assert torch.allclose(fast, plain, atol=1e-5)
    assert 'batchnorm folded' in model.inference_network.description
    model.train_step(images, torch.tensor([1.0] * 6 + [0.0] * 6))  # new weights: the fast copy follows them
    with torch.inference_mode():
        plain = torch.sigmoid(model.network.eval()(model.preprocess_images(images)))
    assert torch.allclose(model.predict_proba(images), plain, atol=1e-5)


def test_a_failing_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    import torch._inductor.config as inductor_config
    monkeypatch.setattr(inductor_config.cpp, 'cxx', ('/nonexistent/c++', ))  # no C++ compiler: compilation fails
    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    fast = InferenceNetwork(net, channels_last=False, compile=True)
    x = torch.rand(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with torch.inference_mode():
            out = fast(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any('torch.compile' in m and 'eager' in m for m in messages), messages
    assert fast.compile_error and 'torch.compile failed' in fast.description
    with torch.inference_mode():
        assert torch.allclose(out, net(x), atol=1e-5)
    torch._dynamo.reset()


def test_bad_channels_last_setting_is_refused():
    with pytest.raises(ValueError, match='channels_last'):
        make_model(channels_last='yes')
