"""Image preprocessing errors, checkpoint round trips, metadata checks, RewardManager."""
import os
import stat

import numpy as np
import pytest
import torch
from easydict import EasyDict

from ding_ext.checkpoint_io import load_checkpoint, save_checkpoint
from ding_ext.image_utils import IMAGENET_MEAN, IMAGENET_STD, preprocess_images

from .helpers import force_probability, make_model, separable_images


def test_layouts_and_dtypes_agree():
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (2, 24, 20, 3), dtype=np.uint8)
    a = preprocess_images(nhwc, (3, 24, 20), normalize=False)
    b = preprocess_images(torch.from_numpy(nhwc).permute(0, 3, 1, 2), (3, 24, 20), normalize=False)
    c = preprocess_images(nhwc.astype(np.float32) / 255.0, (3, 24, 20), normalize=False)
    d = preprocess_images(nhwc[0], (3, 24, 20), normalize=False)
    assert a.shape == (2, 3, 24, 20) and a.dtype == torch.float32
    assert torch.allclose(a, b) and torch.allclose(a, c, atol=1e-6) and torch.allclose(a[:1], d)
    assert float(a.max()) <= 1.0 and float(a.min()) >= 0.0


def test_resize_and_normalise():
    img = np.full((1, 50, 70, 3), 255, np.uint8)
    x = preprocess_images(img, (3, 32, 32), normalize=True)
    assert x.shape == (1, 3, 32, 32)
    want = [(1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert x[0, :, 5, 5].tolist() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("images,match", [
    (np.zeros((2, 32, 32, 4), np.uint8), "3 channels"),
    (np.zeros((2, 1, 32, 32), np.uint8), "3 channels"),
    (np.full((2, 32, 32, 3), 1.5, np.float32), r"\[0, 1\]"),
    (np.full((2, 32, 32, 3), -0.1, np.float32), r"\[0, 1\]"),
    (np.full((2, 32, 32, 3), np.nan, np.float32), "NaN"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    ([], "empty"),
    (np.zeros((32, 32), np.uint8), "3-d"),
    (np.zeros((2, 32, 32, 3), np.int64), "uint8 or float"),
])
def test_bad_images_give_clear_errors(images, match):
    with pytest.raises(ValueError, match=match):
        preprocess_images(images, (3, 32, 32))


def test_model_rejects_bad_images():
    model = make_model()
    with pytest.raises(ValueError, match="3 channels"):
        model.predict_proba(np.zeros((2, 32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        model.predict_proba(np.zeros((0, 32, 32, 3), np.uint8))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tmp_path, suffix):
    images, _ = separable_images(4)
    model = make_model(arch='resnet18', hidden_dim=16)
    path = model.save(str(tmp_path / f"m{suffix}"))
    _, meta = load_checkpoint(path)
    assert meta['arch'] == 'resnet18' and meta['hidden_dim'] == 16 and meta['image_size'] == [3, 32, 32]
    assert meta['normalize'] is True
    loaded = make_model(checkpoint_path=path)
    assert torch.allclose(model.predict_proba(images), loaded.predict_proba(images), atol=1e-6)


def test_save_via_pipeline_signature(tmp_path):
    model = make_model()
    path = model.save(path=str(tmp_path / "exp"), name='best')
    assert path == str(tmp_path / "exp" / "reward_model" / "best_model.safetensors")
    make_model(checkpoint_path=path)


@pytest.mark.parametrize("field,value", [("arch", "resnet34"), ("hidden_dim", 32), ("image_size", [3, 64, 64]),
                                         ("normalize", False)])
def test_metadata_mismatch_names_field_and_values(tmp_path, field, value):
    path = make_model().save(str(tmp_path / "m.safetensors"))
    stored = {'arch': 'resnet18', 'hidden_dim': 16, 'image_size': [3, 32, 32], 'normalize': True}[field]
    with pytest.raises(ValueError) as e:
        make_model(checkpoint_path=path, **{field: value})
    msg = str(e.value)
    assert repr(field) in msg and repr(stored) in msg and repr(value) in msg


def test_env_metadata_is_saved_and_checked(tmp_path):
    path = make_model(env_metadata={'control_mode': 'pd_joint_delta_pos'}).save(str(tmp_path / "m.safetensors"))
    assert load_checkpoint(path)[1]['control_mode'] == 'pd_joint_delta_pos'
    with pytest.raises(ValueError, match="control_mode"):
        make_model(checkpoint_path=path, env_metadata={'control_mode': 'pd_ee_delta_pose'})
    with pytest.raises(ValueError, match="env_image_size"):
        make_model(env_metadata={'image_size': [3, 128, 128]}).save(str(tmp_path / "x.safetensors"))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_pt_state_dicts_with_wrapper_prefixes_load(tmp_path, prefix):
    src = make_model()
    force_probability(src, 0.66)
    path = str(tmp_path / "wrapped.pt")
    torch.save({prefix + k: v for k, v in src.network.state_dict().items()}, path)
    dst = make_model(checkpoint_path=path)
    assert dst.predict_proba(np.zeros((1, 32, 32, 3), np.uint8)).item() == pytest.approx(0.66, abs=1e-5)


def test_checkpoint_that_does_not_fit_is_an_error(tmp_path):
    path = str(tmp_path / "other.pt")
    torch.save({'foo.weight': torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="does not fit"):
        make_model(checkpoint_path=path)
    with pytest.raises(ValueError, match=".safetensors or .pt"):
        save_checkpoint(str(tmp_path / "m.bin"), {}, {})


def test_pretrained_local_weights_file(tmp_path):
    import torchvision
    ref = torchvision.models.resnet18(weights=None)
    path = str(tmp_path / "resnet18-local.pth")
    torch.save(ref.state_dict(), path)
    model = make_model(pretrained=path)
    assert torch.equal(model.network.backbone.conv1.weight, ref.conv1.weight)
    with pytest.raises(ValueError, match="local"):
        make_model(pretrained=True)


def test_create_reward_model_and_manager(tb_logger, tmp_path):
    import ding_ext
    from ding.reward_model import create_reward_model
    from ding_ext import RewardManager, ResNetRewardModel
    model = create_reward_model(EasyDict(type='resnet', image_size=[3, 32, 32]), 'cpu', tb_logger)
    assert isinstance(model, ResNetRewardModel)
    assert 'resnet' in RewardManager.get_available_models()
    cfg = ResNetRewardModel.default_config()
    assert cfg.type == 'resnet' and cfg.arch == 'resnet18' and cfg.reward_mode in ('terminal', 'per_step')

    class TinyReward(ding_ext.BaseImageRewardModel):
        config = dict(ding_ext.BaseImageRewardModel.config, type='tiny_test')

        def build_network(self):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 1), torch.nn.Flatten(0))

    RewardManager.register_model('tiny_test', TinyReward)
    RewardManager.register_model('tiny_test', TinyReward)  # same class again: fine
    with pytest.raises(ValueError, match="already registered"):
        RewardManager.register_model('resnet', TinyReward)
    assert 'tiny_test' in RewardManager.get_available_models()
    manager = RewardManager(dict(type='tiny_test', image_size=[3, 8, 8], normalize=False))
    r = manager.compute_rewards(torch.zeros(5, 3, 8, 8, dtype=torch.uint8))
    assert r.shape == (5, ) and set(r.tolist()) <= {0.0, 1.0}
    assert manager.to_device('cpu') is manager
    src = make_model()
    force_probability(src, 0.9)
    path = src.save(str(tmp_path / "m.safetensors"))
    manager = RewardManager(dict(type='resnet', image_size=[3, 32, 32], hidden_dim=16, checkpoint_path=path,
                                 cooptrain_reward=False, use_soft_reward=True))
    np.testing.assert_allclose(manager.compute_rewards(np.zeros((3, 40, 40, 3), np.uint8)).numpy(), 0.9, atol=1e-5)


def test_random_shift_moves_content_within_pad():
    from ding_ext.image_utils import random_shift
    x = torch.zeros(16, 3, 16, 16)
    x[:, :, 8, 8] = 1.0
    y = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    moved = 0
    for i in range(16):
        r, c = (y[i, 0] == 1.0).nonzero()[0].tolist()
        assert abs(r - 8) <= 2 and abs(c - 8) <= 2
        moved += (r, c) != (8, 8)
    assert moved > 0
    assert random_shift(x, 0) is x


# ---------------------------------------------------------------------------------------- bad inputs
def test_list_of_differently_sized_images_is_resized_per_image():
    model = make_model()
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)
    both = model.predict_proba([a, b])
    alone = torch.cat([model.predict_proba(a[None]), model.predict_proba(b[None])])
    assert both.shape == (2, )
    assert torch.allclose(both, alone, atol=1e-5)
    assert torch.allclose(model.compute_rewards((a, b)), model.apply_threshold(alone), atol=1e-5)
    x = preprocess_images([a, torch.from_numpy(b).permute(2, 0, 1)], (3, 32, 32))  # HWC and CHW items
    assert x.shape == (2, 3, 32, 32)
    assert torch.allclose(x[1:], preprocess_images(b, (3, 32, 32)), atol=1e-6)
    data = [dict(reward_image=im, reward=torch.zeros(1), done=True) for im in (a, b)]
    rewards = [t['reward'].item() for t in model.estimate(data)]
    assert rewards == pytest.approx(model.apply_threshold(alone).tolist(), abs=1e-5)


@pytest.mark.parametrize("images,index,shape", [
    ([np.zeros((32, 32, 3), np.uint8), np.zeros((40, 40, 4), np.uint8)], 1, (40, 40, 4)),
    ([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8)], 1, (32, 32)),
    ([np.zeros((1, 32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)], 0, (1, 32, 32, 3)),
])
def test_list_with_a_bad_image_names_its_index_and_shape(images, index, shape):
    with pytest.raises(ValueError) as e:
        preprocess_images(images, (3, 32, 32))
    assert f"image {index}" in str(e.value) and str(shape) in str(e.value)


def test_ambiguous_chw_or_gray_frames_is_refused():
    frames = np.zeros((3, 40, 48), np.uint8)  # three grayscale frames, or one CHW image?
    with pytest.raises(ValueError) as e:
        preprocess_images(frames, (3, 32, 32))
    msg = str(e.value)
    assert "(3, 40, 48)" in msg and "CHW" in msg and "grayscale" in msg and "4-d" in msg and "HWC" in msg
    with pytest.raises(ValueError, match="ambiguous"):
        make_model().compute_rewards(frames)
    with pytest.raises(ValueError, match="grayscale"):
        preprocess_images(np.zeros((40, 48), np.uint8), (3, 32, 32))
    with pytest.raises(ValueError, match="3 channels"):
        preprocess_images(np.zeros((40, 48, 5), np.uint8), (3, 32, 32))


def test_hwc_image_and_4d_batches_still_work():
    from ding_ext.image_utils import to_uint8_hwc
    rng = np.random.default_rng(4)
    hwc = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    one = preprocess_images(hwc, (3, 32, 32))
    assert one.shape == (1, 3, 32, 32)
    nhwc = np.stack([hwc, hwc[::-1]])
    nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2)
    a, b = preprocess_images(nhwc, (3, 32, 32)), preprocess_images(nchw, (3, 32, 32))
    assert a.shape == (2, 3, 32, 32) and torch.allclose(a, b) and torch.allclose(a[:1], one)
    assert preprocess_images(np.zeros((3, 40, 48, 3), np.uint8), (3, 32, 32)).shape == (3, 3, 32, 32)
    # to_uint8_hwc takes one image, so a CHW image is unambiguous there (debug images of an NCHW batch)
    np.testing.assert_array_equal(to_uint8_hwc(hwc), hwc)
    np.testing.assert_array_equal(to_uint8_hwc(nchw[0]), hwc)
    np.testing.assert_array_equal(to_uint8_hwc(nhwc[:1]), hwc)
    np.testing.assert_array_equal(to_uint8_hwc(hwc.astype(np.float32) / 255.0), hwc)


def test_debug_images_of_an_nchw_batch(tmp_path):
    model = make_model(debug_save_dir=str(tmp_path / 'dbg'))
    model.compute_rewards(torch.zeros(2, 3, 40, 48, dtype=torch.uint8))
    model.flush_debug_images()
    files = sorted(p for d in ('resnet_success', 'resnet_fail') for p in os.listdir(tmp_path / 'dbg' / d))
    assert len(files) == 2


def _checkpoint(tmp_path, suffix):
    return save_checkpoint(str(tmp_path / f"m{suffix}"), make_model().network.state_dict(), {'arch': 'resnet18'})


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_checkpoint_names_path(tmp_path, suffix):
    path = _checkpoint(tmp_path, suffix)
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        load_checkpoint(path)
    assert path in str(e.value) and e.value.__cause__ is not None


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_garbage_checkpoint_names_path(tmp_path, suffix):
    path = str(tmp_path / f"garbage{suffix}")
    with open(path, 'wb') as f:
        f.write(b"this is not a checkpoint at all\n" * 40)
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        load_checkpoint(path)
    assert path in str(e.value)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        make_model(checkpoint_path=path)


class _Exploit:
    """Unpickling this creates a file (a stand-in for arbitrary code)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, 'w'))


def test_pt_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pt')
    state = make_model().network.state_dict()
    torch.save({'state_dict': state, 'metadata': {'arch': 'resnet18', 'x': _Exploit(str(marker))}}, path)
    with pytest.raises(ValueError, match="refusing to load") as e:
        load_checkpoint(path)
    assert path in str(e.value) and "open" in str(e.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing to load"):
        make_model(checkpoint_path=path)
    assert not marker.exists()


def test_pt_checkpoints_with_json_metadata_load_weights_only(tmp_path):
    meta = {'arch': 'resnet18', 'hidden_dim': 16, 'image_size': [3, 32, 32], 'normalize': True,
            'nested': {'a': [1, 2.5, None, 'x']}, 'ok': False}
    src = make_model()
    force_probability(src, 0.3)
    path = save_checkpoint(str(tmp_path / 'm.pt'), src.network.state_dict(), meta)
    state, got = load_checkpoint(path)
    assert got == meta and set(state) == set(src.network.state_dict())
    path = save_checkpoint(str(tmp_path / 'e.pt'), src.network.state_dict(), EasyDict(env=dict(a=dict(b=(1, 2)))))
    assert load_checkpoint(path)[1] == {'env': {'a': {'b': [1, 2]}}}  # EasyDict values are saved as plain dicts
    ddp = str(tmp_path / 'ddp.pt')
    torch.save({'module.' + k: v for k, v in src.network.state_dict().items()}, ddp)
    dst = make_model(checkpoint_path=ddp)
    assert dst.predict_proba(np.zeros((1, 32, 32, 3), np.uint8)).item() == pytest.approx(0.3, abs=1e-5)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path, umask, mode):
    from ding_ext.checkpoint_io import write_json_atomic
    from ding_ext.png_writer import AsyncPngWriter, write_png
    old = os.umask(umask)
    try:
        paths = [_checkpoint(tmp_path, '.safetensors'), _checkpoint(tmp_path, '.pt')]
        paths.append(str(tmp_path / 'a.png'))
        write_png(paths[-1], np.zeros((8, 8, 3), np.uint8))
        writer = AsyncPngWriter()  # the background thread path
        paths.append(str(tmp_path / 'b.png'))
        writer.submit(paths[-1], np.zeros((8, 8, 3), np.uint8))
        writer.close()
        paths.append(str(tmp_path / 'x.json'))
        write_json_atomic(paths[-1], {'a': 1})
        plain = tmp_path / 'plain.txt'
        open(plain, 'w').close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(plain).st_mode) == mode
    for p in paths:
        assert stat.S_IMODE(os.stat(p).st_mode) == mode, p
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.tmp-')]


def test_image_crop_is_one_path_checked_and_stored(tmp_path):
    import torch.nn.functional as F
    from ding_ext.evaluate_reward_model import build_model_from_checkpoint
    from ding_ext.image_utils import preprocess_images
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1, 128, 96, 3), dtype=np.uint8)
    out = preprocess_images(img, (3, 32, 32), normalize=False, crop=[0.25, 0.5, 0.5, 0.5])
    box = torch.from_numpy(img).permute(0, 3, 1, 2).float().div(255)[..., 32:96, 48:96]
    want = F.interpolate(box, size=(32, 32), mode='bilinear', align_corners=False, antialias=True)
    assert torch.allclose(out, want, atol=1e-6)
    for bad in ([0.5, 0.5, 0.6, 0.2], [0, 0, 1], [0, 0, 0, 1], 'top'):
        with pytest.raises(ValueError, match='image_crop'):
            make_model(image_crop=bad)
    # the crop is part of the network's metadata: a checkpoint trained with it does not load without it
    cropped = make_model(image_crop=[0.0, 0.1875, 0.75, 0.75])
    path = cropped.save(str(tmp_path / 'cropped.safetensors'))
    with pytest.raises(ValueError, match='image_crop'):
        make_model(checkpoint_path=path, cooptrain_reward=False)
    rebuilt = build_model_from_checkpoint(path)
    assert rebuilt.cfg.image_crop == [0.0, 0.1875, 0.75, 0.75]
    x = rng.integers(0, 255, (3, 128, 128, 3), dtype=np.uint8)
    assert torch.allclose(rebuilt.predict_proba(x), cropped.predict_proba(x), atol=1e-6)
