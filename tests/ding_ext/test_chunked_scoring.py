"""Chunked scoring and the pinned upload to CUDA devices (ding_ext.chunked_scoring), the uint8 normalisation pass.

The CUDA tests run where a GPU is present (the device machine of a development session); the CPU tests run
everywhere and cover the settings' validation and the chunking.
"""
import numpy as np
import pytest
import torch

from ding_ext.chunked_scoring import PinnedUploader, resolve_pinned_upload, score_in_chunks
from ding_ext.image_utils import IMAGENET_MEAN, IMAGENET_STD, preprocess_images

from .helpers import make_model, separable_images

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_uint8_is_normalised_without_a_float_copy_and_matches_float_input():
    x = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    got = preprocess_images(x, (3, 24, 24), True, 'cpu')
    want = (torch.from_numpy(x).permute(0, 3, 1, 2).double() / 255 - torch.tensor(IMAGENET_MEAN).double().view(
        1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).double().view(1, 3, 1, 1)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert torch.allclose(got, preprocess_images(x.astype(np.float32) / 255, (3, 24, 24), True, 'cpu'), atol=1e-5)
    # a list mixing images that need a resize (float after it) with ones that do not (still uint8)
    mixed = preprocess_images([x[0], x[1, :12, :12]], (3, 24, 24), True, 'cpu')
    assert torch.equal(mixed[0], got[0]) and mixed.shape == (2, 3, 24, 24)


def test_chunked_scores_equal_one_pass():
    model = make_model()
    images, _ = separable_images(7)
    one = model.predict_proba(images)
    model.cfg.inference_batch_size = 3  # 5 chunks, the last one short
    assert torch.allclose(model.predict_proba(images), one, atol=1e-6)
    assert torch.allclose(model.predict_proba(list(images)), one, atol=1e-6)
    calls = []
    score_in_chunks(images, 4, lambda part: calls.append(len(part)) or torch.zeros(len(part)))
    assert calls == [4, 4, 4, 2]


def test_host_batches_the_uploader_takes():
    from ding_ext.chunked_scoring import _host_items, _host_tensor
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert torch.equal(_host_tensor(x[:, ::-1]), torch.from_numpy(x[:, ::-1].copy()))  # a flipped view is copied
    assert _host_tensor(x).data_ptr() == torch.from_numpy(x).data_ptr()  # no copy otherwise
    assert _host_tensor(np.array([x[0], None], dtype=object)) is None
    assert len(_host_items(list(x))) == 2 and _host_items([x[0], x[0, :2]]) is None and _host_items([]) is None


def test_pinned_upload_setting_is_checked():
    assert resolve_pinned_upload('auto', torch.device('cpu')) is False
    assert resolve_pinned_upload('auto', torch.device('cuda')) is True
    assert resolve_pinned_upload(False, torch.device('cuda')) is False
    with pytest.raises(ValueError, match="pinned_upload must be true, false or 'auto'"):
        resolve_pinned_upload('yes', torch.device('cuda'))
    with pytest.raises(ValueError, match="pinned_upload stages images for a CUDA device; the model's device is cpu"):
        make_model(pinned_upload=True)
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        make_model(compile_mode='fastest')
    assert make_model().uploader is None  # 'auto' on the CPU: no staging


@cuda
def test_pinned_upload_returns_the_same_values_on_the_device():
    up = PinnedUploader(torch.device('cuda'))
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8) for _ in range(5)]
    outs = [up.upload(b) for b in batches]  # more uploads than buffers: each buffer is reused
    for b, o in zip(batches, outs):
        assert o.is_cuda and o.dtype == torch.uint8 and torch.equal(o.cpu(), torch.from_numpy(b))
    nchw_view = torch.from_numpy(batches[0]).permute(0, 3, 1, 2)  # copied in memory order, permuted back
    o = up.upload(nchw_view)
    assert o.shape == nchw_view.shape and torch.equal(o.cpu(), nchw_view)
    stacked = up.upload(list(batches[1]))
    assert torch.equal(stacked.cpu(), torch.from_numpy(batches[1]))
    floats = rng.random((3, 8, 8, 3), dtype=np.float32)
    assert torch.equal(up.upload(floats).cpu(), torch.from_numpy(floats))
    on_gpu = torch.zeros(2, 8, 8, 3, device='cuda')
    assert up.upload(on_gpu) is on_gpu  # already there: passed through
    mixed = [batches[0][0], batches[0][0, :8]]
    assert up.upload(mixed) is mixed  # differently sized: scored as given


