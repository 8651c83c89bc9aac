"""Both entries on the real PickCube env with the ResNet reward, under every flag combination."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from ding.worker import BaseLearner

from ding_ext.reward_models.base_image_reward_model import BaseImageRewardModel
from ding_ext.checkpoint_io import load_checkpoint

from .conftest import MODEL, env_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUCCESS_R, FAIL_R = 1.0, -1.0


def tiny_config(kind, exp_name, reward_model, **extra):
    from dizoo_maniskill.config.pickcube_base import PPO, SAC, make_config
    if kind == 'onpolicy':
        policy = dict(PPO, collect=dict(PPO['collect'], n_sample=40),
                      learn=dict(PPO['learn'], epoch_per_collect=1, batch_size=20),
                      eval=dict(evaluator=dict(eval_freq=1000)))
        main, create = make_config(exp_name, policy, 'ppo_reward_image', env_manager='base', reward_model=reward_model,
                                   **extra)
    else:
        policy = dict(SAC, random_collect_size=0, collect=dict(n_sample=20),
                      learn=dict(SAC['learn'], update_per_collect=2, batch_size=16),
                      other=dict(replay_buffer=dict(replay_buffer_size=1000)), eval=dict(evaluator=dict(eval_freq=1000)))
        main, create = make_config(exp_name, policy, 'sac_reward_image', env_manager='base', reward_model=reward_model,
                                   **extra)
    main.env.update(env_overrides())
    return main, create


def reward_cfg(checkpoint_path, data_dir, **kw):
    from dizoo_maniskill.config.pickcube_base import RESNET_REWARD
    cfg = dict(RESNET_REWARD, **MODEL, success_reward=SUCCESS_R, fail_reward=FAIL_R, checkpoint_path=checkpoint_path,
               reward_threshold=0.5,
               pretrain_data_dir=data_dir, update_per_collect=2, batch_size=8,
               pretrain=dict(epochs=2, batch_size=8, val_split=0.25, num_workers=0, progress=False))
    cfg.update(kw)
    return cfg


@pytest.fixture
def spies(monkeypatch):
    """Record what estimate() returned and what the (real) learner trained on."""
    rec = dict(estimate=[], learner=[], train_calls=0)
    real_estimate, real_learn, real_train = BaseImageRewardModel.estimate, BaseLearner.train, \
        BaseImageRewardModel.train

    def estimate(self, data):
        out = real_estimate(self, data)
        rec['estimate'].append((data, out))
        return out

    def learn(self, data, envstep=-1, policy_kwargs=None):
        rec['learner'].append(data)
        return real_learn(self, data, envstep, policy_kwargs)

    def train(self, data=None):
        rec['train_calls'] += 1
        return real_train(self, data)

    monkeypatch.setattr(BaseImageRewardModel, 'estimate', estimate)
    monkeypatch.setattr(BaseLearner, 'train', learn)
    monkeypatch.setattr(BaseImageRewardModel, 'train', train)
    return rec


def check_rewards(rec, model, exact):
    """The learner got exactly estimate()'s outputs (its batches; off-policy: sampled from the replay buffer); those hold
    the terminal/replace model rewards. A frozen model's stored transitions lack their images: their probability is
    the one stored with them as they entered the buffer (from a call of estimate() that had the image)."""
    outs = [out for _, out in rec['estimate']]
    scored = {id(t) for out in outs for t in out}
    assert rec['learner'] and all(any(b is o for o in outs) or all(id(t) in scored for t in b)
                                  for b in rec['learner'])
    n_done = 0
    for data, out in rec['estimate']:
        assert len(data) == len(out)
        for t_in, t_out in zip(data, out):
            r = float(t_out['reward'].reshape(-1)[0])
            done = bool(torch.as_tensor(t_in['done']).reshape(-1)[0])
            if not done:
                assert r == 0.0  # terminal mode: the dense env reward is replaced by 0
                continue
            n_done += 1
            assert r in (SUCCESS_R, FAIL_R)
            if exact:  # frozen model: recompute its decision on the same image
                p = stored_or_scored(model, [t_in])[0]
                assert r == (SUCCESS_R if p > 0.5 else FAIL_R)
            assert 'reward_image' not in t_out
    assert n_done > 0


def stored_or_scored(model, transitions):
    """The model's probability for each transition: scored from its image, or the one stored with it (which must be
    from the model's current weights)."""
    out = []
    for t in transitions:
        if 'reward_image' in t:
            out.append(float(model.predict_proba([t['reward_image']])[0]))
        else:
            assert t['reward_score'].version == model.model_version
            out.append(t['reward_score'].prob)
    return out


