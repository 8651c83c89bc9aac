"""The still-scene gate of clip reward models (ding_ext.motion_gate): success only where the last two frames agree."""
import json
import os

import numpy as np
import pytest
import torch

from ding_ext.motion_gate import calibrate_motion_threshold, last_frame_motion, main, store_motion_threshold
from ding_ext.png_writer import write_png
from tests.ding_ext.helpers import force_probability
from tests.ding_ext.test_video_reward_model import make_video_model


def _clip(shift, size=32, seed=0):
    """A 2-frame filmstrip [H, 2W, 3]: one noisy background, a bright square that moved ``shift`` px into place."""
    background = np.random.default_rng(seed).integers(0, 30, (size, size, 3), np.uint8)
    earlier, last = background.copy(), background.copy()
    earlier[10:18, 8 + shift:16 + shift] = 220
    last[10:18, 8:16] = 220
    return np.concatenate([earlier, last], axis=1)


def test_motion_is_the_mean_absolute_difference_of_the_last_two_frames():
    still, moved = _clip(0), _clip(6)
    m = last_frame_motion(np.stack([still, moved]), clip_length=2)
    assert m.shape == (2,) and m[0] == 0.0 and m[1] > 0.02
    # uint8 [0, 255] and float [0, 1], NHWC and NCHW give the same numbers
    as_float = torch.as_tensor(np.stack([still, moved])).float().div(255).permute(0, 3, 1, 2)
    assert torch.allclose(last_frame_motion(as_float, 2), m, atol=1e-6)
    # in a 3-frame clip only the last two frames count: motion before them is history
    three = np.concatenate([np.full((32, 32, 3), 255, np.uint8), still], axis=1)
    assert last_frame_motion(three[None], clip_length=3)[0] == 0.0
    with pytest.raises(ValueError, match="clip_length must be >= 2"):
        last_frame_motion(still[None], clip_length=1)
    with pytest.raises(ValueError, match="not a clip of 3 frames"):
        last_frame_motion(still[None], clip_length=3)


def _write_clips(root, n=12):
    """success/: still clips; failure/: moving clips (half of them) and still ones, with an is_robot_static sidecar."""
    rows = []
    for label, name in ((1, 'success'), (0, 'failure')):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(n):
            shift = 0 if label or i % 2 else 2 + i % 5
            rel = f"{name}/{i:04d}.png"
            write_png(os.path.join(root, rel), _clip(shift, seed=i))
            phase = 'at_goal_static' if label else ('at_goal_moving' if shift else 'approach')
            rows.append(dict(file=rel, label=label, is_robot_static=shift == 0, episode_id=f"e{i}", phase=phase))
    with open(os.path.join(root, 'frames.jsonl'), 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in rows)


def test_calibrated_gate_zeroes_moving_clips_in_the_model_and_survives_the_checkpoint(tmp_path, capsys):
    data = str(tmp_path / 'clips')
    _write_clips(data)
    calib = calibrate_motion_threshold(data, clip_length=2, keep=1.0)
    assert calib['threshold'] == 0.0 and calib['success_kept'] == 1.0  # every success clip here is perfectly still
    assert calib['moving_failure_clips'] == 6 and calib['moving_failure_passed'] == 0.0
    assert calib['failure_passed'] == 0.5  # the still failures pass the gate: the classifier judges those
    assert calib['failure_passed_by_phase'] == {'approach': 1.0, 'at_goal_moving': 0.0}  # from the sidecar's phases
    with pytest.raises(ValueError, match="keep"):
        calibrate_motion_threshold(data, 2, keep=0.0)

    model = make_video_model(clip_length=2, num_frames=1, frame_sampling='last')
    force_probability(model, 0.9)
    path = model.save(str(tmp_path / 'clip.safetensors'))
    with pytest.raises(ValueError, match="still_motion_threshold='auto' needs a checkpoint"):
        make_video_model(clip_length=2, num_frames=1, frame_sampling='last', checkpoint_path=path,
                         cooptrain_reward=False, still_motion_threshold='auto')
    assert main(['--data', data, '--checkpoint', path, '--keep', '1.0', '--store']) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{\n  \"threshold\""):])['stored']['still_motion_threshold'] == 0.0

    clips = np.stack([_clip(0, seed=50), _clip(5, seed=51)])
    gated = make_video_model(clip_length=2, num_frames=1, frame_sampling='last', checkpoint_path=path,
                             cooptrain_reward=False, still_motion_threshold='auto')
    assert gated.motion_threshold == 0.0
    assert torch.allclose(gated.predict_proba(clips), torch.tensor([0.9, 0.0]), atol=1e-5)
    assert gated.compute_reward({'images': clips}).tolist() == [1.0, 0.0]
    # the evaluator rebuilds the gate from the checkpoint, and a saved copy keeps it
    from ding_ext.evaluate_reward_model import build_model_from_checkpoint
    rebuilt = build_model_from_checkpoint(path)
    assert rebuilt.cfg.still_motion_threshold == 'auto' and rebuilt.predict_proba(clips)[1] == 0.0
    copy = gated.save(str(tmp_path / 'copy.safetensors'))
    assert build_model_from_checkpoint(copy).motion_threshold == 0.0
    # ungated, the same weights call the moving clip a success
    plain = build_model_from_checkpoint(str(tmp_path / 'clip.safetensors'))
    plain.cfg.still_motion_threshold = None
    assert plain.predict_proba(clips)[1] > 0.8


