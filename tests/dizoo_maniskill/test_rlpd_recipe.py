"""The RLPD recipe's arm configs and run summaries (the runs themselves are tested in tests/entry/test_rlpd_entry.py)."""
import math

import pytest

from dizoo_maniskill.rlpd_recipe import arm_config, pooled_agreement, steps_to_reach


def frozen_render_mode():
    from dizoo_maniskill.config import pickcube_rlpd_resnet_reward_config as rlpd
    return rlpd.main_config.env.reward_render_mode


def test_arm_configs(tmp_path):
    from tests.ding_ext.helpers import make_model
    ckpt = make_model(env_metadata={'control_mode': 'pd_ee_delta_pos'}).save(str(tmp_path / 'c.safetensors'))
    oracle, oracle_create = arm_config('oracle', 'o', 'demos', eval_every=500)
    assert 'reward_model' not in oracle and 'reward_model' not in oracle_create
    assert oracle.env.reward_mode == 'sparse' and oracle.env.terminate_on_success is False
    assert oracle.env.reward_render_mode == 'none' and frozen_render_mode() == 'every_step'
    assert oracle.policy.other.replay_buffer.demo_path == 'demos' and oracle_create.replay_buffer.type == 'demo_mix'
    assert oracle.policy.eval.evaluator.eval_freq == 500
    # the recipe's defaults: the actor clones the demos first, a strong BC term keeps it near them
    assert oracle.policy.learn.bc_pretrain_iterations > 0 and oracle.policy.learn.bc_weight >= 10
    assert oracle.policy.other.replay_buffer.demo_max_episodes is None
    some, _ = arm_config('oracle', 'o', 'demos', learn=dict(bc_weight=0.0), demo_episodes=20)
    assert some.policy.learn.bc_weight == 0.0 and some.policy.other.replay_buffer.demo_max_episodes == 20
    frozen, _ = arm_config('frozen', 'f', 'demos', checkpoint=ckpt, max_episode_steps=20)
    assert frozen.reward_model.cooptrain_reward is False and frozen.reward_model.reward_threshold == 0.5  # uncalibrated
    assert frozen.reward_model.reward_mode == 'per_step' and frozen.env.max_episode_steps == 20
    # a single-frame checkpoint: a single-frame reward model and env, whatever clips the config's default uses
    assert frozen.reward_model.type == 'resnet' and frozen.env.reward_frames == 1
    assert 'still_motion_threshold' not in frozen.reward_model and 'clip_length' not in frozen.reward_model
    cotrain, _ = arm_config('cotrain', 'c', 'demos', checkpoint=ckpt)
    assert cotrain.reward_model.cooptrain_reward is True and cotrain.reward_model.reward_threshold == 0.5
    # it trains on a cadence (its replay buffer is scored again once per training); the frozen arm has the default
    assert cotrain.reward_model.train_interval > 1 and frozen.reward_model.get('train_interval', 1) == 1
    from ding_ext.checkpoint_io import load_checkpoint, save_checkpoint
    weights, meta = load_checkpoint(ckpt)
    calibrated = save_checkpoint(str(tmp_path / 'cal.safetensors'), weights, dict(meta, calibrated_threshold=0.3))
    assert arm_config('frozen', 'f', 'demos', checkpoint=calibrated)[0].reward_model.reward_threshold == 'auto'
    assert arm_config('cotrain', 'c', 'demos', checkpoint=calibrated)[0].reward_model.reward_threshold == 0.3
    with pytest.raises(FileNotFoundError, match='classifier'):
        arm_config('frozen', 'f', 'demos', checkpoint=str(tmp_path / 'missing.safetensors'))
    with pytest.raises(ValueError, match='unknown arm'):
        arm_config('dense', 'd', 'demos')


