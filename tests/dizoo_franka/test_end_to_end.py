"""The Franka learned-reward path end to end in the real sim cell (``python -m dizoo_franka.sim_walkthrough``, small):
collect -> process -> train the classifier -> fidelity on held-out episodes -> RLPD with the image+state policy and
the learned per-step reward on demo and online transitions; and the RLPD config's robot / sim-cell settings."""
import importlib
import json
import os

import pytest

from ding_ext.checkpoint_io import load_checkpoint
from ding_ext.demo_episodes import episode_names, load_demo_transitions, read_episode
from ding_ext.image_folder_dataset import SIDECAR_FILE
from dizoo_franka.sim_walkthrough import SUMMARY_FILE, main

EPISODES, HELDOUT, STEPS, RL_STEPS = 4, 2, 30, 32
SMALL = ['--episodes', EPISODES, '--heldout-episodes', HELDOUT, '--max-steps', STEPS, '--hold-steps', 3,
         '--reset-height', 0.05, '--reset-random-xyz', 0.005, 0.005, 0.0, '--miss-prob', 0.25, '--noise', 0.05,
         '--image-size', 64, '--policy-image-size', 64, '--classifier-image-size', 32, '--classifier-hidden-dim', 16,
         '--classifier-epochs', 2, '--classifier-batch-size', 16, '--rl-steps', RL_STEPS, '--rl-episode-steps', 15,
         '--rl-batch-size', 16, '--rl-n-sample', 16, '--rl-hidden-size', 32, '--bc-pretrain-iterations', 5]


def test_walkthrough_collects_trains_evaluates_and_runs_rlpd_with_the_learned_reward(tmp_path):
    out = tmp_path / 'walkthrough'
    assert main(['--out', str(out)] + [str(v) for v in SMALL]) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    stages = summary['stages_s']
    assert list(stages) == ['sim cell start', 'collect', 'collect held-out', 'process', 'train classifier',
                            'fidelity (held-out)', 'rlpd', 'total'] and all(v > 0 for v in stages.values())

    # collect: one file per episode, every step's frame and the reset frame (the image of the first observation)
    steps = {}
    for folder, n in (('episodes', EPISODES), ('heldout', HELDOUT)):
        assert episode_names(str(out / folder)) == [f'{i:04d}' for i in range(n)]
        for name in episode_names(str(out / folder)):
            ep = read_episode(str(out / folder / f'episode_{name}.npz'))
            steps[folder] = steps.get(folder, 0) + len(ep['action'])
            assert 0 < len(ep['action']) <= STEPS and ep['image'].shape == (len(ep['action']), 64, 64, 3)
            assert ep['reset_image'].shape == (64, 64, 3)
    demos = load_demo_transitions(str(out / 'episodes'), obs_image=True, obs_image_size=[3, 64, 64])
    assert len(demos) == steps['episodes'] and demos[0]['obs']['image'].shape == (3, 64, 64)

    # process: the sidecar has a row per step of every episode (not the reset frames), with the target distance
    rows = [json.loads(line) for line in open(out / 'episodes' / 'collected_data' / SIDECAR_FILE)]
    assert len(rows) == steps['episodes'] == sum(summary['dataset']['counts'].values())
    assert {r['episode_id'] for r in rows} == {f'franka-{i:04d}' for i in range(EPISODES)}
    assert all(0 <= r['target_dist'] < 0.2 for r in rows) and any(r['label'] == 1 for r in rows)

    # train: the checkpoint describes its network and the images it was trained on
    checkpoint = summary['classifier']['checkpoint']
    meta = load_checkpoint(checkpoint)[1]
    assert meta['image_size'] == [3, 32, 32] and meta['env_image_size'] == [3, 64, 64] and meta['env'] == 'franka'

    # fidelity on the held-out episodes, at the stored threshold (0.5 when none was stored)
    f = summary['fidelity']
    assert f['num_images'] == steps['heldout'] and 0 < f['num_success'] < f['num_images']
    assert (0 < f['threshold'] < 1) if f['threshold_stored'] else f['threshold'] == 0.5
    assert all(0 <= f[k] <= 1 for k in ('precision', 'recall', 'average_precision'))
    hard, off_target = f['hard_negatives'], f['hard_negatives_off_target']
    assert hard['num_images'] > 0 and 0 <= hard['false_positives'] <= hard['num_images']
    assert off_target['num_images'] <= hard['num_images'] and off_target['false_positives'] <= hard['false_positives']
    report = json.loads((out / 'fidelity_heldout' / 'report.json').read_text())
    assert report['num_images'] == f['num_images'] and set(report['subsets']) == {'hard_negatives',
                                                                                 'hard_negatives_off_target'}

    # RLPD: the env steps ran, every batch was half demos, and the learner received the classifier's rewards on both
    rl = summary['rlpd']
    assert rl['envstep'] >= RL_STEPS and rl['train_iter'] > 0
    demo, online = rl['learned_rewards']['demo'], rl['learned_rewards']['online']
    assert demo['transitions'] == online['transitions'] > 0
    assert 0 <= demo['reward_mean'] <= 1 and 0 <= online['reward_mean'] <= 1
    assert rl['online_frames_scored'] > 0  # online frames were scored and compared with the env's success
    assert rl['demo_pretrain']['iterations'] == 5 and len(rl['eval_success']) >= 2
    assert os.path.isfile(os.path.join(rl['exp_dir'], 'rerun_config.py'))


def test_rlpd_config_points_at_a_robot_or_the_cell_from_the_environment(monkeypatch):
    import dizoo_franka.config.realworld_peginsertion_rlpd_config as config
    monkeypatch.delenv('FRANKA_ROBOT_IP', raising=False)
    monkeypatch.delenv('FRANKA_CAMERA_PORT', raising=False)
    robot = importlib.reload(config).main_config
    assert robot.env.robot_ip == '172.16.0.2' and robot.env.realtime_config == 'enforce'
    assert robot.env.camera['type'] == 'realsense'
    monkeypatch.setenv('FRANKA_ROBOT_IP', '127.0.0.1')
    monkeypatch.setenv('FRANKA_CAMERA_PORT', '40123')
    sim = importlib.reload(config).main_config
    assert sim.env.robot_ip == '127.0.0.1' and sim.env.realtime_config == 'ignore'
    assert sim.env.camera == dict(type='sim', host='127.0.0.1', port=40123)
    # the policy sees the image (smaller than the reward image) and the state; demos give the same observations
    assert sim.env.obs_image_size == sim.policy.model.image_shape == [3, 64, 64] != sim.env.image_size
    buffer = sim.policy.other.replay_buffer
    assert buffer.demo_obs_image and buffer.demo_obs_image_size == sim.env.obs_image_size
    assert buffer.demo_env_metadata['image_size'] == sim.env.image_size
    assert sim.reward_model.reward_mode == 'per_step' and sim.reward_model.combine_mode == 'replace'
    assert config.create_config.policy.type == 'rlpd_reward_image' and config.create_config.env_manager.type == 'base'
    monkeypatch.delenv('FRANKA_ROBOT_IP')
    with pytest.raises(ValueError, match='FRANKA_ROBOT_IP is not'):
        importlib.reload(config)
    monkeypatch.delenv('FRANKA_CAMERA_PORT')
    assert importlib.reload(config).main_config.env.robot_ip == '172.16.0.2'
