"""Migration from RLinf: checkpoints of RLinf's ResNetRewardModel give the same probabilities here, and RLinf
``reward:`` YAML blocks (both styles) become our reward-model config."""
import logging
import os
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from easydict import EasyDict

from ding_ext import RewardManager
from ding_ext.rlinf_migration import format_ding_config, main, migrate_rlinf_yaml, rlinf_reward_to_ding

from .helpers import make_model

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# fp32 on the same CPU: the two networks run the same operations; only the preprocessing's order of operations differs
PROB_TOLERANCE = 1e-5


class RLinfLayoutResNetReward(nn.Module):
    """A stand-in with the structure and parameter names of RLinf's ResNetRewardModel: a torchvision ResNet whose
    ``fc`` is the reward head (Linear, ReLU, Dropout, Linear with ``hidden_dim``; one Linear without), the ImageNet
    statistics as non-persistent buffers, and RLinf's preprocessing (NHWC -> NCHW, uint8 / 255, bilinear resize
    without antialiasing, ImageNet normalisation)."""

    def __init__(self, arch='resnet18', hidden_dim=256, dropout=0.1, image_size=(3, 32, 32), seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.image_size = list(image_size)
        self.register_buffer('_mean', IMAGENET_MEAN.clone(), persistent=False)
        self.register_buffer('_std', IMAGENET_STD.clone(), persistent=False)
        self.backbone = getattr(torchvision.models, arch)(weights=None)
        n = self.backbone.fc.in_features
        if hidden_dim is not None:
            self.backbone.fc = nn.Sequential(nn.Linear(n, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                                             nn.Linear(hidden_dim, 1))
        else:
            self.backbone.fc = nn.Linear(n, 1)

    def randomise(self, seed=0):
        """Weights and batch-norm statistics of a trained-looking model, with probabilities spread over (0, 1)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, t in self.state_dict().items():
                if name.endswith('running_var'):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                elif name.endswith('running_mean'):
                    t.copy_(0.2 * torch.randn(t.shape, generator=g))
        self.eval()
        head = self.backbone.fc if isinstance(self.backbone.fc, nn.Linear) else self.backbone.fc[3]
        x = np.random.default_rng(seed).integers(0, 256, (16, *self.image_size[1:], 3), dtype=np.uint8)
        with torch.no_grad():  # logits centred at 0 with spread 2 on random images
            head.weight.mul_(2.0 / self.logits(x).std())
            head.bias.sub_(self.logits(x).mean())
        return self

    @torch.no_grad()
    def logits(self, images_nhwc_uint8):
        x = torch.from_numpy(images_nhwc_uint8).permute(0, 3, 1, 2).float() / 255.0
        h, w = self.image_size[1:]
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode='bilinear', align_corners=False)
        return self.backbone((x - self._mean) / self._std).squeeze(-1)

    def probabilities(self, images_nhwc_uint8):
        return torch.sigmoid(self.logits(images_nhwc_uint8))


def rlinf_model_block(checkpoint, hidden_dim=256, image_size=(3, 32, 32), precision='fp32'):
    return dict(model_type='resnet', arch='resnet18', pretrained=False, hidden_dim=hidden_dim, dropout=0,
                image_size=list(image_size), normalize=True, precision=precision, model_path=checkpoint)


def load_migrated(checkpoint, **block):
    """Our model from the RLinf config block that names ``checkpoint``, as a user migrating would build it."""
    import ding_ext  # noqa: F401
    from ding.reward_model import create_reward_model
    cfg = rlinf_reward_to_ding(dict(use_reward_model=True, reward_mode='per_step',
                                    model=rlinf_model_block(checkpoint, **block))).reward_model
    return create_reward_model(cfg, 'cpu', None)


def save_like_rlinf(module, tmp_path, how):
    from safetensors.torch import save_file
    state = module.state_dict()
    if how == 'fsdp_full_weights':  # RLinf's FSDP trainer: a raw state dict
        path = tmp_path / 'best_model' / 'actor' / 'model_state_dict' / 'full_weights.pt'
        path.parent.mkdir(parents=True)
        torch.save(state, path)
    elif how == 'model_state_dict':  # RLinf's first trainer: weights with the optimiser's state
        path = tmp_path / 'best_model.pt'
        opt = torch.optim.Adam(module.parameters())
        torch.save({'model_state_dict': state, 'optimizer_state_dict': opt.state_dict(), 'epoch': 7,
                    'best_val_acc': 0.93}, path)
    elif how == 'safetensors':
        path = tmp_path / 'reward.safetensors'
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif how == 'ddp_prefix':
        path = tmp_path / 'ddp.pt'
        torch.save({f'module.{k}': v for k, v in state.items()}, path)
    return str(path)


@pytest.mark.parametrize("how", ['fsdp_full_weights', 'model_state_dict', 'safetensors', 'ddp_prefix'])
def test_rlinf_checkpoint_gives_the_same_probabilities(tmp_path, how, caplog):
    rlinf = RLinfLayoutResNetReward(hidden_dim=64).randomise()
    assert {'backbone.fc.0.weight', 'backbone.fc.3.bias'} <= set(rlinf.state_dict())
    path = save_like_rlinf(rlinf, tmp_path, how)
    with caplog.at_level(logging.WARNING):
        ours = load_migrated(path, hidden_dim=64)
    assert "has no metadata" in caplog.text and "'hidden_dim': 64" in caplog.text
    assert ours.metadata()['resize_antialias'] is False
    rng = np.random.default_rng(1)
    for size in (32, 24, 57):  # at the model's size, resized up, resized down (plain bilinear, as RLinf)
        x = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        want = rlinf.probabilities(x)
        assert float(want.max() - want.min()) > 0.1  # the images score differently
        torch.testing.assert_close(ours.predict_proba(x), want, atol=PROB_TOLERANCE, rtol=0)
        torch.testing.assert_close(ours.compute_reward({'main_images': x}), want, atol=PROB_TOLERANCE, rtol=0)


def test_rlinf_linear_head_checkpoint_loads(tmp_path):
    rlinf = RLinfLayoutResNetReward(hidden_dim=None).randomise(seed=3)
    assert {'backbone.fc.weight', 'backbone.fc.bias'} <= set(rlinf.state_dict())
    path = save_like_rlinf(rlinf, tmp_path, 'fsdp_full_weights')
    ours = load_migrated(path, hidden_dim=None)
    x = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    torch.testing.assert_close(ours.predict_proba(x), rlinf.probabilities(x), atol=PROB_TOLERANCE, rtol=0)
    # RLinf's manager call on a migrated block: the reward is the probability (no success_reward in the block)
    block = dict(use_reward_model=True, reward_weight=3.0, model=rlinf_model_block(path, hidden_dim=None))
    manager = RewardManager(rlinf_reward_to_ding(block).reward_model)
    torch.testing.assert_close(manager.compute_rewards({'main_images': x}, ['pick'] * 6), 3.0 * rlinf.probabilities(x),
                               atol=3 * PROB_TOLERANCE, rtol=0)


def test_rlinf_checkpoint_that_does_not_fit_the_config_says_what_it_looks_like(tmp_path):
    path = save_like_rlinf(RLinfLayoutResNetReward(hidden_dim=64), tmp_path, 'fsdp_full_weights')
    with pytest.raises(ValueError, match=r"looks like \{'arch': 'resnet18', 'hidden_dim': 64\}.*'hidden_dim': 256"):
        load_migrated(path, hidden_dim=256)
    resnet34 = RLinfLayoutResNetReward(arch='resnet34', hidden_dim=None)
    path = str(tmp_path / 'r34.pt')
    torch.save(resnet34.state_dict(), path)
    with pytest.raises(ValueError, match="'arch': 'resnet34'"):
        load_migrated(path, hidden_dim=None)


def test_rlinf_resnet10_checkpoint_is_refused_by_name(tmp_path):
    path = str(tmp_path / 'best_model.pt')
    torch.save({'model_state_dict': {'backbone.conv1.weight': torch.zeros(64, 3, 7, 7),
                                     'backbone.fc.weight': torch.zeros(1000, 512),
                                     'classifier.1.weight': torch.zeros(256, 512)}}, path)
    with pytest.raises(ValueError, match="ResNet-10 with GroupNorm"):
        make_model().load_checkpoint(path)


def test_our_checkpoints_still_load_without_a_warning(tmp_path, caplog):
    path = make_model().save(str(tmp_path / 'ours.safetensors'))
    with caplog.at_level(logging.WARNING):
        make_model().load_checkpoint(path)
    assert "has no metadata" not in caplog.text


# ------------------------------------------------------------------------------------------------ configs
def write_yaml(tmp_path, text, name='rlinf.yaml'):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


MODEL_STYLE_YAML = """\
    defaults:
      - env/maniskill_pick_cube@env.train
      - override hydra/job_logging: stdout

    hydra:
      run:
        dir: .

    runner:
      logger:
        log_path: "../results"

    reward:
      use_reward_model: True
      group_name: "RewardGroup"

      # per_step: every frame; terminal: the last frame of an episode
      reward_mode: "terminal"

      success_reward: 1.0   # model reward when p > reward_threshold
      fail_reward: -0.5     # otherwise
      reward_threshold: 0.7

      # replace: w * r; add: env + w * r; weighted: env_w * env + w * r
      combine_mode: "weighted"
      reward_weight: 10.0
      env_reward_weight: 0.5

      model:
        model_type: "resnet_reward"
        arch: "resnet18"
        hidden_dim: 64
        dropout: 0
        image_size: [3, 32, 32]
        normalize: true
        precision: "bf16"
        checkpoint_path: "${oc.env:RLINF_TEST_CKPT_ROOT}/best_model"
        # debug images of every scored frame
        debug_save_dir: "${runner.logger.log_path}/reward_debug"
    """


def test_model_style_yaml_migrates_every_key(tmp_path, monkeypatch):
    rlinf = RLinfLayoutResNetReward(hidden_dim=64).randomise()
    save_like_rlinf(rlinf, tmp_path, 'fsdp_full_weights')
    monkeypatch.setenv('RLINF_TEST_CKPT_ROOT', str(tmp_path))
    result = migrate_rlinf_yaml(write_yaml(tmp_path, MODEL_STYLE_YAML))
    cfg = result.reward_model
    assert result.style == 'model'
    assert cfg == dict(
        type='resnet', import_names=['ding_ext'], pretrained=False, resize_antialias=False, cooptrain_reward=False,
        pretrain_reward=False,
        reward_mode='terminal', arch='resnet18', hidden_dim=64, dropout=0.0, image_size=[3, 32, 32], normalize=True,
        precision='bf16', checkpoint_path=os.path.join(str(tmp_path), 'best_model', 'actor', 'model_state_dict',
                                                       'full_weights.pt'),
        debug_save_dir='../results/reward_debug', reward_weight=10.0, env_reward_weight=0.5, success_reward=1.0,
        fail_reward=-0.5, reward_threshold=0.7, use_soft_reward=False, combine_mode='weighted')
    assert any('group_name' in n for n in result.notes)
    # the migrated config runs: terminal frame scored, weighted with the env reward
    import ding_ext  # noqa: F401
    from ding.reward_model import create_reward_model
    model = create_reward_model(EasyDict(dict(cfg, precision='fp32', debug_save_dir=None)), 'cpu', None)
    x = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    p = rlinf.probabilities(x)
    assert (p > 0.7).any() and (p <= 0.7).any()
    data = [dict(reward_image=im, reward=torch.tensor([2.0]), done=True) for im in x]
    got = torch.stack([t['reward'] for t in model.estimate(data)]).squeeze(-1)
    want = 0.5 * 2.0 + 10.0 * torch.where(p > 0.7, torch.tensor(1.0), torch.tensor(-0.5))
    assert got.tolist() == want.tolist()


def test_later_model_style_yaml_keeps_rlinf_probability_reward(tmp_path):
    path = write_yaml(tmp_path, """\
        reward:
          use_reward_model: True
          group_name: "RewardGroup"
          standalone_realworld: False
          reward_mode: "per_step"
          reward_threshold: 0.6 # probabilities at or below it become 0
          reward_weight: 2.0
          env_reward_weight: 0.0
          model:
            model_path: null
            model_type: "resnet"
            pretrained: False
            arch: "resnet34"
            dropout: 0
            image_size: [3, 224, 224]
            normalize: true
            precision: "32-true"
        """)
    result = migrate_rlinf_yaml(path)
    cfg = result.reward_model
    assert cfg.use_soft_reward == 'above_threshold' and cfg.reward_threshold == 0.6
    assert cfg.combine_mode == 'replace' and cfg.reward_weight == 2.0 and cfg.env_reward_weight == 0.0
    assert cfg.hidden_dim is None and cfg.arch == 'resnet34' and cfg.precision == 'fp32'  # RLinf's defaults
    assert cfg.reward_mode == 'per_step' and cfg.checkpoint_path is None and cfg.dropout == 0.0
    assert any('set checkpoint_path' in n for n in result.notes)


FIRST_STYLE_YAML = """\
    env:
      train:
        reward_render_mode: "episode_end"

    # ResNet reward model
    reward:
      use_reward_model: True
      reward_model_type: "resnet"
      alpha: 2.0
      mode: "add"  # env reward + alpha * model reward

      resnet:
        checkpoint_path: "/ckpts/reward_checkpoints/best_model.pt"
        image_size: [3, 128, 128]
        threshold: 0.8
        use_soft_reward: False
        freeze_backbone: True
        hidden_dim: 128
        device: "cuda"
    """


def test_first_style_yaml_migrates(tmp_path):
    result = migrate_rlinf_yaml(write_yaml(tmp_path, FIRST_STYLE_YAML))
    cfg = result.reward_model
    assert result.style == 'first'
    assert cfg == dict(
        type='resnet', import_names=['ding_ext'], pretrained=False, resize_antialias=False, cooptrain_reward=False,
        pretrain_reward=False,
        arch='resnet18', hidden_dim=128, image_size=[3, 128, 128], normalize=True, precision='fp32',
        reward_mode='terminal', success_reward=1.0, fail_reward=0.0, reward_threshold=0.8, use_soft_reward=False,
        combine_mode='add', reward_weight=2.0, env_reward_weight=0.0,
        checkpoint_path='/ckpts/reward_checkpoints/best_model.pt')
    notes = '\n'.join(result.notes)
    assert 'ResNet-10' in notes and 'freeze_backbone' in notes and 'device' in notes and '>=' in notes
    # alpha scales the model reward: compute_reward gives alpha * {0, 1}, estimate adds the env reward
    model = make_model(**dict(cfg, checkpoint_path=None, cooptrain_reward=True, image_size=[3, 32, 32]))
    probs = model.predict_proba(np.zeros((1, 32, 32, 3), np.uint8))
    want = 2.0 * float(probs[0] > 0.8)
    assert model.compute_reward({'images': np.zeros((1, 32, 32, 3), np.uint8)}).tolist() == [want]
    out = model.estimate([dict(reward_image=np.zeros((32, 32, 3), np.uint8), reward=torch.tensor([0.25]), done=True)])
    assert out[0]['reward'].tolist() == [0.25 + want]


def test_first_style_without_render_mode_scores_every_step(tmp_path):
    text = FIRST_STYLE_YAML.replace('reward_render_mode: "episode_end"', 'reward_render_mode: "always"')
    text = text.replace('mode: "add"', 'mode: "replace"')
    cfg = migrate_rlinf_yaml(write_yaml(tmp_path, text)).reward_model
    assert cfg.reward_mode == 'per_step' and cfg.combine_mode == 'replace'


@pytest.mark.parametrize("yaml_text,match", [
    (MODEL_STYLE_YAML.replace('  group_name:', '  reward_scale: 2\n      group_name:'), r"reward\.reward_scale"),
    (MODEL_STYLE_YAML.replace('    arch:', '    backbone_lr: 0.1\n        arch:'), r"reward\.model\.backbone_lr"),
    (FIRST_STYLE_YAML.replace('    hidden_dim:', '    hiden_dim: 3\n        hidden_dim:'),
     r"reward\.resnet\.hiden_dim"),
    (MODEL_STYLE_YAML.replace('"resnet_reward"', '"buffered_vlm"'), "model_type is 'buffered_vlm'"),
    (MODEL_STYLE_YAML.replace('"weighted"', '"multiply"'), "combine_mode is 'multiply'"),
    (MODEL_STYLE_YAML.replace('"terminal"', '"history_buffer"'), "reward_mode is 'history_buffer'"),
    (MODEL_STYLE_YAML.replace('group_name: "RewardGroup"', 'standalone_realworld: True'), "standalone_realworld"),
    (MODEL_STYLE_YAML.replace('precision: "bf16"', 'precision: "int8"'), r"reward\.model\.precision is 'int8'"),
    (MODEL_STYLE_YAML, r"reward\.model\.checkpoint_path: cannot resolve .*RLINF_TEST_CKPT_ROOT is not set"),
    (FIRST_STYLE_YAML.replace('mode: "add"', 'mode: "average"'), "mode is 'average'"),
    ("runner:\n  seed: 0\n", "no 'reward:' block"),
])
def test_bad_rlinf_yaml_names_the_key(tmp_path, monkeypatch, yaml_text, match):
    monkeypatch.delenv('RLINF_TEST_CKPT_ROOT', raising=False)
    if 'RLINF_TEST_CKPT_ROOT' in yaml_text and 'resolve' not in match:
        yaml_text = yaml_text.replace('${oc.env:RLINF_TEST_CKPT_ROOT}', '/ckpts')
    with pytest.raises(ValueError, match=match):
        migrate_rlinf_yaml(write_yaml(tmp_path, yaml_text))


def test_reward_model_switched_off_migrates_to_none(tmp_path):
    result = migrate_rlinf_yaml(write_yaml(tmp_path, "reward:\n  use_reward_model: False\n  model:\n"
                                                     "    model_type: resnet\n"))
    assert result.reward_model is None and 'use_reward_model is false' in result.notes[0]
    assert 'reward_model = None' in format_ding_config(result)


def test_cli_prints_the_config_block(tmp_path, capsys):
    path = write_yaml(tmp_path, FIRST_STYLE_YAML)
    assert main([path]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith('# DI-engine reward-model config migrated from RLinf')
    namespace = {}
    exec(printed, namespace)
    assert namespace['reward_model'] == migrate_rlinf_yaml(path).reward_model
    assert namespace['reward_model_create'] == dict(type='resnet', import_names=['ding_ext'])
    bad = write_yaml(tmp_path, FIRST_STYLE_YAML.replace('alpha:', 'alfa:'), 'bad.yaml')
    assert main([bad]) == 2
    assert 'reward.alfa' in capsys.readouterr().err
