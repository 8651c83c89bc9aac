"""Motion-planned demonstrations converted to the RLPD control mode, on the real env: they end in success, carry a
reward image per step, replay to success open-loop, and a recording resumes. No mocks."""
import json
import os

import numpy as np
import pytest

from ding_ext.demo_episodes import episode_names, episode_path, load_demo_transitions, read_episode
from dizoo_maniskill.config.pickcube_base import ENV, RLPD_ACTION_SHAPE, RLPD_ENV, OBS_SHAPE
from dizoo_maniskill.record_demos import record_demos

SEEDS = [500000, 500001]
ENV_CFG = dict(ENV, **RLPD_ENV, image_size=[3, 64, 64])


@pytest.fixture(scope='module')
def demos(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('demos') / 'pickcube_demos')
    counts = record_demos(root, SEEDS, ENV_CFG, workers=1, progress=False, source='planner')
    return root, counts


def test_demos_end_in_success_with_an_image_per_step(demos):
    root, counts = demos
    assert counts == dict(recorded=2, skipped=0, failed=0)
    assert episode_names(root) == [f's{s}' for s in SEEDS]
    for seed in SEEDS:
        ep = read_episode(episode_path(root, f's{seed}'))
        T = len(ep['obs'])
        assert 15 <= T <= ENV_CFG['max_episode_steps']  # strided planner targets fit the RL horizon
        assert ep['obs'].shape == ep['next_obs'].shape == (T, OBS_SHAPE)
        assert ep['action'].shape == (T, RLPD_ACTION_SHAPE) and np.abs(ep['action']).max() <= 1.0
        assert ep['success'][-1] and not ep['success'][0]
        assert ep['done'].tolist() == [False] * (T - 1) + [True]
        # sparse env reward = the success flag; consecutive transitions chain
        np.testing.assert_array_equal(ep['reward'], ep['success'].astype(np.float32))
        np.testing.assert_allclose(ep['obs'][1:], ep['next_obs'][:-1])
        # the recipe's reward images: clips of the last reward_frames frames side by side
        assert ep['image'].shape == (T, 64, 64 * RLPD_ENV['reward_frames'], 3) and ep['image_step'].tolist() == list(range(T))
        assert ep['image'][0].std() > 5  # a rendered scene, not a blank frame


def test_demo_actions_replay_to_success_open_loop(demos):
    """The recorded actions are the ones that produced the episode: replayed from the same seed they succeed."""
    from dizoo_maniskill.envs.maniskill_env import ManiSkillEnv
    root, _ = demos
    env = ManiSkillEnv(dict(ENV_CFG, reward_render_mode='none'))
    env.reset()
    try:
        ep = read_episode(episode_path(root, f's{SEEDS[0]}'))
        env.unwrapped_env.reset(seed=int(ep['seed']))
        for t, action in enumerate(ep['action']):
            obs, _, _, _, info = env.unwrapped_env.step(action)
            np.testing.assert_allclose(env._to_obs(obs), ep['next_obs'][t], atol=1e-4)
        assert bool(info['success'])
    finally:
        env.close()


def test_recording_resumes_and_checks_the_env(demos):
    root, _ = demos
    again = record_demos(root, SEEDS + [500002], ENV_CFG, workers=1, progress=False, source='planner')
    assert again['skipped'] == 2 and again['recorded'] + again['failed'] == 1
    # seed 500007 does not end in success with these options: remembered, not retried
    assert record_demos(root, [500007], ENV_CFG, progress=False, source='planner') == dict(recorded=0, skipped=0, failed=1)
    assert record_demos(root, [500007], ENV_CFG, progress=False, source='planner') == dict(recorded=0, skipped=1, failed=0)
    assert 500007 in list(json.load(open(os.path.join(root, 'failed_seeds.json'))).values())[0]
    # other options: tried again
    assert record_demos(root, [500007], ENV_CFG, progress=False, hold_steps=3, source='planner')['skipped'] == 0
    with pytest.raises(ValueError, match='control_mode'):
        record_demos(root, SEEDS, dict(ENV_CFG, control_mode='pd_joint_delta_pos'), progress=False, source='planner')
    with pytest.raises(ValueError, match='planner demos convert'):
        record_demos(str(root) + '_abs', [500003], dict(ENV_CFG, control_mode='pd_joint_pos'), progress=False, source='planner')
    transitions = load_demo_transitions(root, dict(control_mode='pd_ee_delta_pos'))
    assert sum(t['done'] for t in transitions) == len(episode_names(root))


def test_scripted_expert_demos_succeed_and_hold(tmp_path):
    """The closed-loop scripted expert: whole episodes that reach the goal early and stay there."""
    root = str(tmp_path / 'scripted')
    counts = record_demos(root, [500000, 500007], ENV_CFG, progress=False, source='scripted')
    assert counts == dict(recorded=2, skipped=0, failed=0)  # 500007 fails the planner, not the expert
    ep = read_episode(episode_path(root, 's500007'))
    T = ENV_CFG['max_episode_steps']
    assert len(ep['obs']) == T and ep['image'].shape[0] == T and ep['done'].tolist() == [False] * (T - 1) + [True]
    first = int(np.argmax(ep['success']))
    assert 0 < first < T // 2 and ep['success'][first:].all()  # reached early, then held
    assert np.abs(ep['action']).max() <= 1.0 and set(np.unique(ep['action'][:, 3])) <= {-1.0, 1.0}
    with pytest.raises(ValueError, match='pd_ee_delta_pos'):
        record_demos(str(tmp_path / 'joint'), [500000], dict(ENV_CFG, control_mode='pd_joint_delta_pos'),
                     progress=False, source='scripted')
    with pytest.raises(ValueError, match='demo source'):
        record_demos(root, [500000], ENV_CFG, progress=False, source='teleop')


def test_scripted_demos_with_reward_state_carry_the_joint_velocities_to_the_transitions(tmp_path):
    """With the env's reward_state, each demo frame keeps the arm's joint velocities, and the demo transitions carry
    them in frame_info, where a joint-speed-gated reward model reads them."""
    from ding_ext.demo_episodes import load_demo_transitions
    root = str(tmp_path / 'scripted_state')
    cfg = dict(ENV_CFG, reward_state=True, reward_frames=2)
    assert record_demos(root, [500000], cfg, progress=False, source='scripted')['recorded'] == 1
    ep = read_episode(episode_path(root, 's500000'))
    assert ep['reward_state'].shape == (len(ep['image']), 7)
    transitions = load_demo_transitions(root)
    states = [t['frame_info']['reward_state'] for t in transitions]
    assert len(states) == len(ep['obs']) and all(len(s) == 7 for s in states)
    speeds = np.abs(np.asarray(states)).max(axis=1)
    assert speeds.max() > 0.2 and speeds[-1] < 0.2  # the arm moves, then holds still at the goal
    assert np.allclose(states[3], ep['reward_state'][3])