def test_bad_gate_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="still_motion_threshold must be None, 'auto' or a number"):
        make_video_model(still_motion_threshold=-1)
    with pytest.raises(ValueError, match="needs clip_length >= 2"):
        make_video_model(clip_length=1, num_frames=1, still_motion_threshold=0.01)
    with pytest.raises(SystemExit):
        main(['--data', str(tmp_path)])  # no clip length and no checkpoint


def test_a_sweep_of_keep_values_prints_what_each_lets_through(tmp_path, capsys):
    data = str(tmp_path / 'clips')
    _write_clips(data)
    assert main(['--data', data, '--clip-length', '2', '--keep', '0.5', '1.0']) == 0
    printed = capsys.readouterr().out
    sweep = json.loads(printed[printed.index('[\n'):])
    assert [c['keep'] for c in sweep] == [0.5, 1.0] and all('stored' not in c for c in sweep)
    assert all(c['failure_passed_by_phase']['at_goal_moving'] == 0.0 for c in sweep)
    ckpt = tmp_path / 'x.safetensors'
    ckpt.write_bytes(b'')
    with pytest.raises(SystemExit):  # storing needs one value
        main(['--data', data, '--clip-length', '2', '--checkpoint', str(ckpt), '--keep', '0.5', '1.0', '--store'])
    assert 'one --keep value' in capsys.readouterr().err


def test_pretraining_with_an_auto_gate_calibrates_it_on_the_pretrain_data(tmp_path):
    """A config with still_motion_threshold='auto' and pretrain_reward (no checkpoint yet): the gate comes from the
    pretraining data's success clips and is stored with the weights the next run loads."""
    data = str(tmp_path / 'clips')
    _write_clips(data, n=8)
    ckpt = str(tmp_path / 'reward' / 'model.safetensors')
    cfg = dict(clip_length=2, num_frames=1, frame_sampling='last', still_motion_threshold='auto', still_motion_keep=1.0,
               pretrain_reward=True, pretrain_data_dir=data, cooptrain_reward=False, checkpoint_path=ckpt,
               exp_name=str(tmp_path / 'exp'), pretrain=dict(epochs=1, batch_size=8, val_split=0.25, progress=False))
    model = make_video_model(**cfg)
    assert model.motion_threshold == 0.0 and model.pretrain_result['motion_gate']['success_kept'] == 1.0
    assert os.path.isfile(ckpt)
    again = make_video_model(**dict(cfg, pretrain_reward=False))  # loads the saved copy, gate included
    assert again.motion_threshold == 0.0 and again.pretrain_result is None
    with pytest.raises(ValueError, match="still_motion_keep"):
        make_video_model(still_motion_keep=1.5)


def test_the_trainer_calibrates_an_auto_gate_and_stores_it_in_both_checkpoints(tmp_path):
    from ding_ext.checkpoint_io import load_checkpoint
    from ding_ext.train_reward_model import train_reward_model
    data = str(tmp_path / 'clips')
    _write_clips(data, n=8)
    common = dict(epochs=1, batch_size=8, val_split=0.25, progress=False, num_workers=0)
    result = train_reward_model(data, save_dir=str(tmp_path / 'ckpt'), **common,
                                **{'model.type': 'resnet_video', 'model.arch': 'resnet18', 'model.image_size': [3, 32, 32],
                                   'model.clip_length': 2, 'model.num_frames': 1, 'model.frame_sampling': 'last',
                                   'model.still_motion_threshold': 'auto', 'model.still_motion_keep': 1.0})
    assert result['motion_gate']['threshold'] == 0.0 and result['motion_gate']['moving_failure_passed'] == 0.0
    for path in (result['best_path'], result['last_path']):
        meta = load_checkpoint(path)[1]
        assert meta['still_motion_threshold'] == 0.0 and meta['still_motion_keep'] == 1.0
    # the trained model scored the validation split through the gate: no moving clip was called a success
    assert result['metadata']['still_motion_threshold'] == 0.0
    with pytest.raises(ValueError, match="unknown model option 'model.still_motion_threshold'"):  # single frames
        train_reward_model(data, save_dir=str(tmp_path / 'single'), **common,
                           **{'model.type': 'resnet', 'model.still_motion_threshold': 'auto'})
