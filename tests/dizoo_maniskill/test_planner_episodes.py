"""Whole motion-planned PickCube episodes on the real env: per-frame labels, label facts, the sidecar, and
the episode-level train/val split. No mocks."""
import json
import os

import pytest

from ding_ext.image_folder_dataset import SIDECAR_FILE, scan_image_folder, split_train_val
from dizoo_maniskill.envs.maniskill_env import NEAR_GOAL_DIST
from dizoo_maniskill.record_planner_episodes import main as record_main, parse_seeds

ENV = dict(image_size=[3, 64, 64])


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """Two planner episodes (seeds 0 and 1) recorded through the CLI into a fresh folder."""
    root = str(tmp_path_factory.mktemp('planner') / 'data')
    # the recipe's 128 px camera would cost more; the CLI has no size flag, so use the library call for 64 px
    from dizoo_maniskill.record_planner_episodes import record_planner_episodes
    counts = record_planner_episodes(root, [0, 1], ENV, workers=1, progress=False, frame_stride=4, hold_steps=6,
                                     retreat_dist=0.1, retreat_hold_steps=4)
    return root, counts


def test_frames_are_labelled_by_the_env_with_the_facts_behind_the_label(dataset):
    root, counts = dataset
    assert counts['success'] > 0 and counts['failure'] > counts['success']  # hard negatives outnumber successes
    scan = scan_image_folder(root)
    assert len(scan.frames) == len(scan.files) and all(scan.frames)  # every PNG has a sidecar row
    phases = {f['phase'] for f in scan.frames}
    assert {'approach', 'transport', 'at_goal_static'} <= phases
    stages = {f['planner_stage'] for f in scan.frames}
    assert {'pick_and_place', 'hold_at_goal', 'hold_away'} <= stages
    for f, label, path in zip(scan.frames, scan.labels, scan.files):
        assert f['source'] == 'planner' and f['episode_id'] in ('planner-s0', 'planner-s1')
        assert f['label'] == label and f['file'] == os.path.relpath(path, root)
        if label:  # the env's success: cube within 2.5 cm of the goal and the robot static
            assert f['cube_goal_dist'] <= 0.025 and f['is_robot_static'] and f['phase'] == 'at_goal_static'
        else:
            assert f['phase'] != 'at_goal_static'
        # the arm speed behind is_robot_static (ManiSkill's is_static(0.2): largest arm joint speed, rad/s)
        assert f['is_robot_static'] == (f['arm_speed'] <= 0.2) and len(f['arm_qpos']) == 7  # Panda's arm joints
    assert max(f['arm_speed'] for f in scan.frames) > 0.2  # the arm moved between the recorded frames
    # carried away and held still, cube in the gripper: the hard negative a "cube lifted" classifier misses
    away = [f for f in scan.frames if f['planner_stage'] == 'hold_away']
    assert away and all(f['label'] == 0 and f['is_grasped'] and f['cube_goal_dist'] > NEAR_GOAL_DIST for f in away)
    # every step near the goal is recorded, whatever the stride
    steps = sorted(f['step'] for f in scan.frames if f['episode_id'] == 'planner-s0' and f['cube_goal_dist'] <= NEAR_GOAL_DIST)
    assert steps == list(range(steps[0], steps[0] + len(steps))) or len(steps) > 10
    assert json.load(open(os.path.join(root, 'metadata.json')))['show_goal_site'] is True


def test_episode_split_keeps_each_episode_on_one_side(dataset):
    scan = scan_image_folder(dataset[0])
    groups = scan.episode_ids
    assert groups is not None and set(groups) == {'planner-s0', 'planner-s1'}
    train, val = split_train_val(scan.files, scan.labels, 0.4, seed=0, groups=groups)
    assert sorted(train + val) == list(range(len(scan.files)))
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert train and val
    # a file-level split would put frames of one episode on both sides
    train_f, val_f = split_train_val(scan.files, scan.labels, 0.4, seed=0)
    assert {groups[i] for i in train_f} & {groups[i] for i in val_f}


def test_sidecar_survives_a_cut_short_line_and_restart_continues(dataset, tmp_path):
    import shutil
    from dizoo_maniskill.record_planner_episodes import record_planner_episodes
    root = str(tmp_path / 'copy')
    shutil.copytree(dataset[0], root)
    with open(os.path.join(root, SIDECAR_FILE), 'a') as f:
        f.write('{"file": "success/99')  # a crash in the middle of a row
    before = scan_image_folder(root)
    assert all(before.frames)
    # the CLI renders at the recipe's 128 px: refused by this 64 px folder's metadata, nothing written
    with pytest.raises(ValueError, match='env_image_size'):
        record_main(['--save-dir', root, '--seeds', '2'])
    assert len(scan_image_folder(root).files) == len(before.files)
    # a restart at the folder's settings continues the numbering and the sidecar
    counts = record_planner_episodes(root, [2], ENV, progress=False, frame_stride=50, hold_steps=3, retreat_dist=0)
    after = scan_image_folder(root)
    assert len(after.files) == len(before.files) + counts['success'] + counts['failure']
    assert all(after.frames) and {f['episode_id'] for f in after.frames} == {'planner-s0', 'planner-s1', 'planner-s2'}
    # seeds whose episode the folder holds are skipped: a re-run resumes instead of duplicating frames
    again = record_planner_episodes(root, [1, 2], ENV, progress=False, frame_stride=50, hold_steps=3, retreat_dist=0)
    assert again == dict(success=0, failure=0, skipped=2)
    assert len(scan_image_folder(root).files) == len(after.files)


def test_seed_ranges():
    assert parse_seeds('3:6') == [3, 4, 5] and parse_seeds('1,5') == [1, 5]
    with pytest.raises(Exception):
        parse_seeds(':')


def test_cli_records_with_the_env_of_a_config(tmp_path):
    root = str(tmp_path / 'rlpd_data')
    assert record_main(['--save-dir', root, '--seeds', '3', '--frame-stride', '50', '--hold-steps', '2',
                        '--retreat-dist', '0', '--config', os.path.join(os.path.dirname(__file__), '..', '..',
                        'dizoo_maniskill', 'config', 'pickcube_rlpd_resnet_reward_config.py')]) == 0
    meta = json.load(open(os.path.join(root, 'metadata.json')))
    # the RLPD env's settings, which its classifier checkpoint must carry
    assert meta['control_mode'] == 'pd_ee_delta_pos' and meta['reward_render_mode'] == 'every_step'
    assert meta['reward_camera_pose'] == {'eye': [0.45, 0.25, 0.2], 'target': [0.0, 0.0, 0.15]}
    assert scan_image_folder(root).labels.sum() > 0