def run(kind, cfg, **flags):
    from entry import serial_pipeline_reward_model_offpolicy, serial_pipeline_reward_model_onpolicy
    fn = serial_pipeline_reward_model_onpolicy if kind == 'onpolicy' else serial_pipeline_reward_model_offpolicy
    return fn(cfg, seed=0, max_train_iter=3 if kind == 'onpolicy' else 6, **flags)


def assert_outputs(exp, policy):
    ckpts = os.listdir(os.path.join(exp, 'ckpt'))
    assert any(c.startswith('iteration_') for c in ckpts), ckpts
    for name in ('best', 'last'):
        path = os.path.join(exp, 'reward_model', f'{name}_model.safetensors')
        assert os.path.isfile(path)
        assert load_checkpoint(path)[1]['control_mode'] == 'pd_joint_delta_pos'
    assert policy.history['agreement'], "agreement with env success was not logged"
    for a in policy.history['agreement']:
        assert 0.0 <= a['env_accuracy'] <= 1.0


@pytest.mark.parametrize("kind", ["onpolicy", "offpolicy"])
@pytest.mark.parametrize("cooptrain,pretrain", [(True, False), (False, True), (True, True), (False, False)])
def test_entry_flag_combinations(kind, cooptrain, pretrain, spies, pickcube_images, trained_checkpoint, tmp_path,
                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    if pretrain:
        ckpt = str(tmp_path / 'pretrained' / 'model.safetensors')  # does not exist yet: pretraining writes it
    elif cooptrain:
        ckpt = None
    else:
        ckpt = trained_checkpoint
    seed_dir = pickcube_images if cooptrain else None
    cfg = tiny_config(kind, f'exp_{kind}', reward_cfg(ckpt, pickcube_images, cooptrain_seed_data_dir=seed_dir))
    policy = run(kind, cfg, cooptrain_reward=cooptrain, pretrain_reward=pretrain)
    model = policy.reward_model
    assert_outputs(f'exp_{kind}', policy)
    if pretrain:
        assert model.pretrain_result is not None and os.path.isfile(ckpt)
        assert model.pretrain_result['num_images'] == {'success': 6, 'failure': 6}
    else:
        assert model.pretrain_result is None
    if cooptrain:
        # env-labelled final frames reached the buffer and the model trained every iteration
        assert len(model.failure_images) > 0 and not model.success_images
        assert model.train_iter == spies['train_calls'] * model.cfg.update_per_collect > 0
    else:
        assert model.train_iter == 0 and model.failure_images == []
    check_rewards(spies, model, exact=not cooptrain)


def test_frozen_model_rewards_exact_in_weighted_per_step_mode(spies, pickcube_images, trained_checkpoint, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    rm = reward_cfg(trained_checkpoint, pickcube_images, reward_mode='per_step', combine_mode='weighted',
                    reward_weight=2.0, env_reward_weight=0.5, use_soft_reward=True)
    main, create = tiny_config('offpolicy', 'exp_w', rm)
    main.env.reward_render_mode = 'every_step'
    # the checkpoint's images were episode_end frames; scoring every frame with it is a deliberate choice here
    main.reward_model.env_metadata = dict(reward_render_mode='episode_end')
    policy = run('offpolicy', (main, create), cooptrain_reward=False, pretrain_reward=False)
    model = policy.reward_model
    n = 0
    for data, out in spies['estimate']:
        p = stored_or_scored(model, data)
        for t_in, t_out, pi in zip(data, out, p):
            want = 0.5 * float(t_in['reward'].reshape(-1)[0]) + 2.0 * pi
            assert float(t_out['reward'].reshape(-1)[0]) == pytest.approx(want, abs=1e-5)
            n += 1
    assert n > 0


def test_env_setting_mismatch_with_checkpoint_is_an_error(trained_checkpoint, pickcube_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main, create = tiny_config('onpolicy', 'exp_bad', reward_cfg(trained_checkpoint, pickcube_images))
    main.env.show_goal_site = False  # the checkpoint's images show the goal marker
    with pytest.raises(ValueError, match="show_goal_site"):
        run('onpolicy', (main, create), cooptrain_reward=False, pretrain_reward=False)


def test_resume_from_stage3_checkpoint(trained_checkpoint, pickcube_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from entry import serial_pipeline_reward_model_onpolicy
    main, create = tiny_config('onpolicy', 'stage3', None)
    serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=2)
    stage3_iters = sorted(int(p.name[len('iteration_'):-len('.pth.tar')])
                          for p in (tmp_path / 'stage3' / 'ckpt').glob('iteration_*.pth.tar'))
    main, create = tiny_config('onpolicy', 'stage4', reward_cfg(trained_checkpoint, pickcube_images))
    main.policy.resume_dir = 'stage3'
    serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=1, cooptrain_reward=False)
    # the learner loaded stage 3's checkpoint: its iteration count continues from there
    stage4_iters = sorted(int(p.name[len('iteration_'):-len('.pth.tar')])
                          for p in (tmp_path / 'stage4' / 'ckpt').glob('iteration_*.pth.tar'))
    assert stage4_iters[-1] > stage3_iters[-1] > 0
    with pytest.raises(FileNotFoundError, match="no iteration"):
        main.policy.resume_dir = str(tmp_path / 'nothing_here')
        serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=1, cooptrain_reward=False)


def test_ding_cli_runs_our_offpolicy_config(trained_checkpoint, pickcube_images, tmp_path):
    cfg_file = tmp_path / 'tiny_sac_config.py'
    cfg_file.write_text(textwrap.dedent(f"""
        from dizoo_maniskill.config.pickcube_sac_resnet_reward_config import main_config, create_config
        main_config.exp_name = 'cli_exp'
        main_config.env.update(max_episode_steps=10, collector_env_num=1, evaluator_env_num=1, n_evaluator_episode=1,
                               image_size=[3, 64, 64])
        main_config.policy.update(random_collect_size=0)
        main_config.policy.collect.n_sample = 20
        main_config.policy.learn.update(update_per_collect=2, batch_size=16)
        main_config.policy.eval.evaluator.eval_freq = 1000
        main_config.reward_model.update(checkpoint_path={trained_checkpoint!r}, image_size=[3, 32, 32], hidden_dim=16)
        create_config.env_manager.type = 'base'
    """))
    ding = os.path.join(os.path.dirname(sys.executable), 'ding')
    proc = subprocess.run([ding, '-m', 'serial_reward_model', '-c', str(cfg_file), '-s', '0', '--train-iter', '4'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = tmp_path / 'cli_exp'
    assert (exp / 'reward_model' / 'last_model.safetensors').is_file()
    assert any(p.name.startswith('iteration_') for p in (exp / 'ckpt').iterdir())


@pytest.mark.parametrize("flag", ["--no-cooptrain-reward", "--cooptrain-reward"])
def test_ding_reward_cli_flags(flag, trained_checkpoint, pickcube_images, tmp_path, monkeypatch):
    from entry.cli import main
    monkeypatch.chdir(tmp_path)
    cfg_file = tmp_path / 'tiny_ppo_config.py'
    cfg_file.write_text(textwrap.dedent(f"""
        import copy
        from dizoo_maniskill.config import pickcube_ppo_resnet_reward_config as stage4
        main_config, create_config = copy.deepcopy(stage4.main_config), copy.deepcopy(stage4.create_config)
        main_config.env.update(max_episode_steps=10, collector_env_num=1, evaluator_env_num=1, n_evaluator_episode=1,
                               image_size=[3, 64, 64])
        main_config.policy.pop('resume_dir')
        main_config.policy.collect.n_sample = 40
        main_config.policy.learn.update(epoch_per_collect=1, batch_size=20)
        main_config.reward_model.update(checkpoint_path={trained_checkpoint!r}, image_size=[3, 32, 32], hidden_dim=16,
                                        reward_threshold=0.5, cooptrain_seed_data_dir={pickcube_images!r}, update_per_collect=2, batch_size=8)
        create_config.env_manager.type = 'base'
    """))
    assert main(['-m', 'serial_reward_model_onpolicy', '-c', str(cfg_file), '--exp-name', 'cli', '--train-iter', '2',
                 flag]) == 0
    start = load_checkpoint(trained_checkpoint)[0]
    last = load_checkpoint(str(tmp_path / 'cli' / 'reward_model' / 'last_model.safetensors'))[0]
    unchanged = all(torch.equal(start[k], last[k]) for k in start)
    assert unchanged == (flag == "--no-cooptrain-reward")


def test_reward_hacking_alarm_stops_the_run_and_mines_false_positives(tmp_path, monkeypatch):
    """A classifier that calls every frame a success: its precision against env success is 0, so the alarm
    goes off after alarm_patience iterations and stops the run; every frame it got wrong is mined."""
    from ding_ext.image_folder_dataset import read_sidecar
    from entry import serial_pipeline_reward_model_onpolicy
    from tests.ding_ext.helpers import force_probability, make_model
    monkeypatch.chdir(tmp_path)
    always = make_model(**MODEL)
    force_probability(always, 0.99)
    ckpt = always.save(str(tmp_path / 'always_success.safetensors'))
    rm = reward_cfg(ckpt, None, precision_alarm=0.8, alarm_patience=2, stop_on_alarm=True, hard_negative_dir='mined')
    main, create = tiny_config('onpolicy', 'exp_alarm', rm)
    policy = serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=40, cooptrain_reward=False)
    hist = policy.history
    assert hist['alarm_stop']
    rows = hist['agreement']
    assert len(rows) == 2 and all(r['precision'] == 0.0 for r in rows)  # stopped at the second low iteration
    assert [r['hacking_alarm'] for r in rows] == [0.0, 1.0]
    assert os.path.isfile(os.path.join('exp_alarm', 'reward_model', 'last_model.safetensors'))
    mined = read_sidecar('mined')
    assert len(mined) == int(rows[-1]['mined']) == 8  # 2 collects x 4 episode-end frames, all false positives
    for path, row in mined.items():
        assert os.path.isfile(os.path.join('mined', path)) and path.startswith('failure/')
        assert row['label'] == 0 and row['mined'] == 'false_positive' and row['prob'] == pytest.approx(0.99, abs=1e-3)
        assert row['source'] == 'policy' and row['episode_id'] and row['step'] == 10


def test_alarm_stays_quiet_for_an_honest_classifier(tmp_path, monkeypatch):
    """A classifier that calls nothing a success has no precision: the alarm neither counts nor fires."""
    from entry import serial_pipeline_reward_model_onpolicy
    from tests.ding_ext.helpers import force_probability, make_model
    monkeypatch.chdir(tmp_path)
    never = make_model(**MODEL)
    force_probability(never, 0.01)
    ckpt = never.save(str(tmp_path / 'never_success.safetensors'))
    rm = reward_cfg(ckpt, None, alarm_patience=1, stop_on_alarm=True, hard_negative_dir='mined')
    main, create = tiny_config('onpolicy', 'exp_quiet', rm)
    policy = serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=6, cooptrain_reward=False)
    assert not policy.history['alarm_stop'] and len(policy.history['agreement']) == 3
    assert not any(r['hacking_alarm'] for r in policy.history['agreement'])
    assert not os.listdir(os.path.join('mined', 'failure'))
