"""Our entries are drop-in replacements for DI-engine's: DI-engine's own reward models (RND on-policy, ICM off-policy)
run through both entries with every combination of the two flags, on DI-engine's CartPole."""
import os

import pytest
import torch
from ding.worker import BaseLearner
from easydict import EasyDict

CARTPOLE_ENV = dict(collector_env_num=2, evaluator_env_num=1, n_evaluator_episode=1, stop_value=10 ** 6)
CARTPOLE_CREATE_ENV = dict(type='cartpole', import_names=['dizoo.classic_control.cartpole.envs.cartpole_env'])


def rnd_ppo_config(exp_name):
    main = dict(
        exp_name=exp_name,
        env=CARTPOLE_ENV,
        reward_model=dict(intrinsic_reward_type='add', intrinsic_reward_weight=0.5, learning_rate=5e-4, obs_shape=4,
                          batch_size=16, update_per_collect=2, obs_norm=True, obs_norm_clamp_min=-1,
                          obs_norm_clamp_max=1, clear_buffer_per_iters=2),
        policy=dict(cuda=False, recompute_adv=True, action_space='discrete',
                    model=dict(obs_shape=4, action_shape=2, action_space='discrete',
                               encoder_hidden_size_list=[32, 32], critic_head_hidden_size=32,
                               actor_head_hidden_size=32),
                    learn=dict(epoch_per_collect=1, batch_size=32, learning_rate=1e-3),
                    collect=dict(n_sample=64, unroll_len=1, discount_factor=0.9, gae_lambda=0.95),
                    eval=dict(evaluator=dict(eval_freq=1000))),
    )
    create = dict(env=CARTPOLE_CREATE_ENV, env_manager=dict(type='base'), policy=dict(type='ppo'),
                  reward_model=dict(type='rnd'))
    return EasyDict(main), EasyDict(create)


def icm_dqn_config(exp_name):
    main = dict(
        exp_name=exp_name,
        env=CARTPOLE_ENV,
        reward_model=dict(intrinsic_reward_type='add', learning_rate=1e-3, obs_shape=4, action_shape=2, batch_size=16,
                          update_per_collect=2, clear_buffer_per_iters=2),
        policy=dict(cuda=False, model=dict(obs_shape=4, action_shape=2, encoder_hidden_size_list=[32, 32]),
                    discount_factor=0.97, nstep=1,
                    learn=dict(update_per_collect=2, batch_size=16, learning_rate=1e-3),
                    collect=dict(n_sample=32),
                    eval=dict(evaluator=dict(eval_freq=1000)),
                    other=dict(eps=dict(type='exp', start=0.95, end=0.1, decay=1000),
                               replay_buffer=dict(replay_buffer_size=1000))),
    )
    create = dict(env=CARTPOLE_CREATE_ENV, env_manager=dict(type='base'), policy=dict(type='dqn'),
                  reward_model=dict(type='icm'), replay_buffer=dict(type='naive'))
    return EasyDict(main), EasyDict(create)


@pytest.mark.parametrize('kind', ['onpolicy', 'offpolicy'])
@pytest.mark.parametrize('cooptrain,pretrain', [(True, False), (False, False), (True, True), (False, True)])
def test_ding_reward_models_run_through_our_entries(kind, cooptrain, pretrain, tmp_path, monkeypatch):
    from ding.reward_model import ICMRewardModel, RndRewardModel

    from entry import serial_pipeline_reward_model_offpolicy, serial_pipeline_reward_model_onpolicy
    from entry.experiment_config import RERUN_CONFIG_FILE
    monkeypatch.chdir(tmp_path)
    cls = RndRewardModel if kind == 'onpolicy' else ICMRewardModel
    calls = dict(train=0, estimate=0, learner=[])
    real_train, real_estimate, real_learn = cls.train, cls.estimate, BaseLearner.train

    def train(self, *a, **k):
        calls['train'] += 1
        return real_train(self, *a, **k)

    def estimate(self, data):
        calls['estimate'] += 1
        return real_estimate(self, data)

    def learn(self, data, envstep=-1, policy_kwargs=None):
        calls['learner'].append(data)
        return real_learn(self, data, envstep, policy_kwargs)

    monkeypatch.setattr(cls, 'train', train)
    monkeypatch.setattr(cls, 'estimate', estimate)
    monkeypatch.setattr(BaseLearner, 'train', learn)
    exp = f'exp_{kind}'
    if kind == 'onpolicy':
        policy = serial_pipeline_reward_model_onpolicy(rnd_ppo_config(exp), seed=0, max_train_iter=3,
                                                       cooptrain_reward=cooptrain, pretrain_reward=pretrain)
    else:
        policy = serial_pipeline_reward_model_offpolicy(icm_dqn_config(exp), seed=0, max_train_iter=6,
                                                        cooptrain_reward=cooptrain, pretrain_reward=pretrain)
    assert isinstance(policy.reward_model, cls)
    # trained only when co-training; every learner batch went through the model's estimate()
    assert (calls['train'] > 0) == cooptrain
    assert calls['estimate'] == len(calls['learner']) > 0
    assert policy.history['agreement'] == []  # no images, no agreement with env success
    if kind == 'onpolicy' and cooptrain:
        # RND's intrinsic reward ('add', weight 0.5) reached the learner: rewards differ from CartPole's constant 1
        rewards = torch.cat([torch.as_tensor(t['reward']).reshape(-1) for b in calls['learner'] for t in b])
        assert not torch.allclose(rewards, torch.ones_like(rewards))
    # the run's folder holds a config that repeats it, reward model included
    path = os.path.join(exp, RERUN_CONFIG_FILE)
    from ding.config import read_config
    main, create = read_config(path)
    assert main.reward_model.cooptrain_reward == cooptrain and main.reward_model.pretrain_reward == pretrain
    assert create.reward_model.type == ('rnd' if kind == 'onpolicy' else 'icm')
    assert create.policy.type == ('ppo' if kind == 'onpolicy' else 'dqn')
