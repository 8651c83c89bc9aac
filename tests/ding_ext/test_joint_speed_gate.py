"""The joint-speed gate of clip reward models (ding_ext.joint_speed_gate): success only where the robot's joint
velocities say it is still. The real ResNet clip model, trainer, evaluator and RLinf calls; no mocks."""
import json
import os

import numpy as np
import pytest
import torch

from ding_ext.joint_speed_gate import calibrate_joint_speed, joint_speed, main
from ding_ext.png_writer import write_png
from tests.ding_ext.helpers import force_probability
from tests.ding_ext.test_video_reward_model import make_video_model

GATED = dict(clip_length=2, num_frames=1, frame_sampling='last')


def _clip(seed, bright):
    """A 2-frame filmstrip [32, 64, 3]: noise, with a bright square in both frames for a success-looking scene."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 60, (32, 32, 3), np.uint8)
    if bright:
        frame[8:24, 8:24] = rng.integers(200, 255, (16, 16, 3), np.uint8)
    return np.concatenate([frame, frame], axis=1)


def _write_clips(root, n=10):
    """success/: the square, arm still (0.01-0.15 rad/s); failure/: the SAME-looking scene with the arm moving
    (0.5-1.0 rad/s; pixels cannot tell them apart) for even i, and no square with the arm still for odd i."""
    rng = np.random.default_rng(7)
    rows = []
    for label, name in ((1, 'success'), (0, 'failure')):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n):
            moving = not label and i % 2 == 0
            speed = rng.uniform(0.5, 1.0) if moving else rng.uniform(0.01, 0.15)
            state = (rng.uniform(-1, 1, 7) * speed).tolist()
            state[i % 7] = speed * (1 if i % 3 else -1)
            rel = f"{name}/{i:04d}.png"
            write_png(os.path.join(root, rel), _clip(100 * label + i, bright=bool(label) or moving))
            rows.append(dict(file=rel, label=label, episode_id=f"e{i}", reward_state=state, is_robot_static=not moving,
                             phase='at_goal_static' if label else ('at_goal_moving' if moving else 'approach')))
    with open(os.path.join(root, 'frames.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)
    return rows


def test_joint_speed_is_the_largest_absolute_velocity_and_bad_states_are_named():
    s = joint_speed([[0.1, -0.3, 0.2], [0.05, 0.0, -0.01]])
    assert s.dtype == torch.float32 and torch.allclose(s, torch.tensor([0.3, 0.05]))
    assert torch.allclose(joint_speed(np.array([0.1, -0.4]), n=1), torch.tensor([0.4]))  # one image, one row
    assert torch.allclose(joint_speed(torch.tensor([[0.2, 0.1]])), torch.tensor([0.2]))
    with pytest.raises(ValueError, match="needs the robot's joint velocities"):
        joint_speed(None, 2)
    with pytest.raises(ValueError, match="3 reward states for 2 images"):
        joint_speed([[0.1], [0.2], [0.3]], n=2)
    with pytest.raises(ValueError, match="rows of one length"):
        joint_speed([[0.1, 0.2], [0.3]])
    with pytest.raises(ValueError, match="NaN or inf"):
        joint_speed([[float('nan'), 0.1]])


def test_gate_zeroes_moving_clips_through_every_entry_and_survives_the_checkpoint(tmp_path, capsys):
    from ding_ext.evaluate_reward_model import build_model_from_checkpoint
    from ding_ext.reward_manager import RewardManager
    data = str(tmp_path / 'clips')
    _write_clips(data)
    calib = calibrate_joint_speed(data, keep=1.0)
    assert 0.1 < calib['threshold'] <= 0.15 and calib['success_kept'] == 1.0
    assert calib['moving_failure_clips'] == 5 and calib['moving_failure_passed'] == 0.0
    assert calib['failure_passed_by_phase'] == {'approach': 1.0, 'at_goal_moving': 0.0}

    model = make_video_model(**GATED)
    force_probability(model, 0.9)
    path = model.save(str(tmp_path / 'clip.safetensors'))
    with pytest.raises(ValueError, match="still_joint_speed='auto' needs a checkpoint"):
        make_video_model(**GATED, checkpoint_path=path, cooptrain_reward=False, still_joint_speed='auto')
    assert main(['--data', data, '--checkpoint', path, '--store']) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index('{\n  "threshold"'):])['stored']['still_joint_speed'] == pytest.approx(calib['threshold'])

    gated = make_video_model(**GATED, checkpoint_path=path, cooptrain_reward=False, still_joint_speed='auto')
    assert gated.needs_states and gated.joint_speed_threshold == pytest.approx(calib['threshold'])
    clips = np.stack([_clip(1, True), _clip(2, True)])
    states = np.array([[0.05, -0.02], [0.01, -0.6]], np.float32)  # still, moving
    assert torch.allclose(gated.predict_proba(clips, states=states), torch.tensor([0.9, 0.0]), atol=1e-5)
    # RLinf's calls: the observations dict carries the states; without them the gate cannot judge and says so
    assert gated.compute_reward({'images': clips, 'states': states}).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="needs the robot's joint velocities"):
        gated.compute_reward({'images': clips})
    manager = RewardManager(dict(type='resnet_video', checkpoint_path=path, still_joint_speed='auto', hidden_dim=16,
                                 image_size=[3, 32, 32], **GATED))
    assert manager.compute_rewards({'main_images': clips, 'states': states.tolist()}).tolist() == [1.0, 0.0]
    assert torch.allclose(manager.compute_probabilities({'images': clips, 'states': states}),
                          torch.tensor([0.9, 0.0]), atol=1e-5)
    # DI-engine transitions: the state sits in the frame_info the env emits with the image
    data_t = [dict(reward_image=c, frame_info=dict(reward_state=s.tolist()), reward=torch.zeros(1), done=True)
              for c, s in zip(clips, states)]
    assert [float(t['reward']) for t in gated.estimate(data_t)] == [1.0, 0.0]
    with pytest.raises(KeyError, match="no reward state at key 'frame_info.reward_state'"):
        gated.estimate([dict(reward_image=clips[0], reward=torch.zeros(1), done=True)])
    # the evaluator rebuilds the gate from the checkpoint and reads the states from the sidecar
    rebuilt = build_model_from_checkpoint(path)
    assert rebuilt.cfg.still_joint_speed == 'auto' and rebuilt.predict_proba(clips, states=states)[1] == 0.0
    assert build_model_from_checkpoint(gated.save(str(tmp_path / 'copy.safetensors'))).needs_states
    # ungated, the same weights call the moving clip a success, and states are not needed
    plain = make_video_model(**GATED, checkpoint_path=str(tmp_path / 'clip.safetensors'), cooptrain_reward=False)
    assert not plain.needs_states and plain.predict_proba(clips)[1] > 0.8


def test_co_training_keeps_only_the_clips_the_gate_passes():
    model = make_video_model(**GATED, still_joint_speed=0.2)
    clips = [_clip(i, True) for i in range(4)]
    speeds = [0.05, 0.6, 0.19, 0.9]
    data = [dict(reward_image=c, success=bool(i % 2 == 0), frame_info=dict(reward_state=[s, -s / 2]))
            for i, (c, s) in enumerate(zip(clips, speeds))]
    data.append(dict(obs=np.zeros(3), success=False))  # no image: not a training example, no state needed
    model.collect_data(data)
    assert len(model.success_images) == 2 and len(model.failure_images) == 0  # the moving clips stay out
    with pytest.raises(KeyError, match="no reward state"):
        model.collect_data([dict(reward_image=clips[0], success=True)])


def test_evaluation_reads_the_sidecar_states_and_names_data_without_them(tmp_path):
    from ding_ext.evaluate_reward_model import EvaluationError, evaluate_checkpoint
    data = str(tmp_path / 'clips')
    rows = _write_clips(data)
    model = make_video_model(**GATED, still_joint_speed=0.2)
    force_probability(model, 0.9)
    path = model.save(str(tmp_path / 'gated.safetensors'))
    report = evaluate_checkpoint(path, data, str(tmp_path / 'report'), threshold=0.5)
    # every clip looks like success to the forced model; the gate turns the 5 moving failures into true negatives
    assert report['at_threshold']['tp'] == 10 and report['at_threshold']['fp'] == 5
    assert report['at_threshold']['tn'] == 5
    with open(os.path.join(data, 'frames.jsonl'), 'w') as f:  # one row loses its state
        f.writelines(json.dumps({k: v for k, v in r.items() if not (k == 'reward_state' and i == 3)}) + '\n'
                     for i, r in enumerate(rows))
    with pytest.raises(EvaluationError, match="1 of 20 images .* have no 'reward_state'"):
        evaluate_checkpoint(path, data, str(tmp_path / 'report2'), threshold=0.5)


def test_bad_gate_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="still_joint_speed must be None, 'auto' or a number"):
        make_video_model(still_joint_speed=-0.1)
    with pytest.raises(ValueError, match="still_joint_speed_keep"):
        make_video_model(still_joint_speed_keep=0.0)
    os.makedirs(tmp_path / 'empty' / 'success')
    with pytest.raises(SystemExit):
        main(['--data', str(tmp_path / 'empty')])  # no sidecar to calibrate on
    with pytest.raises(SystemExit):
        main(['--data', str(tmp_path), '--store'])  # --store without --checkpoint


def test_the_trainer_trains_on_the_clips_the_gate_passes_and_stores_it_in_both_checkpoints(tmp_path):
    from ding_ext.checkpoint_io import load_checkpoint
    from ding_ext.image_folder_dataset import DataError
    from ding_ext.train_reward_model import train_reward_model
    data = str(tmp_path / 'clips')
    _write_clips(data)
    common = dict(epochs=1, batch_size=8, val_split=0.25, progress=False, num_workers=0)
    model_keys = {'model.type': 'resnet_video', 'model.arch': 'resnet18', 'model.image_size': [3, 32, 32],
                  'model.clip_length': 2, 'model.num_frames': 1, 'model.frame_sampling': 'last'}
    result = train_reward_model(data, save_dir=str(tmp_path / 'ckpt'), **common, **model_keys,
                                **{'model.still_joint_speed': 'auto'})
    gate = result['joint_speed_gate']
    assert gate['moving_failure_passed'] == 0.0 and gate['success_kept'] == 1.0
    # the 5 moving failures (which look like successes) are neither trained nor validated on
    used = result['train_files'] + result['val_files']
    assert result['num_train'] + result['num_val'] == 15 and len(set(used)) == 15
    moving = {f"failure/{i:04d}.png" for i in range(0, 10, 2)}
    assert not any(os.path.relpath(f, data) in moving for f in used)
    for path in (result['best_path'], result['last_path']):
        meta = load_checkpoint(path)[1]
        assert meta['still_joint_speed'] == pytest.approx(gate['threshold']) and meta['still_joint_speed_keep'] == 1.0
    with open(os.path.join(data, 'frames.jsonl')) as f:  # data without states: the error names the key
        rows = [json.loads(line) for line in f]
    with open(os.path.join(data, 'frames.jsonl'), 'w') as f:
        f.writelines(json.dumps({k: v for k, v in r.items() if k != 'reward_state'}) + '\n' for r in rows)
    with pytest.raises(DataError, match="have no 'reward_state' in frames.jsonl"):
        train_reward_model(data, save_dir=str(tmp_path / 'again'), **common, **model_keys,
                           **{'model.still_joint_speed': 'auto'})
    with pytest.raises(ValueError, match="unknown model option 'model.still_joint_speed'"):  # single frames
        train_reward_model(data, save_dir=str(tmp_path / 'single'), **common,
                           **{'model.type': 'resnet', 'model.still_joint_speed': 'auto'})