def test_a_clip_classifier_sets_the_reward_model_and_the_env(tmp_path):
    """A resnet_video checkpoint brings its clip settings, and the env renders clips as its data did; the oracle
    ignores the demos' image settings (it scores no images)."""
    from tests.ding_ext.test_video_reward_model import make_video_model
    env_meta = {'control_mode': 'pd_ee_delta_pos', 'reward_frames': 5, 'reward_frame_stride': 2}
    ckpt = make_video_model(clip_length=5, num_frames=2, fusion='early', env_metadata=env_meta).save(
        str(tmp_path / 'clip.safetensors'))
    frozen, _ = arm_config('frozen', 'f', 'demos', checkpoint=ckpt)
    rm = frozen.reward_model
    assert (rm.type, rm.clip_length, rm.num_frames, rm.fusion, rm.image_size) == ('resnet_video', 5, 2, 'early',
                                                                                  [3, 32, 32])
    assert (frozen.env.reward_frames, frozen.env.reward_frame_stride) == (5, 2)
    demo_meta = frozen.policy.other.replay_buffer.demo_env_metadata
    assert demo_meta['reward_frames'] == 5 and demo_meta['reward_frame_stride'] == 2
    assert rm.still_motion_threshold is None  # the checkpoint has no still-scene gate
    oracle, _ = arm_config('oracle', 'o', 'demos')
    assert set(oracle.policy.other.replay_buffer.demo_env_metadata) == {'env_id', 'control_mode'}
    # the recipe's reward: the last of 2 frames, with the checkpoint's still-scene gate
    from dizoo_maniskill.rlpd_recipe import STILL
    still = make_video_model(clip_length=2, num_frames=1, frame_sampling='last', still_motion_threshold=0.003,
                             env_metadata=dict(env_meta, reward_frames=2, reward_frame_stride=1))
    main, create = arm_config('frozen', 'f', 'demos', checkpoint=still.save(str(tmp_path / 'still.safetensors')))
    assert (main.reward_model.clip_length, main.reward_model.num_frames) == (STILL['reward_frames'], STILL['num_frames'])
    assert main.reward_model.still_motion_threshold == 'auto' and create.reward_model.type == 'resnet_video'
    assert main.env.reward_frames == 2 and main.env.reward_state is False
    # the joint-speed gate: the model reads it from the checkpoint, and the env emits the joint velocities
    joint = make_video_model(clip_length=2, num_frames=2, frame_sampling='last', still_joint_speed=0.2,
                             env_metadata=dict(env_meta, reward_frames=2, reward_frame_stride=1))
    main, _ = arm_config('frozen', 'f', 'demos', checkpoint=joint.save(str(tmp_path / 'joint.safetensors')))
    assert main.reward_model.still_joint_speed == 'auto' and main.env.reward_state is True
    assert main.reward_model.still_motion_threshold is None


def test_steps_to_reach_and_pooled_agreement():
    curve = [(0, 0.0), (2000, 0.4), (4000, 0.95), (6000, 0.85)]
    assert steps_to_reach(curve, 0.9) == 4000 and steps_to_reach(curve, 0.4) == 2000
    assert steps_to_reach(curve, 0.99) is None
    assert steps_to_reach([(100, (0.95 + 0.85) / 2)], 0.9) == 100  # a seed average that is 0.9 up to rounding
    rows = [dict(tp=3, fp=1, fn=0, frames=10), dict(tp=1, fp=0, fn=2, frames=10)]
    a = pooled_agreement(rows)
    assert a['precision'] == pytest.approx(0.8) and a['recall'] == pytest.approx(4 / 6) and a['frames'] == 20
    assert math.isnan(pooled_agreement([dict(tp=0, fp=0, fn=0, frames=5)])['precision'])


def test_classifier_data_holds_planner_and_expert_episodes_and_resumes(tmp_path):
    from ding_ext.image_folder_dataset import scan_image_folder
    from dizoo_maniskill.rlpd_recipe import CLASSIFIER_SEED, EXPERT_SEED, env_config, record_classifier_data
    data = str(tmp_path / 'data')
    env_cfg = env_config(image_size=[3, 48, 48])
    counts = record_classifier_data(data, 1, 1, env_cfg, workers=1)
    assert set(counts) == {'planner', 'expert'}
    scan = scan_image_folder(data)
    episodes = set(scan.episode_ids)
    assert episodes == {f'planner-s{CLASSIFIER_SEED}', f'expert-s{EXPERT_SEED}'}
    for source in ('planner', 'expert'):
        labels = [lab for f, lab in zip(scan.frames, scan.labels) if f['source'] == source]
        assert counts[source]['success'] == sum(labels) > 0 and counts[source]['failure'] == len(labels) - sum(labels)
    again = record_classifier_data(data, 1, 1, env_cfg, workers=1)
    assert again['planner']['skipped'] == again['expert']['skipped'] == 1
    assert len(scan_image_folder(data).files) == len(scan.files)


def test_train_classifier_calibrates_the_still_scene_gate_first(tmp_path):
    """The recipe's classifier: the gate's threshold comes from the data's success clips, the validation report is the
    gated reward's, and the checkpoint carries the gate (which the arm configs then use)."""
    from ding_ext.checkpoint_io import load_checkpoint
    from ding_ext.evaluate_reward_model import build_model_from_checkpoint
    from dizoo_maniskill.rlpd_recipe import train_classifier
    from tests.ding_ext.test_motion_gate import _write_clips
    data = str(tmp_path / 'clips')
    _write_clips(data, n=10)  # still success clips; failure clips half moving, half still
    result = train_classifier(data, str(tmp_path / 'model'), epochs=1, target_precision=0.5, progress=False)
    gate = result['motion_gate']
    assert gate['threshold'] == 0.0 and gate['moving_failure_passed'] == 0.0
    meta = load_checkpoint(result['best_path'])[1]
    assert meta['still_motion_threshold'] == 0.0 and meta['clip_length'] == 2 and meta['num_frames'] == 1
    model = build_model_from_checkpoint(result['best_path'])
    from ding_ext.image_folder_dataset import scan_image_folder
    scan = scan_image_folder(data)
    probs = model.predict_proba(scan.images)
    moved = [not f['is_robot_static'] for f in scan.frames]
    assert sum(moved) == 5 and all(p == 0.0 for p, m in zip(probs.tolist(), moved) if m)  # whatever the weights say
