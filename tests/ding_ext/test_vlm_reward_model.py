"""The qwen_vl reward model (VLMRewardModel) on a tiny random Qwen2-VL loaded from a local folder: prompt, frames,
yes/no scores, the reward-model contract, and the errors for what is missing."""
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from easydict import EasyDict

H = 56  # the smallest frame Qwen2-VL's processor takes whole (4 vision tokens)


def make_vlm(model_path, **overrides):
    import ding_ext  # noqa: F401  (registers 'qwen_vl')
    from ding.reward_model import create_reward_model
    cfg = dict(type='qwen_vl', model_path=model_path, image_size=[3, H, H], clip_length=2, num_frames=2)
    cfg.update(overrides)
    return create_reward_model(EasyDict(cfg), 'cpu', None)


def clips(n, frames=2, seed=0):
    """n filmstrips of ``frames`` random H x H frames side by side (NHWC uint8), as the env emits them."""
    return np.random.default_rng(seed).integers(0, 255, (n, H, frames * H, 3), np.uint8)


@pytest.fixture(scope="module")
def vlm(tiny_qwen_vl):
    return make_vlm(tiny_qwen_vl, inference_batch_size=4)


def test_scores_are_probabilities_deterministic_and_batch_independent(vlm):
    x = clips(6)
    p = vlm.predict_proba(x)
    assert p.shape == (6, ) and p.dtype == torch.float32
    assert ((p >= 0) & (p <= 1)).all() and p.std() > 0.01  # the random model tells these clips apart
    assert torch.equal(vlm.predict_proba(x), p)
    one_by_one = torch.cat([vlm.predict_proba(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(p, one_by_one, atol=1e-5)
    # prompts of different lengths in one batch (left padding) score as they do alone
    tasks = ['Pick up the cube.', '', 'Pick up the cube and move it to the goal.', 'cube', 'goal', 'Answer']
    pt = vlm.predict_proba(x, tasks)
    assert torch.allclose(pt, torch.cat([vlm.predict_proba(x[i:i + 1], tasks[i]) for i in range(6)]), atol=1e-5)
    assert not torch.allclose(pt, p, atol=1e-4)  # the task text reaches the model
    with pytest.raises(ValueError, match="2 entries for 6 images"):
        vlm.predict_proba(x, tasks[:2])
    assert torch.equal(vlm.predict_proba(x[0]), p[:1])  # one HWC filmstrip is a batch of one


def test_prompt_is_the_chat_template_with_one_image_per_sampled_frame(tiny_qwen_vl):
    m = make_vlm(tiny_qwen_vl, clip_length=3, num_frames=2, task_description='Pick up the cube.')
    text = m.chat_text()
    assert text.count('<|image_pad|>') == 2 and text.endswith('<|im_start|>assistant\n')
    assert m.format_prompt() in text and m.format_prompt().startswith('Pick up the cube. Has the task been')
    assert 'Move it.' in m.chat_text('Move it.')


FAMILIES = pytest.mark.parametrize('folder,model_class', [('tiny_qwen_vl', 'Qwen2VLForConditionalGeneration'),
                                                           ('tiny_qwen25_vl', 'Qwen2_5_VLForConditionalGeneration')])


@FAMILIES
def test_every_sampled_frame_reaches_the_model_and_no_other(folder, model_class, request):
    tiny_qwen_vl = request.getfixturevalue(folder)
    x = clips(1, frames=3, seed=1)

    def changed(frame):
        y = x.copy()
        y[:, :, frame * H:(frame + 1) * H] = 255 - y[:, :, frame * H:(frame + 1) * H]
        return y

    last = make_vlm(tiny_qwen_vl, clip_length=3, num_frames=2, frame_sampling='last')  # frames 1, 2
    assert type(last.network).__name__ == model_class
    p = last.predict_proba(x)
    assert abs(float(last.predict_proba(changed(1)) - p)) > 1e-4  # an earlier sampled frame counts
    assert torch.equal(last.predict_proba(changed(0)), p)  # a frame not sampled does not
    uniform = make_vlm(tiny_qwen_vl, clip_length=3, num_frames=2, frame_sampling='uniform')  # frames 0, 2
    q = uniform.predict_proba(x)
    assert abs(float(uniform.predict_proba(changed(0)) - q)) > 1e-4
    assert torch.equal(uniform.predict_proba(changed(1)), q)
    # a clip batch [B, T, H, W, C] is the same clip as its filmstrip
    batch = x.reshape(1, H, 3, H, 3).transpose(0, 2, 1, 3, 4)
    assert torch.allclose(uniform.predict_proba(batch), q, atol=1e-6)


@FAMILIES
def test_answer_tokens_are_the_tokenizers_and_decide_the_score(folder, model_class, request):
    tiny_qwen_vl = request.getfixturevalue(folder)
    m = make_vlm(tiny_qwen_vl)
    assert type(m.network).__name__ == model_class
    tok = m.processor.tokenizer
    assert m.yes_token_ids == [tok.convert_tokens_to_ids('Yes'), tok.convert_tokens_to_ids('yes')]
    assert m.no_token_ids == [tok.convert_tokens_to_ids('No'), tok.convert_tokens_to_ids('no')]
    x = clips(4, seed=2)
    p = m.predict_proba(x)
    assert (p - 0.5).abs().max() > 0.1  # far enough from 1/2 that 1 - p is another score
    head = m.network.lm_head.weight
    with torch.no_grad():  # swap the output rows of the two answers: P(yes) becomes P(no)
        yes, no = head[m.yes_token_ids].clone(), head[m.no_token_ids].clone()
        head[m.yes_token_ids], head[m.no_token_ids] = no, yes
    assert torch.allclose(m.predict_proba(x), 1 - p, atol=1e-5)
    single = make_vlm(tiny_qwen_vl, yes_tokens=['yes'], no_tokens=['no'])
    assert single.yes_token_ids == [tok.convert_tokens_to_ids('yes')]
    with pytest.raises(ValueError, match="'affirmative' is not one token"):
        make_vlm(tiny_qwen_vl, yes_tokens=['Yes', 'affirmative'])
    with pytest.raises(ValueError, match="no_tokens must be a non-empty list"):
        make_vlm(tiny_qwen_vl, no_tokens=[])
    with pytest.raises(ValueError, match="share the token ids"):
        make_vlm(tiny_qwen_vl, no_tokens=['no', 'yes'])


@pytest.mark.parametrize('reward_mode,combine_mode', [('per_step', 'replace'), ('terminal', 'add')])
def test_estimate_in_per_step_and_terminal_modes(tiny_qwen_vl, reward_mode, combine_mode):
    vlm = make_vlm(tiny_qwen_vl, reward_mode=reward_mode, combine_mode=combine_mode, success_reward=1.0,
                   fail_reward=-1.0, reward_threshold=0.5)
    x = clips(5, seed=3)
    done = [False, True, False, False, True]
    data = [dict(reward=torch.tensor([0.25]), done=d, reward_image=x[i]) for i, d in enumerate(done)]
    out = vlm.estimate(data)
    p = vlm.predict_proba(x)
    assert ((p > 0.5).any() and (p <= 0.5).any())  # both decisions occur
    for i, t in enumerate(out):
        scored = reward_mode == 'per_step' or done[i]
        model_r = (1.0 if p[i] > 0.5 else -1.0) if scored else 0.0
        want = model_r + (0.25 if combine_mode == 'add' else 0.0)
        assert float(t['reward']) == pytest.approx(want)
        assert 'reward_image' not in t and 'reward_image' in data[i]
    assert [float(t['reward']) for t in data] == [0.25] * 5  # the input is left unchanged


def test_reward_manager_observations_task_descriptions_thresholds_and_soft_reward(tiny_qwen_vl):
    from ding_ext.reward_manager import RewardManager
    cfg = dict(type='qwen_vl', model_path=tiny_qwen_vl, image_size=[3, H, H], clip_length=2, num_frames=2,
               success_reward=2.0, fail_reward=0.0, reward_threshold=0.4, reward_weight=0.5)
    manager = RewardManager(cfg)
    assert 'qwen_vl' in RewardManager.get_available_models()
    x = clips(6, seed=4)
    p = manager.compute_probabilities({'images': x})
    assert torch.equal(manager.compute_rewards(x), 0.5 * torch.where(p > 0.4, 2.0, 0.0))
    # RLinf's call: the observations dict and per-clip task descriptions, which reach the prompts
    tasks = ['Pick up the cube.'] * 3 + ['Move it to the goal.'] * 3
    pt = manager.model.predict_proba(x, tasks)
    assert not torch.allclose(pt, p, atol=1e-4)
    assert torch.equal(manager.compute_rewards({'main_images': x, 'states': np.zeros((6, 9))}, tasks),
                       0.5 * torch.where(pt > 0.4, 2.0, 0.0))
    soft = RewardManager(dict(cfg, use_soft_reward=True)).to_device('cpu')
    assert soft.model.network.device.type == 'cpu'
    assert torch.allclose(soft.compute_rewards(x), 0.5 * p)


def test_precision_bf16_and_auto(tiny_qwen_vl):
    from ding_ext.precision import resolve_precision
    x = clips(3, seed=5)
    fp32 = make_vlm(tiny_qwen_vl)
    bf16 = make_vlm(tiny_qwen_vl, precision='bf16')
    assert fp32.network.dtype == torch.float32 and bf16.network.dtype == torch.bfloat16
    assert torch.allclose(bf16.predict_proba(x), fp32.predict_proba(x), atol=0.05)
    auto = make_vlm(tiny_qwen_vl, precision='auto')
    chosen = resolve_precision('auto', torch.device('cpu'))[0]
    assert auto.precision_choice['precision'] == chosen
    assert auto.network.dtype == {'fp32': torch.float32, 'bf16': torch.bfloat16}[chosen]


def test_frozen_collects_and_trains_nothing_and_saves_nothing(vlm, tiny_qwen_vl, tmp_path):
    data = [dict(reward=torch.tensor([0.0]), done=True, success=True, reward_image=clips(1)[0])]
    vlm.collect_data(data)
    assert vlm.train() is None and vlm.success_images == [] and vlm.failure_images == []
    assert vlm.save(str(tmp_path), 'best') is None and os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="no checkpoint"):
        vlm.load(str(tmp_path / 'x.safetensors'))
    for flag in ('cooptrain_reward', 'pretrain_reward'):
        with pytest.raises(ValueError, match=f"frozen.*{flag} is true"):
            make_vlm(tiny_qwen_vl, **{flag: True})


@pytest.mark.parametrize('overrides,error,match', [
    (dict(model_path=None), ValueError, "model_path is not set"),
    (dict(model_path='Qwen/Qwen2-VL-2B-Instruct'), FileNotFoundError, "not a local folder.*huggingface-cli download"),
    (dict(normalize=True), ValueError, "normalize must be false"),
    (dict(reward_threshold='auto'), ValueError, "does not have: set a number"),
    (dict(checkpoint_path='model.safetensors'), ValueError, "unset checkpoint_path"),
])
def test_config_errors_name_what_to_pass(tiny_qwen_vl, overrides, error, match):
    overrides = dict(overrides)
    with pytest.raises(error, match=match):
        make_vlm(overrides.pop('model_path', tiny_qwen_vl), **overrides)


def test_incomplete_model_folders_are_named(tiny_qwen_vl, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        make_vlm(str(empty))
    weights_only = tmp_path / 'weights_only'
    weights_only.mkdir()
    for name in ('config.json', 'model.safetensors'):
        shutil.copy(os.path.join(tiny_qwen_vl, name), weights_only / name)
    with pytest.raises(ValueError, match="tokenizer / processor files do not load"):
        make_vlm(str(weights_only))


def test_missing_transformers_names_the_extra(tiny_qwen_vl, monkeypatch):
    monkeypatch.setitem(sys.modules, 'transformers', None)  # what `import transformers` meets without the extra
    with pytest.raises(ImportError, match=r"'vlm' extra.*pip install -e '\.\[vlm\]'"):
        make_vlm(tiny_qwen_vl)
