"""ResNetRewardModel: the DI-engine reward-model contract, numerically."""
import itertools
import os

import numpy as np
import pytest
import torch

from .helpers import count_forward_calls, force_probability, make_model, separable_images

ENV_R = [0.1, -0.2, 0.3, 0.5]
DONE = [False, False, False, True]


def transitions(images=None, with_image=True):
    images = images if images is not None else np.random.default_rng(0).integers(0, 255, (4, 40, 48, 3), np.uint8)
    out = []
    for i in range(4):
        t = dict(obs=np.zeros(3, np.float32), reward=torch.tensor([ENV_R[i]]), done=DONE[i], success=DONE[i])
        if with_image:
            t['reward_image'] = images[i]
        out.append(t)
    return out


def expected_rewards(reward_mode, combine_mode, soft, p, sr=2.0, fr=-1.0, w=0.5, ew=3.0, thr=0.5):
    r_model = p if soft else (sr if p > thr else fr)
    out = []
    for env, done in zip(ENV_R, DONE):
        r = r_model if (reward_mode == 'per_step' or done) else 0.0
        out.append({'replace': w * r, 'add': env + w * r, 'weighted': ew * env + w * r}[combine_mode])
    return out


@pytest.mark.parametrize(
    "reward_mode,combine_mode,soft,p",
    list(itertools.product(['per_step', 'terminal'], ['replace', 'add', 'weighted'], [False, True], [0.8, 0.3]))
)
def test_estimate_every_mode(reward_mode, combine_mode, soft, p):
    model = make_model(
        reward_mode=reward_mode, combine_mode=combine_mode, use_soft_reward=soft, success_reward=2.0,
        fail_reward=-1.0, reward_weight=0.5, env_reward_weight=3.0, reward_threshold=0.5
    )
    force_probability(model, p)
    data = transitions()
    before = [t['reward'].clone() for t in data]
    out = model.estimate(data)
    got = [float(t['reward'].reshape(-1)[0]) for t in out]
    assert got == pytest.approx(expected_rewards(reward_mode, combine_mode, soft, p), abs=1e-5)
    # the input transitions (the replay buffer's) keep their rewards and images
    for t, b in zip(data, before):
        assert torch.equal(t['reward'], b) and 'reward_image' in t
    assert all('reward_image' not in t for t in out)
    assert all(t['reward'].shape == (1, ) for t in out)


def test_threshold_is_strict_and_configurable():
    model = make_model(reward_threshold=0.9, success_reward=1.0, fail_reward=0.0)
    assert model.apply_threshold(torch.tensor([0.89, 0.9, 0.91])).tolist() == [0.0, 0.0, 1.0]


def test_per_step_missing_image_names_the_key():
    model = make_model(reward_mode='per_step', image_key='camera_rgb')
    with pytest.raises(KeyError, match="camera_rgb"):
        model.estimate(transitions())


def test_terminal_mode_needs_image_only_on_done():
    model = make_model(reward_mode='terminal', combine_mode='add')
    force_probability(model, 0.9)
    data = transitions()
    for t in data[:3]:
        del t['reward_image']
    out = model.estimate(data)
    assert [float(t['reward']) for t in out] == pytest.approx([0.1, -0.2, 0.3, 1.5])
    data = transitions()  # fresh: the first call stored the done transition's probability with it
    del data[3]['reward_image']
    with pytest.raises(KeyError, match="reward_image"):
        model.estimate(data)


def test_image_found_by_dotted_path_and_label_in_info():
    model = make_model(reward_mode='per_step', image_key='next_obs.image')
    force_probability(model, 0.7)
    imgs = np.zeros((4, 32, 32, 3), np.uint8)
    data = [dict(next_obs=dict(image=imgs[i]), reward=torch.tensor([0.0]), done=False, info=dict(success=i == 0))
            for i in range(4)]
    assert [float(t['reward']) for t in model.estimate(data)] == [1.0] * 4
    model.collect_data(data)
    assert len(model.success_images) == 1 and len(model.failure_images) == 3


def test_estimate_is_batched_in_chunks():
    model = make_model(reward_mode='per_step', inference_batch_size=3)
    force_probability(model, 0.6)
    calls = []
    count_forward_calls(model, calls)
    imgs = np.zeros((7, 32, 32, 3), np.uint8)
    data = [dict(reward=torch.tensor([0.0]), done=False, reward_image=imgs[i]) for i in range(7)]
    model.estimate(data)
    assert calls == [3, 3, 1]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_inference_matches_fp32(precision):
    images, _ = separable_images(8)
    fp32 = make_model(image_size=[3, 32, 32])
    low = make_model(image_size=[3, 32, 32], precision=precision)
    low.network.load_state_dict(fp32.network.state_dict())
    p32, plow = fp32.predict_proba(images), low.predict_proba(images)
    assert plow.dtype == torch.float32
    assert torch.allclose(p32, plow, atol=0.05)


