"""RLinf's reward-model calls on our models and RewardManager: compute_reward, scale_reward, load_checkpoint,
to_device, observations dicts, and their errors."""
import numpy as np
import pytest
import torch

from ding_ext import RewardManager

from .helpers import force_probability, make_model


def images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_compute_reward_reads_images_main_images_and_bare_images_alike():
    model = make_model(use_soft_reward=True, reward_weight=2.5)
    x = images()
    want = 2.5 * model.predict_proba(x)
    assert len(set(want.tolist())) == 4  # each image scores differently
    nchw_float = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    for obs in ({'images': x}, {'main_images': x}, {'images': nchw_float}, x, list(x),
                {'main_images': torch.from_numpy(x), 'states': np.zeros((4, 9), np.float32)}):
        r = model.compute_reward(obs)
        assert r.shape == (4, ) and r.dtype == torch.float32
        torch.testing.assert_close(r, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.compute_reward({'images': x}, ['pick the cube'] * 4), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.compute_reward({'images': x}, 'pick the cube'), want, atol=1e-5, rtol=0)


def test_compute_reward_is_scale_reward_of_the_thresholded_reward():
    model = make_model(success_reward=1.0, fail_reward=-1.0, reward_threshold=0.5, reward_weight=3.0)
    force_probability(model, 0.7)
    assert model.compute_reward({'images': images(2)}).tolist() == [3.0, 3.0]
    force_probability(model, 0.3)
    assert model.compute_reward({'images': images(2)}).tolist() == [-3.0, -3.0]
    assert model.scale_reward(torch.tensor([1.0, -2.0])).tolist() == [3.0, -6.0]


@pytest.mark.parametrize("combine_mode,env_weight,want", [('replace', 1.0, 6.0), ('add', 1.0, 6.5),
                                                            ('weighted', 4.0, 8.0)])
def test_estimate_combines_the_env_reward_with_scale_reward(combine_mode, env_weight, want):
    model = make_model(reward_mode='per_step', combine_mode=combine_mode, reward_weight=3.0,
                       env_reward_weight=env_weight, success_reward=2.0)
    force_probability(model, 0.9)
    out = model.estimate([dict(reward_image=images(1)[0], reward=torch.tensor([0.5]), done=False)])
    assert out[0]['reward'].tolist() == [want]
    assert model.scale_reward(model.compute_rewards(images(1))).tolist() == [6.0]


def test_soft_reward_above_threshold_zeroes_low_probabilities():
    model = make_model(use_soft_reward='above_threshold', reward_threshold=0.6)
    force_probability(model, 0.7)
    assert model.compute_reward({'images': images(2)}).tolist() == pytest.approx([0.7, 0.7], abs=1e-5)
    force_probability(model, 0.55)
    assert model.compute_reward({'images': images(2)}).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="use_soft_reward"):
        make_model(use_soft_reward='sometimes')


@pytest.mark.parametrize("observations,match", [
    ({'image': np.zeros((2, 32, 32, 3), np.uint8)}, r"'images' or 'main_images'; got keys \['image'\]"),
    ({'images': None, 'states': np.zeros((2, 3))}, "'images' or 'main_images'"),
    ({'images': np.zeros((2, 32, 32, 3), np.uint8), 'main_images': np.zeros((2, 32, 32, 3), np.uint8)}, "both"),
    ({'images': np.zeros((2, 32, 32, 3), np.uint8), 'states': np.zeros((3, 5))}, "3 rows but .* 2 images"),
    ({'images': np.zeros((2, 32, 32), np.uint8)}, "3-d"),
    ({'main_images': np.zeros((2, 32, 32, 5), np.uint8)}, "3 channels"),
    ({'images': np.zeros((0, 32, 32, 3), np.uint8)}, "empty"),
    ({'images': np.full((2, 32, 32, 3), 2.0, np.float32)}, r"\[0, 1\]"),
])
def test_bad_observations_give_clear_errors(observations, match):
    model = make_model()
    with pytest.raises(ValueError, match=match):
        model.compute_reward(observations)
    manager = RewardManager(dict(type='resnet', image_size=[3, 32, 32], hidden_dim=16))
    with pytest.raises(ValueError, match=match):
        manager.compute_rewards(observations)


def test_task_descriptions_must_match_the_batch():
    model = make_model()
    with pytest.raises(ValueError, match="2 entries for 3 images"):
        model.compute_reward({'images': images(3)}, ['a', 'b'])
    with pytest.raises(ValueError, match="list of strings"):
        model.compute_reward({'images': images(3)}, [1, 2, 3])


def test_manager_takes_an_observations_dict(tmp_path):
    src = make_model(use_soft_reward=True)
    path = src.save(str(tmp_path / 'm.safetensors'))
    manager = RewardManager(dict(type='resnet', image_size=[3, 32, 32], hidden_dim=16, checkpoint_path=path,
                                 cooptrain_reward=False, use_soft_reward=True, reward_weight=2.0))
    x = images(5)
    probs = src.predict_proba(x)
    torch.testing.assert_close(manager.compute_rewards({'images': x, 'states': np.zeros((5, 2))}), 2.0 * probs,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(manager.compute_rewards({'main_images': x}, ['lift'] * 5), 2.0 * probs,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(manager.compute_rewards(x), 2.0 * probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(manager.compute_probabilities({'main_images': x}), probs, atol=1e-5, rtol=0)
    assert manager.to_device('cpu') is manager and manager.model.device == torch.device('cpu')


def test_load_checkpoint_returns_metadata_and_to_device_keeps_training(tmp_path):
    src = make_model(env_metadata=dict(control_mode='pd_ee_delta_pos'))
    force_probability(src, 0.8)
    path = src.save(str(tmp_path / 'm.pt'))
    model = make_model(env_metadata=dict(control_mode='pd_ee_delta_pos'), batch_size=4)
    meta = model.load_checkpoint(path)
    assert meta['control_mode'] == 'pd_ee_delta_pos' and meta['hidden_dim'] == 16
    torch.testing.assert_close(model.predict_proba(images(2)), torch.full((2, ), 0.8), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="control_mode"):
        make_model(env_metadata=dict(control_mode='pd_joint_pos')).load_checkpoint(path)
    model.train_step(images(4), torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert model.to_device(None) is model and model.to_device('cpu') is model
    assert model.device == torch.device('cpu') and model.precision_choice['precision'] == 'fp32'
    stats = model.train_step(images(4), torch.tensor([1.0, 0.0, 1.0, 0.0]))  # the optimiser state moved along
    assert np.isfinite(stats['reward_loss'])
