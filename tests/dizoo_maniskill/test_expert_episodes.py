"""Closed-loop expert episodes as labelled classifier frames, on the real env with real rendering. No mocks."""
import pytest

from ding_ext.image_folder_dataset import scan_image_folder
from dizoo_maniskill.envs.expert_episodes import WORKSPACE_HIGH, WORKSPACE_LOW, record_expert_episode
from dizoo_maniskill.envs.maniskill_env import ManiSkillEnv
from dizoo_maniskill.record_planner_episodes import record_expert_episodes

ENV = dict(image_size=[3, 64, 64], control_mode='pd_ee_delta_pos')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('expert') / 'data')
    counts = record_expert_episodes(root, [1, 2], ENV, workers=1, progress=False, frame_stride=3)
    return root, counts


def test_expert_frames_cover_success_and_the_hard_negatives_around_it(dataset):
    root, counts = dataset
    assert counts['success'] > 0 and counts['failure'] > counts['success'] and counts['skipped'] == 0
    scan = scan_image_folder(root)
    assert len(scan.frames) == len(scan.files) == counts['success'] + counts['failure']
    assert {f['episode_id'] for f in scan.frames} == {'expert-s1', 'expert-s2'}
    assert {'wander', 'reach_goal', 'hold_at_goal', 'hold_away'} <= {f['expert_stage'] for f in scan.frames}
    assert 'settle' not in {f['expert_stage'] for f in scan.frames}  # only with settle_offset_range
    for f, label in zip(scan.frames, scan.labels):
        assert f['source'] == 'expert' and f['label'] == label
        if label:  # the env's success: cube within 2.5 cm of the goal, robot static
            assert f['cube_goal_dist'] <= 0.025 and f['is_robot_static']
    # successes come from the hold at the goal; held away, the cube is lifted and still, and no success
    assert any(label for f, label in zip(scan.frames, scan.labels) if f['expert_stage'] == 'hold_at_goal')
    away = [f for f in scan.frames if f['expert_stage'] == 'hold_away']
    assert away and all(f['cube_goal_dist'] > 0.025 for f in away[-2:])
    # the same seeds again: nothing recorded twice
    again = record_expert_episodes(root, [1, 2], ENV, workers=1, progress=False)
    assert again == dict(success=0, failure=0, skipped=2)
    assert len(scan_image_folder(root).files) == len(scan.files)


def test_wandering_reaches_the_workspace_and_other_control_modes_are_refused():
    env = ManiSkillEnv(dict(ENV, reward_render_mode='none'))
    try:
        frames = record_expert_episode(env, 3, frame_stride=1, wander_points=1, wander_steps=30, max_reach_steps=0,
                                       hold_steps=0, noise_range=(0.0, 0.0))
        assert frames is None  # the cube was never carried to the goal: no episode
        tcp = env.unwrapped_env.unwrapped.agent.tcp.pose.p[0].cpu().numpy()
        assert ((tcp > WORKSPACE_LOW - 0.03) & (tcp < WORKSPACE_HIGH + 0.03)).all()
    finally:
        env.close()
    with pytest.raises(ValueError, match='pd_ee_delta_pos'):
        record_expert_episode(ManiSkillEnv(dict(ENV, control_mode='pd_joint_delta_pos')), 0)


def test_cli_records_expert_episodes_for_an_rl_config(tmp_path):
    import json
    import os
    from dizoo_maniskill.record_planner_episodes import main as record_main
    root = str(tmp_path / 'data')
    config = os.path.join(os.path.dirname(__file__), '..', '..', 'dizoo_maniskill', 'config',
                          'pickcube_rlpd_resnet_reward_config.py')
    assert record_main(['--source', 'expert', '--save-dir', root, '--seeds', '1', '--frame-stride', '6',
                        '--config', config]) == 0
    scan = scan_image_folder(root)
    assert {f['episode_id'] for f in scan.frames} == {'expert-s1'} and scan.labels.sum() > 0
    meta = json.load(open(os.path.join(root, 'metadata.json')))
    assert meta['control_mode'] == 'pd_ee_delta_pos' and meta['env_image_size'] == [3, 128, 128]


def test_settled_holds_sit_where_drawn_near_the_tolerance_boundary():
    """settle_offset_range: the cube is carried to a point that far from the goal before the hold, so holds cover
    the 2.5 cm boundary (labelled by the env either way), and the arm comes to rest at the goal once more."""
    env = ManiSkillEnv(dict(ENV, reward_render_mode='none'))
    try:
        frames = record_expert_episode(env, 3, frame_stride=3, settle_offset_range=(0.015, 0.022),
                                       offset_range=(0.027, 0.032))
    finally:
        env.close()
    stages = [f['frame_info']['expert_stage'] for f in frames]
    assert 'settle' in stages and stages.index('settle') < stages.index('hold_at_goal')
    held = [f['frame_info'] for f in frames if f['frame_info']['expert_stage'] == 'hold_at_goal']
    assert all(0.012 <= f['cube_goal_dist'] <= 0.032 for f in held), [f['cube_goal_dist'] for f in held]
    assert held[-1]['arm_speed'] < 0.2 and held[-1]['is_robot_static']
    settle = [f['frame_info'] for f in frames if f['frame_info']['expert_stage'] == 'settle']
    assert max(f['arm_speed'] for f in settle) > held[-1]['arm_speed']  # it moved, then came to rest