def test_auto_precision_picks_low_precision_only_where_it_is_native(tmp_path):
    from ding_ext.precision import cpu_flags, resolve_precision
    cpu = torch.device('cpu')
    assert resolve_precision('bf16', cpu) == ('bf16', 'set in the config')  # explicit choices are kept
    assert resolve_precision('auto', cpu, flags={'avx2', 'avx512_bf16'})[0] == 'bf16'
    assert resolve_precision('auto', cpu, flags={'avx2', 'amx_bf16'})[0] == 'bf16'
    choice, reason = resolve_precision('auto', cpu, flags={'avx2', 'avx512f'})
    assert choice == 'fp32' and 'emulated' in reason
    with pytest.raises(ValueError, match='precision'):
        resolve_precision('int4', cpu)
    # this machine's own flags, read from /proc/cpuinfo, decide for a model built with precision='auto'
    native = bool(cpu_flags() & {'avx512_bf16', 'amx_bf16'})
    model = make_model(image_size=[3, 32, 32], precision='auto')
    assert model.precision_choice['precision'] == ('bf16' if native else 'fp32')
    assert model.dtype == (torch.bfloat16 if native else torch.float32)
    flags = tmp_path / 'cpuinfo'
    flags.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16\n")
    assert cpu_flags(str(flags)) == {'fpu', 'sse', 'avx512_bf16'} and cpu_flags(str(tmp_path / 'none')) == set()


def test_collect_train_clear_and_tensorboard(tb_logger, tmp_path):
    model = make_model(tb_logger, update_per_collect=3, batch_size=8, clear_buffer_per_iters=5)
    data = transitions()
    assert model.train() is None  # only failures so far? no: no data at all
    model.collect_data(data)
    assert len(model.success_images) == 1 and len(model.failure_images) == 3
    before = [p.clone() for p in model.network.parameters()]
    stats = model.train()
    assert set(stats) == {'reward_loss', 'accuracy'} and model.train_iter == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.network.parameters()))
    model.clear_data(3)  # 3 % 5 != 0: kept
    assert len(model.failure_images) == 3
    model.clear_data(10)
    assert model.success_images == [] and model.failure_images == []
    tb_logger.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = acc.Tags()['scalars']
    assert 'reward_model/reward_loss' in tags and 'reward_model/accuracy' in tags
    assert len(acc.Scalars('reward_model/reward_loss')) == 3


def test_frozen_model_does_not_collect_or_train(tmp_path):
    ckpt = make_model().save(str(tmp_path / "m.safetensors"))
    model = make_model(cooptrain_reward=False, checkpoint_path=ckpt)
    before = [p.clone() for p in model.network.parameters()]
    model.collect_data(transitions())
    assert model.success_images == [] and model.train() is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.network.parameters()))


def test_frozen_model_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        make_model(cooptrain_reward=False, checkpoint_path=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="checkpoint_path"):
        make_model(cooptrain_reward=False)


@pytest.mark.parametrize("key,value,match", [
    ("reward_mode", "sometimes", "reward_mode"), ("combine_mode", "mul", "combine_mode"),
    ("precision", "fp8", "precision"), ("arch", "resnet19", "arch"), ("image_size", [32, 32], "image_size"),
])
def test_bad_config_names_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        make_model(**{key: value})


def test_training_reaches_95_percent_held_out():
    torch.manual_seed(0)
    np.random.seed(0)
    model = make_model(batch_size=32, update_per_collect=60, learning_rate=1e-3)
    train_x, train_y = separable_images(64, seed=1)
    model.add_labelled_images(list(train_x), list(train_y))
    model.train()
    test_x, test_y = separable_images(50, seed=2)
    pred = (model.predict_proba(test_x) > 0.5).numpy()
    acc = float((pred == test_y).mean())
    assert acc >= 0.95, acc


def test_debug_images_named_and_ids_continue(tmp_path, monkeypatch):
    dbg = tmp_path / "dbg"
    model = make_model(reward_mode='per_step', debug_save_dir=str(dbg))
    force_probability(model, 0.75)
    model.estimate(transitions())
    model.flush_debug_images()
    names = sorted(os.listdir(dbg / "resnet_success"))
    assert names == [f"{i:06d}_prob0.7500.png" for i in range(4)]
    assert os.listdir(dbg / "resnet_fail") == []
    # a restart (new model, env var instead of config) continues the ids, in the other folder
    monkeypatch.setenv("DEBUG_IMAGE_SAVE_DIR", str(dbg))
    model2 = make_model(reward_mode='terminal')
    force_probability(model2, 0.2)
    model2.estimate(transitions())
    model2.estimate(transitions())
    model2.flush_debug_images()
    assert sorted(os.listdir(dbg / "resnet_fail")) == ["000004_prob0.2000.png", "000005_prob0.2000.png"]
    import cv2
    img = cv2.imread(str(dbg / "resnet_fail" / "000004_prob0.2000.png"))
    assert img.shape == (40, 48, 3)
