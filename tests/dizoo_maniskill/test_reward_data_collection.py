"""Stage 1: reward images written while dense-reward PPO trains on the real PickCube env."""
import copy
import hashlib
import json
import os

import numpy as np
import pytest

from ding_ext.image_dataset_writer import LabelledImageWriter, numbered_pngs
from ding_ext.image_folder_dataset import read_sidecar, scan_image_folder
from ding_ext.png_writer import read_png


def digest(path):
    with open(path, 'rb') as f:
        return hashlib.sha1(f.read()).hexdigest()


def frames(n, value):
    return [np.full((16, 16, 3), value + i % 5, np.uint8) for i in range(n)]


def test_writer_sampling_targets_and_numbering(tmp_path):
    w = LabelledImageWriter(str(tmp_path), target_success=3, target_failure=1000, sample_rate_success=1.0,
                            sample_rate_fail=0.5, metadata={'control_mode': 'a'}, seed=1, progress=False)
    for im in frames(5, 200):
        w.add(im, True)
    for im in frames(400, 10):
        w.add(im, False)
    w.close()
    assert w.counts['success'] == 3 and w.full('success')  # stopped sampling at its target
    assert 150 <= w.counts['failure'] <= 250  # ~half of 400 at sample_rate_fail=0.5
    names = sorted(os.listdir(tmp_path / 'success'))
    assert names == ['0001.png', '0002.png', '0003.png']
    assert read_png(str(tmp_path / 'success' / '0001.png')).shape == (16, 16, 3)
    assert json.load(open(tmp_path / 'metadata.json')) == {'control_mode': 'a'}


def test_sidecar_rows_take_the_tensors_and_arrays_an_env_manager_hands_over(tmp_path):
    import torch
    w = LabelledImageWriter(str(tmp_path), target_success=5, target_failure=5, progress=False)
    w.add(frames(1, 100)[0], True, frame_info=dict(episode_id='e', step=torch.tensor(3), arm_speed=torch.tensor(0.5),
                                                  arm_qpos=torch.tensor([0.25, -1.0]), dist=np.float32(0.5),
                                                  flags=[np.bool_(True), torch.tensor(2)]))
    w.close()
    row = json.loads(open(tmp_path / 'frames.jsonl').readline())
    assert (row['step'], row['arm_speed'], row['arm_qpos'], row['dist'], row['flags']) == (3, 0.5, [0.25, -1.0], 0.5,
                                                                                          [True, 2])


def test_writer_resumes_past_9999_and_never_overwrites(tmp_path):
    w = LabelledImageWriter(str(tmp_path), 10, 10, 1.0, 1.0, metadata={'control_mode': 'a'}, progress=False)
    w.add(frames(1, 50)[0], False)
    w.close()
    os.rename(tmp_path / 'failure' / '0001.png', tmp_path / 'failure' / '9999.png')
    before = digest(tmp_path / 'failure' / '9999.png')
    w = LabelledImageWriter(str(tmp_path), 10, 3, 1.0, 1.0, metadata={'control_mode': 'a'}, progress=False)
    assert w.counts['failure'] == 1
    for im in frames(5, 90):
        w.add(im, False)
    w.close()
    assert [n for n, _ in numbered_pngs(str(tmp_path / 'failure'))] == [9999, 10000, 10001]
    assert digest(tmp_path / 'failure' / '9999.png') == before
    with pytest.raises(ValueError, match="control_mode"):
        LabelledImageWriter(str(tmp_path), metadata={'control_mode': 'b'}, progress=False)
    with pytest.raises(ValueError, match="sample_rate_fail"):
        LabelledImageWriter(str(tmp_path / 'x'), sample_rate_fail=1.5, progress=False)


def test_collection_during_ppo_training_and_restart(tmp_path, monkeypatch):
    from dizoo_maniskill.config import pickcube_ppo_collect_config as stage1
    from dizoo_maniskill.record_planner_episodes import record_planner_episodes
    from entry import serial_pipeline_reward_model_onpolicy
    monkeypatch.chdir(tmp_path)

    def run(exp, target_failure):
        main, create = copy.deepcopy(stage1.main_config), copy.deepcopy(stage1.create_config)
        main.exp_name = exp
        main.env.update(max_episode_steps=10, collector_env_num=1, evaluator_env_num=1, n_evaluator_episode=1,
                        image_size=[3, 64, 64])
        main.policy.collect.n_sample = 40
        main.policy.learn.update(epoch_per_collect=1, batch_size=20)
        main.policy.eval.evaluator.eval_freq = 10 ** 6
        main.reward_data_collection.update(save_dir='data', target_success=2, target_failure=target_failure,
                                           sample_rate_fail=0.5)
        create.env_manager.type = 'base'
        return serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=8).history

    hist = run('first', 3)
    n_fail = hist['images']['failure']
    # 4 collects x 4 episodes of 10 steps: one final frame per episode, about half kept, up to the target
    assert n_fail == 3
    files = numbered_pngs('data/failure')
    assert [n for n, _ in files] == list(range(1, n_fail + 1))
    img = read_png(files[0][1])
    assert img.shape == (64, 64, 3) and img.std() > 5  # a real rendered scene
    meta = json.load(open('data/metadata.json'))
    assert meta == {'control_mode': 'pd_joint_delta_pos', 'reward_render_mode': 'episode_end',
                    'show_goal_site': True, 'env_image_size': [3, 64, 64], 'reward_camera': 'base_camera',
                    'reward_camera_pose': {'eye': [0.45, 0.25, 0.2], 'target': [0.0, 0.0, 0.15]},
                    'reward_camera_fov': 0.9, 'reward_frames': 1, 'reward_frame_stride': 1}
    # the sidecar: one row per PNG with the episode, the step and the facts behind the env's label
    rows = read_sidecar('data')  # (no success class yet: nothing to scan for training)
    assert sorted(rows) == [f'failure/{i:04d}.png' for i in range(1, n_fail + 1)]
    for f in rows.values():
        assert f['source'] == 'policy' and f['label'] == 0
        assert f['step'] == 10 and f['episode_id'].startswith('s')  # episode-end frames
        assert f['cube_goal_dist'] > 0.025 and f['phase'] != 'at_goal_static'
        assert {'is_grasped', 'is_robot_static', 'is_obj_placed'} <= set(f)
        assert len(f['arm_qpos']) == 7 and isinstance(f['arm_speed'], float)  # lists and numbers, whatever the info held
    assert len({f['episode_id'] for f in rows.values()}) == n_fail
    # success frames: a real motion-planned episode, rendered with the same camera settings; only the final
    # frames (stride larger than the episode, no hold, no carry-away) to keep the test short
    counts = record_planner_episodes('data', [0], dict(image_size=[3, 64, 64]), progress=False, frame_stride=1000,
                                     hold_steps=2, retreat_dist=0)
    assert counts['success'] >= 2
    digests = {p: digest(p) for _, p in numbered_pngs('data/failure')}
    # a restart continues the numbering, keeps what was written, and stops once both targets are reached
    n_success = len(numbered_pngs('data/success'))
    hist2 = run('second', n_fail + counts['failure'] + 3)
    assert hist2['images'] == {'success': n_success, 'failure': n_fail + counts['failure'] + 3}
    assert [n for n, _ in numbered_pngs('data/failure')] == list(range(1, n_fail + counts['failure'] + 4))
    assert all(digest(p) == d for p, d in digests.items())
    assert [n for n, _ in numbered_pngs('data/success')] == list(range(1, n_success + 1))
    assert all(scan_image_folder('data').frames)  # every frame of both runs has its sidecar row