@cuda
@pytest.mark.parametrize('chunk', [256, 3])
def test_pinned_upload_gives_the_probabilities_of_the_plain_copy(chunk):
    images, _ = separable_images(6)
    plain = make_model(pinned_upload=False, inference_batch_size=chunk).to_device('cuda')
    pinned = make_model(inference_batch_size=chunk).to_device('cuda')  # 'auto': on for CUDA
    pinned.network.load_state_dict(plain.network.state_dict())
    assert pinned.uploader is not None and plain.uploader is None
    want = plain.predict_proba(images)
    assert torch.equal(pinned.predict_proba(images), want)
    assert torch.equal(pinned.predict_proba(list(images)), want)
    assert torch.equal(pinned.predict_proba(torch.from_numpy(images).cuda()), want)


@pytest.mark.parametrize('size', [(128, 128), (127, 96), (33, 45)])
def test_space_to_depth_stem_equals_the_resnet_stem(size):
    from ding_ext.space_to_depth_stem import SpaceToDepthStem
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 7, 2, 3)
    x = torch.randn(2, 3, *size)
    assert torch.allclose(SpaceToDepthStem(conv)(x), conv(x), atol=1e-5)
    with pytest.raises(ValueError, match="not a 7x7 / stride 2 / padding 3 convolution on 3 channels"):
        SpaceToDepthStem(torch.nn.Conv2d(3, 16, 3, 2, 1))


def test_scoring_with_the_space_to_depth_stem_follows_the_weights():
    from ding_ext.inference_network import resolve_space_to_depth_stem
    images, _ = separable_images(4)
    plain = make_model(space_to_depth_stem=False)
    s2d = make_model(space_to_depth_stem=True)
    s2d.network.load_state_dict(plain.network.state_dict())
    assert torch.allclose(s2d.predict_proba(images), plain.predict_proba(images), atol=1e-5)
    assert 'space-to-depth' in s2d.inference_network.description
    assert 'space-to-depth' not in plain.inference_network.description
    with torch.no_grad():  # new weights (as a training step makes them) reach the rewritten stem
        for m in (plain, s2d):
            m.network.backbone.conv1.weight.mul_(-2.0)
    assert torch.allclose(s2d.predict_proba(images), plain.predict_proba(images), atol=1e-5)
    assert resolve_space_to_depth_stem('auto', torch.device('cuda')) is True
    assert resolve_space_to_depth_stem('auto', torch.device('cpu')) is False
    with pytest.raises(ValueError, match="space_to_depth_stem must be true, false or 'auto'"):
        make_model(space_to_depth_stem='fast')


@cuda
def test_cuda_graphs_pad_each_batch_to_a_power_of_two_and_score_as_eager():
    images, _ = separable_images(5)
    eager = make_model(precision='fp32').to_device('cuda')
    graphs = make_model(precision='fp32', compile=True, compile_mode='reduce-overhead', cooptrain_reward=True)
    graphs.network.load_state_dict(eager.network.state_dict())
    graphs.to_device('cuda')
    for n in (3, 8, 10):
        assert torch.allclose(graphs.predict_proba(images[:n]), eager.predict_proba(images[:n]), atol=1e-4)
    assert 'CUDA graphs' in graphs.inference_network.description
