"""Clips (ding_ext.video_frames) and the multi-frame ResNetVideoRewardModel: a second frame shows motion."""
import numpy as np
import pytest
import torch
from easydict import EasyDict

from ding_ext.video_frames import FrameHistory, frame_indices, sample_frames, split_filmstrip, to_filmstrip


def make_video_model(**overrides):
    import ding_ext  # noqa: F401  (registers 'resnet_video')
    from ding.reward_model import create_reward_model
    cfg = dict(type='resnet_video', image_size=[3, 32, 32], hidden_dim=16, clip_length=2, num_frames=2,
               augment_shift=0)
    cfg.update(overrides)
    return create_reward_model(EasyDict(cfg), 'cpu', None)


def test_frame_history_pads_with_the_oldest_frame_and_honours_the_stride():
    frames = [np.full((2, 3, 3), i, np.uint8) for i in range(6)]
    h = FrameHistory(clip_length=3, stride=2)
    with pytest.raises(RuntimeError, match="no frame"):
        h.clip()
    h.push(frames[0])
    assert h.clip().shape == (2, 9, 3)
    assert [int(v) for v in h.clip()[0, ::3, 0]] == [0, 0, 0]  # the start frame stands in for the missing ones
    for f in frames[1:]:
        h.push(f)
    assert [int(v) for v in h.clip()[0, ::3, 0]] == [1, 3, 5]  # oldest first, 2 steps apart, ending now
    assert len(h) == 5  # keeps only what a clip needs
    h.clear()
    h.push(frames[2])
    assert [int(v) for v in h.clip()[0, ::3, 0]] == [2, 2, 2]
    single = FrameHistory()
    single.push(frames[4])
    assert single.clip() is frames[4]


def test_sample_frames_strategies():
    clip = np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 3), np.uint8)
    assert sample_frames(clip, 'uniform', 3)[:, 0, 0, 0].tolist() == [0, 2, 4]
    assert sample_frames(clip, 'last', 2)[:, 0, 0, 0].tolist() == [3, 4]
    batch = torch.as_tensor(np.stack([clip, clip + 10]))
    out = sample_frames(batch, 'uniform', 2)
    assert out.shape == (2, 2, 2, 2, 3) and out[1, :, 0, 0, 0].tolist() == [10, 14]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = frame_indices(5, 3, 'random', g).tolist()
        assert idx == sorted(set(idx)) and idx[-1] == 4 and len(idx) == 3
    with pytest.raises(ValueError, match="k=6"):
        sample_frames(clip, 'uniform', 6)
    with pytest.raises(ValueError, match="strategy"):
        sample_frames(clip, 'middle', 2)
    with pytest.raises(ValueError, match="dims"):
        sample_frames(clip[0], 'last', 1)


def test_filmstrip_round_trip_and_width_error():
    frames = [np.random.default_rng(i).integers(0, 255, (4, 5, 3), np.uint8) for i in range(3)]
    strip = to_filmstrip(frames)
    x = torch.as_tensor(strip).permute(2, 0, 1)[None]
    back = split_filmstrip(x, 3)
    assert back.shape == (1, 3, 3, 4, 5)
    for t in range(3):
        assert torch.equal(back[0, t].permute(1, 2, 0), torch.as_tensor(frames[t]))
    with pytest.raises(ValueError, match="not a clip of 2 frames"):
        split_filmstrip(x, 2)
    with pytest.raises(ValueError, match="share one shape"):
        to_filmstrip([frames[0], frames[0][:, :4]])


def test_clip_layouts_agree_and_bad_config_is_named():
    for fusion in ('early', 'late', 'motion'):
        m = make_video_model(clip_length=3, num_frames=2, fusion=fusion)
        clips = np.random.default_rng(0).integers(0, 255, (4, 3, 32, 32, 3), np.uint8)
        strips = np.concatenate(list(clips.transpose(1, 0, 2, 3, 4)), axis=2)  # [B, H, 3W, C]
        assert m.preprocess_images(strips).shape == (4, 6, 32, 32)
        p = m.predict_proba(strips)
        assert torch.allclose(p, m.predict_proba(clips), atol=1e-6)
        assert torch.allclose(p, m.predict_proba(torch.as_tensor(clips).permute(0, 1, 4, 2, 3)), atol=1e-6)
        assert m.metadata()['fusion'] == fusion and m.metadata()['type'] == 'resnet_video'
    with pytest.raises(ValueError, match="num_frames"):
        make_video_model(clip_length=2, num_frames=3)
    with pytest.raises(ValueError, match="fusion"):
        make_video_model(fusion='middle')
    m = make_video_model(clip_length=3)
    with pytest.raises(ValueError, match="not a clip of 3 frames"):
        m.predict_proba(np.zeros((2, 32, 64, 3), np.uint8))
    assert 'pick the cube' in m.format_prompt('pick the cube.') and m.format_prompt('x').endswith('yes or no.')


