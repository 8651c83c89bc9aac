"""RLPD through our off-policy entry and DI-engine's CLI on the real PickCube env: the demo buffer fills half of every
batch, the update-to-data ratio sets the number of updates, and the learned per-step reward scores demo and online
transitions alike."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from ding.worker import BaseLearner

from ding_ext.demo_episodes import DemoBuffer, load_demo_transitions
from tests.entry.conftest import MODEL

IMAGE = [3, 64, 64]
SUCCESS_R, FAIL_R = 1.0, 0.0


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    from dizoo_maniskill.config.pickcube_base import ENV, RLPD_ENV
    from dizoo_maniskill.record_demos import record_demos
    root = str(tmp_path_factory.mktemp('rlpd') / 'demos')
    counts = record_demos(root, [500000, 500001], dict(ENV, **RLPD_ENV, image_size=IMAGE), progress=False)
    assert counts['recorded'] == 2
    return root


def rlpd_config(demo_dir, exp_name, reward_model=True, utd=0.5):
    import copy

    from dizoo_maniskill.config import pickcube_rlpd_resnet_reward_config as rlpd
    from entry.experiment_config import demo_env_metadata
    main, create = copy.deepcopy(rlpd.main_config), copy.deepcopy(rlpd.create_config)
    main.exp_name = exp_name
    main.env.update(image_size=IMAGE, max_episode_steps=10, collector_env_num=1, evaluator_env_num=1,
                    n_evaluator_episode=2)
    main.policy.update(random_collect_size=20)
    main.policy.model.update(hidden_size=32)
    main.policy.collect.n_sample = 20
    main.policy.learn.update(batch_size=16, utd_ratio=utd)
    main.policy.eval.evaluator.eval_freq = 1000
    main.policy.other.replay_buffer.demo_path = demo_dir
    # DI-engine's entry checks the demos against this (ours recomputes it from main.env)
    main.policy.other.replay_buffer.demo_env_metadata = demo_env_metadata(main.env)
    if reward_model:
        # the config's 2-frame clips; a co-trained model from scratch has no stored still-scene threshold: a number
        main.reward_model.update(checkpoint_path=None, cooptrain_reward=True, success_reward=SUCCESS_R, fail_reward=FAIL_R,
                                 reward_threshold=0.5, update_per_collect=1, batch_size=8, still_motion_threshold=0.01,
                                 **MODEL)
    else:
        main.pop('reward_model')
        create.pop('reward_model')
        main.policy.learn.bc_pretrain_iterations = 3  # the actor clones the demos before RL
    create.env_manager.type = 'base'
    return main, create


@pytest.mark.parametrize('learned', [True, False])
def test_rlpd_half_demo_batches_utd_and_learned_per_step_reward(learned, demo_dir, tmp_path, monkeypatch):
    from entry import serial_pipeline_reward_model_offpolicy
    monkeypatch.chdir(tmp_path)
    batches, demo_ids = [], []
    real_learn, real_sample = BaseLearner.train, DemoBuffer.sample

    def learn(self, data, envstep=-1, policy_kwargs=None):
        batches.append(data)
        return real_learn(self, data, envstep, policy_kwargs)

    def sample(self, n):
        out = real_sample(self, n)
        demo_ids.append({id(t['obs']) for t in out})
        return out

    monkeypatch.setattr(BaseLearner, 'train', learn)
    monkeypatch.setattr(DemoBuffer, 'sample', sample)
    policy = serial_pipeline_reward_model_offpolicy(rlpd_config(demo_dir, 'exp', learned), seed=0, max_train_iter=20,
                                                    cooptrain_reward=True)
    # utd 0.5 x 20 new env steps = 10 updates per iteration, each on 8 demo + 8 online transitions
    assert len(batches) == 20
    for batch, ids in zip(batches, demo_ids):
        assert len(batch) == 16
        demos = [t for t in batch if t['is_demo']]
        assert len(demos) == 8 and all(id(t['obs']) in ids for t in demos)  # the demo buffer's transitions
        assert all('reward_image' not in t for t in batch)
    rewards = torch.stack([torch.as_tensor(t['reward']).reshape(-1)[0] for b in batches for t in b])
    if learned:
        # replace mode, per step: every transition, demo or online, carries the classifier's 0/1 decision
        assert set(rewards.tolist()) <= {SUCCESS_R, FAIL_R}
        assert policy.history['agreement']  # per-step images: the monitor compared them with env success
    else:
        # the oracle: the env's sparse reward, 1 exactly on the demos' success steps
        successes = torch.tensor([bool(t['success']) for b in batches for t in b])
        assert torch.equal(rewards, successes.float()) and successes.any()
        pre = policy.history['demo_pretrain']
        assert pre['iterations'] == 3 and pre['demo_transitions'] == len(load_demo_transitions(demo_dir))
    assert policy.history['eval'] and 'success_mean' in policy.history['eval'][-1]
    assert os.path.isfile(os.path.join('exp', 'rerun_config.py'))


def test_rlpd_frozen_reward_scores_each_image_once(demo_dir, tmp_path, monkeypatch):
    """A frozen per-step classifier scores each online transition once, as it enters the buffer (stored without its
    image), and each sampled demo once, when first sampled, however often the updates sample them. The config's
    still-scene gate comes from the checkpoint ('auto') and withholds success from clips that show motion."""
    from ding_ext.demo_replay_buffer import DemoMixReplayBuffer
    from ding_ext.reward_models import BaseImageRewardModel, ResNetVideoRewardModel
    from entry import serial_pipeline_reward_model_offpolicy
    from tests.ding_ext.helpers import force_probability
    monkeypatch.chdir(tmp_path)
    frozen = ResNetVideoRewardModel(dict(type='resnet_video', clip_length=2, num_frames=1, frame_sampling='last',
                                         still_motion_threshold=0.0, **MODEL), 'cpu')
    force_probability(frozen, 0.9)  # success on every frame: only the gate says no
    ckpt = frozen.save(str(tmp_path / 'frozen.safetensors'))
    main, create = rlpd_config(demo_dir, 'exp_frozen')
    main.reward_model.update(checkpoint_path=ckpt, cooptrain_reward=False, still_motion_threshold='auto')
    scored, demo_ids, pushed = [], set(), []
    real_proba, real_sample, real_push = BaseImageRewardModel.predict_proba, DemoBuffer.sample, DemoMixReplayBuffer.push

    def proba(self, images):
        scored.append(len(images))
        return real_proba(self, images)

    def sample(self, n):
        out = real_sample(self, n)
        demo_ids.update(id(t['obs']) for t in out)
        return out

    def push(self, data, cur_collector_envstep=-1):
        pushed.extend(data)
        return real_push(self, data, cur_collector_envstep)

    monkeypatch.setattr(BaseImageRewardModel, 'predict_proba', proba)
    monkeypatch.setattr(DemoBuffer, 'sample', sample)
    monkeypatch.setattr(DemoMixReplayBuffer, 'push', push)
    policy = serial_pipeline_reward_model_offpolicy((main, create), seed=0, max_train_iter=20, cooptrain_reward=False)
    assert policy.history['agreement'] and pushed and all('reward_image' not in t for t in pushed)
    assert sum(scored) == len(pushed) + len(demo_ids) < 20 * 16  # fewer than the 20 updates' sampled images
    # threshold 0: rewarded exactly where the clip's two frames are identical (the arm at rest), else 0
    rows = policy.history['agreement']
    predicted = sum(r['tp'] + r['fp'] for r in rows)
    assert predicted < sum(r['frames'] for r in rows), "the gate withheld success from moving clips"


def test_rlpd_with_the_joint_speed_gate_rewards_only_a_still_arm(tmp_path_factory, tmp_path, monkeypatch):
    """The joint-speed gate in RL: the env emits the arm's joint velocities (reward_state), the demos carry theirs,
    and a frozen classifier that calls every frame a success is rewarded, demo or online, exactly where the arm's
    largest joint speed is within the gate."""
    from dizoo_maniskill.config.pickcube_base import ENV, RLPD_ENV
    from dizoo_maniskill.record_demos import record_demos
    from ding_ext.reward_models import ResNetVideoRewardModel
    from entry import serial_pipeline_reward_model_offpolicy
    from tests.ding_ext.helpers import force_probability
    demos = str(tmp_path_factory.mktemp('rlpd_joint') / 'demos')
    assert record_demos(demos, [500000], dict(ENV, **RLPD_ENV, image_size=IMAGE, reward_state=True),
                        progress=False)['recorded'] == 1
    monkeypatch.chdir(tmp_path)
    frozen = ResNetVideoRewardModel(dict(type='resnet_video', clip_length=2, num_frames=2, frame_sampling='last',
                                         still_joint_speed=0.2, **MODEL), 'cpu')
    force_probability(frozen, 0.9)
    main, create = rlpd_config(demos, 'exp_joint')
    main.env.reward_state = True
    main.reward_model.update(checkpoint_path=frozen.save(str(tmp_path / 'joint.safetensors')), cooptrain_reward=False,
                             num_frames=2, still_motion_threshold=None, still_joint_speed='auto')
    batches = []
    real_learn = BaseLearner.train

    def learn(self, data, envstep=-1, policy_kwargs=None):
        batches.append(data)
        return real_learn(self, data, envstep, policy_kwargs)

    monkeypatch.setattr(BaseLearner, 'train', learn)
    policy = serial_pipeline_reward_model_offpolicy((main, create), seed=0, max_train_iter=10, cooptrain_reward=False)
    demo_states = {tuple(t['obs'].tolist()): max(abs(v) for v in t['frame_info']['reward_state'])
                   for t in load_demo_transitions(demos)}
    demo_rows = [(float(t['reward'].reshape(-1)[0]), demo_states[tuple(t['obs'].tolist())])
                 for b in batches for t in b if t['is_demo']]
    assert demo_rows and all(r == (1.0 if speed <= 0.2 else 0.0) for r, speed in demo_rows)
    assert {r for r, _ in demo_rows} == {0.0, 1.0}  # the demo arm moves, then holds still at the goal
    rows = policy.history['agreement']  # online: the env's frames, scored through the gate
    assert rows and sum(r['tp'] + r['fp'] for r in rows) < sum(r['frames'] for r in rows)


def test_demo_buffer_from_another_control_mode_is_refused(demo_dir, tmp_path, monkeypatch):
    from entry import serial_pipeline_reward_model_offpolicy
    monkeypatch.chdir(tmp_path)
    main, create = rlpd_config(demo_dir, 'exp_bad')
    main.env.control_mode = 'pd_joint_delta_pos'
    main.policy.model.action_shape = 8
    with pytest.raises(ValueError, match='control_mode'):
        serial_pipeline_reward_model_offpolicy((main, create), seed=0, max_train_iter=2)


def test_ding_cli_runs_the_rlpd_config_and_a_saved_run_repeats(demo_dir, tmp_path, monkeypatch):
    """DI-engine's own entry (``ding -m serial_reward_model``) runs the RLPD config, demo buffer included; a run of our
    entry (``ding-reward``) leaves ``rerun_config.py``, which repeats it through DI-engine's CLI."""
    from entry.cli import main as ding_reward
    cfg_file = tmp_path / 'tiny_rlpd_config.py'
    cfg_file.write_text(textwrap.dedent(f"""
        from tests.entry.test_rlpd_entry import rlpd_config
        main_config, create_config = rlpd_config({demo_dir!r}, 'cli_rlpd')
    """))
    ding = os.path.join(os.path.dirname(sys.executable), 'ding')
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root)

    def run_ding(config):
        proc = subprocess.run([ding, '-m', 'serial_reward_model', '-c', str(config), '-s', '0', '--train-iter', '10'],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run_ding(cfg_file)
    exp = tmp_path / 'cli_rlpd'
    assert (exp / 'reward_model' / 'last_model.safetensors').is_file()
    assert any(p.name.startswith('iteration_') for p in (exp / 'ckpt').iterdir())
    monkeypatch.chdir(tmp_path)
    assert ding_reward(['-c', str(cfg_file), '--exp-name', 'ours', '--train-iter', '10']) == 0
    rerun = tmp_path / 'ours' / 'rerun_config.py'
    text = rerun.read_text()
    assert "'demo_mix'" in text and "'rlpd_reward_image'" in text and "'reward_model'" in text
    run_ding(rerun)  # DI-engine puts it next to the original ('ours_<date>'): the folder exists
    reruns = [d for d in tmp_path.iterdir() if d.name.startswith('ours_')]
    assert len(reruns) == 1 and any(p.name.startswith('iteration_') for p in (reruns[0] / 'ckpt').iterdir())
