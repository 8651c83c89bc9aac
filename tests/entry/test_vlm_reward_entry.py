"""The qwen_vl reward model (a tiny random Qwen2-VL) as the frozen reward of our off-policy entry on the real
PickCube env (single frames here: clips cost a render every env step, and their path through the model is tested in
tests/ding_ext/test_vlm_reward_model.py)."""
import os

import torch

from ding_ext.reward_models import VLMRewardModel

from .test_serial_entry_reward_model import tiny_config

SUCCESS_R, FAIL_R = 1.0, -1.0


def vlm_reward_cfg(model_path):
    return dict(type='qwen_vl', import_names=['ding_ext'], model_path=model_path, image_size=[3, 56, 56],
                clip_length=1, num_frames=1, task_description='Pick up the cube and move it to the goal.',
                reward_mode='terminal', combine_mode='replace', success_reward=SUCCESS_R, fail_reward=FAIL_R,
                reward_threshold=0.5)


def test_offpolicy_entry_with_a_frozen_vlm_reward(tiny_qwen_vl, tmp_path, monkeypatch):
    from entry import serial_pipeline_reward_model_offpolicy
    monkeypatch.chdir(tmp_path)
    main, create = tiny_config('offpolicy', 'exp_vlm', vlm_reward_cfg(tiny_qwen_vl))
    scored = []
    real_estimate = VLMRewardModel.estimate

    def estimate(self, data):
        out = real_estimate(self, data)
        scored.append((data, out))
        return out

    monkeypatch.setattr(VLMRewardModel, 'estimate', estimate)
    policy = serial_pipeline_reward_model_offpolicy((main, create), seed=0, max_train_iter=2, cooptrain_reward=False,
                                                    pretrain_reward=False)
    model = policy.reward_model
    assert isinstance(model, VLMRewardModel) and policy.history['agreement']
    n_done = 0
    for data, out in scored:
        for t_in, t_out in zip(data, out):
            r = float(t_out['reward'].reshape(-1)[0])
            if not bool(torch.as_tensor(t_in['done']).reshape(-1)[0]):
                assert r == 0.0  # terminal mode: only the last transition of an episode is judged
                continue
            n_done += 1
            if 'reward_image' in t_in:
                assert t_in['reward_image'].shape == (64, 64, 3)
                p = float(model.predict_proba([t_in['reward_image']])[0])
            else:  # stored in the replay buffer without its image: scored once, as it entered
                assert t_in['reward_score'].version == model.model_version
                p = t_in['reward_score'].prob
            assert r == (SUCCESS_R if p > 0.5 else FAIL_R)
    assert n_done > 0
    assert not os.path.exists(os.path.join('exp_vlm', 'reward_model'))  # the weights stay in model_path
    assert os.path.isfile(os.path.join('exp_vlm', 'rerun_config.py'))