def _motion_clips(n, seed, size=24, square=6, shift=4):
    """Clips of a bright square on a dark, noisy background whose last frame alone says nothing: label 1 = the
    square stood still, 0 = it moved ``shift`` px between the two frames."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    clips = rng.integers(0, 40, (n, size, 2 * size, 3), np.uint8)
    for i in range(n):
        y, x = rng.integers(shift, size - square - shift, 2)
        dy, dx = (0, 0) if labels[i] else rng.choice([-shift, shift], 2)
        clips[i, y + dy:y + dy + square, x + dx:x + dx + square] = 230  # the earlier frame
        clips[i, y:y + square, size + x:size + x + square] = 230  # the last frame
    return clips, labels


def test_a_second_frame_detects_motion_a_single_frame_cannot():
    """Early fusion: the first convolution compares the frames pixel by pixel. (Late fusion pools each frame's
    features over the image before they meet, so it keeps little of where things are.)"""
    torch.manual_seed(0)
    train_x, train_y = _motion_clips(256, seed=1)
    test_x, test_y = _motion_clips(128, seed=2)
    accuracy = {}
    for frames in (2, 1):
        m = make_video_model(num_frames=frames, frame_sampling='last', fusion='early', image_size=[3, 24, 24],
                             learning_rate=1e-3)
        rng = np.random.default_rng(0)
        for _ in range(100):
            idx = rng.integers(0, len(train_x), 32)
            m.train_step(train_x[idx], torch.as_tensor(train_y[idx], dtype=torch.float32))
        pred = (m.predict_proba(test_x) > 0.5).numpy()
        accuracy[frames] = float((pred == test_y).mean())
    assert accuracy[2] >= 0.9, accuracy
    assert accuracy[1] <= 0.7, accuracy  # the last frame alone carries no label information


def test_motion_fusion_sees_a_one_pixel_move_and_scores_a_still_clip_as_its_last_frame():
    """'motion' fusion: the first convolution sees the last frame and the frame differences. A still clip scores
    as the single-frame network with the same filters scores its last frame; a one-pixel move is learnt."""
    from ding_ext.networks import ResNetClassifier
    torch.manual_seed(0)
    net = ResNetClassifier(hidden_dim=None, frames=3, fusion='motion').eval()
    single = ResNetClassifier(hidden_dim=None, frames=1).eval()
    single.load_state_dict({k: v[:, :3] if k == 'backbone.conv1.weight' else v for k, v in net.state_dict().items()})
    frame = torch.randn(2, 3, 32, 32)
    still = torch.cat([frame] * 3, dim=1)
    moved = torch.cat([frame, frame, torch.roll(frame, 1, dims=-1)], dim=1)
    assert torch.allclose(net(still), single(frame), atol=1e-5)
    assert not torch.allclose(net(moved), single(torch.roll(frame, 1, dims=-1)), atol=1e-3)
    train_x, train_y = _motion_clips(256, seed=1, shift=1)
    test_x, test_y = _motion_clips(128, seed=2, shift=1)
    m = make_video_model(num_frames=2, frame_sampling='last', fusion='motion', image_size=[3, 24, 24],
                         learning_rate=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(100):
        idx = rng.integers(0, len(train_x), 32)
        m.train_step(train_x[idx], torch.as_tensor(train_y[idx], dtype=torch.float32))
    assert float(((m.predict_proba(test_x) > 0.5).numpy() == test_y).mean()) >= 0.9


def test_checkpoint_round_trip_through_the_evaluator(tmp_path):
    from ding_ext.evaluate_reward_model import build_model_from_checkpoint
    m = make_video_model(clip_length=3, num_frames=2, fusion='late')
    path = m.save(str(tmp_path / 'clip.safetensors'))
    rebuilt = build_model_from_checkpoint(path)
    assert type(rebuilt).__name__ == 'ResNetVideoRewardModel'
    assert (rebuilt.cfg.clip_length, rebuilt.cfg.num_frames, rebuilt.cfg.fusion) == (3, 2, 'late')
    clips = np.random.default_rng(3).integers(0, 255, (3, 32, 96, 3), np.uint8)
    assert torch.allclose(m.predict_proba(clips), rebuilt.predict_proba(clips), atol=1e-6)
    with pytest.raises(ValueError, match="fusion"):  # a clip model of another fusion refuses the checkpoint
        make_video_model(clip_length=3, num_frames=2, fusion='early', checkpoint_path=path, cooptrain_reward=False)
