"""precision='int8': a quantised copy of the real ResNet scores on CPU, kept only where it agrees with fp32."""
import os

import numpy as np
import pytest
import torch

from ding_ext.int8_inference import check_agreement, int8_unavailable
from ding_ext.png_writer import write_png
from tests.ding_ext.helpers import make_model, separable_images

pytestmark = pytest.mark.skipif(int8_unavailable() is not None, reason=f"no int8 engine: {int8_unavailable()}")


def _folder(root, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
        write_png(os.path.join(root, 'success' if label else 'failure', f'{i:04d}.png'), image)
    return root


def _trained_checkpoint(tmp_path, images, labels):
    """A ResNet classifier that separates the images: its head trained (on the random trunk's features, which
    separate a bright square from noise), saved with its metadata."""
    torch.manual_seed(0)
    model = make_model(hidden_dim=32)
    net = model.network.eval()
    with torch.no_grad():
        features = net.backbone(model.preprocess_images(images).float())
    y = torch.as_tensor(labels, dtype=torch.float32)
    optimizer = torch.optim.Adam(net.head.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net.head(features).squeeze(-1), y).backward()
        optimizer.step()
    return model.save(str(tmp_path / 'ckpt.safetensors'))


def test_int8_copy_scores_like_fp32_and_says_so(tmp_path):
    images, labels = separable_images(48)
    data = _folder(str(tmp_path / 'data'), images, labels)
    ckpt = _trained_checkpoint(tmp_path, images, labels)
    frozen = dict(cooptrain_reward=False, checkpoint_path=ckpt, hidden_dim=32)
    fp32 = make_model(**frozen)
    int8 = make_model(**frozen, precision='int8', int8_calibration_data=data)
    test_images, _ = separable_images(24, seed=1)  # unseen images
    p32, p8 = fp32.predict_proba(test_images), int8.predict_proba(test_images)
    assert 'int8' in int8.inference_network.description
    choice = int8.precision_choice
    assert choice['precision'] == 'int8' and choice['int8_check']['accepted']
    check = choice['int8_check']
    assert check['images'] == 96 and check['success'] == 48 and check['calibration_images'] == 96
    assert abs(check['int8']['precision'] - check['fp32']['precision']) <= 0.005
    assert check['fp32']['recall'] > 0.9  # the trained classifier separates the folder
    assert (p32 - p8).abs().max() < 0.05  # quantisation noise, not a different function
    assert torch.equal(fp32.compute_rewards(test_images), int8.compute_rewards(test_images))
    # the quantised copy is built again when the weights change (a reload), never scored stale
    before = int8.inference_network._net
    int8.load(ckpt)
    int8.predict_proba(test_images[:2])
    assert int8.inference_network._net is not before


def test_a_copy_that_disagrees_is_refused_and_scoring_stays_fp32(tmp_path):
    """Untrained weights with the threshold at the median probability: int8 noise flips decisions near it, and
    with no tolerance the copy is refused."""
    images, labels = separable_images(48)
    data = _folder(str(tmp_path / 'data'), images, labels)
    torch.manual_seed(1)
    ckpt = make_model(hidden_dim=32).save(str(tmp_path / 'random.safetensors'))
    fp32 = make_model(cooptrain_reward=False, checkpoint_path=ckpt, hidden_dim=32)
    median = float(fp32.predict_proba(images).median())
    int8 = make_model(cooptrain_reward=False, checkpoint_path=ckpt, hidden_dim=32, reward_threshold=median,
                      precision='int8', int8_calibration_data=data, int8_tolerance=0.0)
    p = int8.predict_proba(images)
    assert int8.precision_choice['precision'] == 'fp32' and not int8.precision_choice['int8_check']['accepted']
    assert 'int8' not in int8.inference_network.description
    assert torch.allclose(p, fp32.predict_proba(images), atol=1e-5)


def test_agreement_check():
    labels = np.array([1, 1, 0, 0], bool)
    same = check_agreement([0.9, 0.8, 0.1, 0.2], [0.88, 0.81, 0.12, 0.2], labels, 0.5, 0.005)
    assert same['accepted'] and same['decisions_agree'] == 1.0 and same['fp32'] == same['int8']
    worse = check_agreement([0.9, 0.8, 0.1, 0.2], [0.9, 0.4, 0.6, 0.2], labels, 0.5, 0.005)
    assert not worse['accepted'] and worse['int8']['recall'] == 0.5 and worse['decisions_agree'] == 0.5


def test_bad_int8_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="needs int8_calibration_data"):
        make_model(cooptrain_reward=False, precision='int8')
    with pytest.raises(ValueError, match="scores a frozen model"):
        make_model(cooptrain_reward=True, precision='int8', int8_calibration_data=str(tmp_path))
    with pytest.raises(ValueError, match="exclude each other"):
        make_model(cooptrain_reward=False, precision='int8', int8_calibration_data=str(tmp_path), compile=True)
    from ding_ext.precision import resolve_precision
    with pytest.raises(ValueError, match="scores on the CPU"):
        resolve_precision('int8', torch.device('cuda'))


@pytest.mark.parametrize('fusion', ['early', 'late', 'motion'])
def test_clip_networks_of_every_fusion_quantise(fusion):
    """The int8 path traces the network with torch.fx: every clip fusion must trace, and score close to fp32."""
    from ding_ext.int8_inference import quantize_network
    from ding_ext.networks import ResNetClassifier
    torch.manual_seed(0)
    net = ResNetClassifier(hidden_dim=32, frames=2, fusion=fusion).eval()
    q = quantize_network(net, torch.randn(8, 6, 48, 48))
    x = torch.randn(4, 6, 48, 48)
    with torch.no_grad():
        assert (torch.sigmoid(q(x)) - torch.sigmoid(net(x))).abs().max() < 0.05
