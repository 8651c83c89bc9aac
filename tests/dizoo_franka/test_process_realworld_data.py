"""process_realworld_data on episode files in the collector's format (no robot needed), and the trainer's
fail_success_ratio."""
import json
import os

import numpy as np
import pytest

from ding_ext.demo_episodes import write_episode, write_metadata
from ding_ext.image_folder_dataset import SIDECAR_FILE
from ding_ext.train_reward_model import cap_failures
from dizoo_franka.process_realworld_data import main, process, select_frames


def fake_episode(n=10, success_from=7, idle=(3, 4), human=None):
    """n frames; TCP moves 1 cm per step except at the ``idle`` steps; pose success from ``success_from``."""
    pos = np.zeros((n, 3))
    for t in range(1, n):
        pos[t] = pos[t - 1] + (0.0 if t in idle else 0.01)
    success = np.arange(n) >= success_from
    image = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    image[:, 0, 0, 0] = np.arange(n)  # each frame tells its step
    return dict(obs=np.zeros((n, 14), np.float32), next_obs=np.zeros((n, 14), np.float32),
                action=np.zeros((n, 4), np.float32), reward=success.astype(np.float32),
                done=np.arange(n) == n - 1, success=success, at_target=success, tcp_pos=pos,
                human_label=np.asarray(human if human is not None else [-1] * n, dtype=np.int8), image=image,
                image_step=np.arange(n))


def test_select_frames_options():
    episode = fake_episode(human=[0, 0, -1, 0, 0, 1, 1, 1, 1, 0])
    assert [t for t, _ in select_frames(episode)] == list(range(10))
    assert [t for t, _ in select_frames(episode, drop_idle=True)] == [0, 1, 2, 5, 6, 7, 8, 9]
    # evenly spaced, the last frame kept
    assert [t for t, _ in select_frames(episode, num_samples=4)] == [0, 3, 6, 9]
    human = select_frames(episode, label="human")
    assert 2 not in [t for t, _ in human] and dict(human)[5] is True and dict(human)[9] is False
    # both: the human label exists and agrees with the pose label (frames 5, 6 disagree, 2 is unlabelled)
    assert [t for t, _ in select_frames(episode, label="both")] == [0, 1, 3, 4, 7, 8]
    with pytest.raises(ValueError, match="label must be one of"):
        select_frames(episode, label="oracle")


def test_process_writes_the_dataset_with_episode_ids(tmp_path):
    folder = str(tmp_path / "logs")
    write_metadata(folder, dict(env="franka", image_size=[3, 8, 8]))
    for i in range(2):
        write_episode(folder, f"{i:04d}", fake_episode())
    result = process(folder, drop_idle=True, num_samples_per_episode=0, log=lambda *_: None)
    assert result["out_dir"] == os.path.join(folder, "collected_data")
    assert result["counts"] == dict(success=6, failure=10)  # 8 non-idle frames per episode, 3 of them success
    rows = [json.loads(line) for line in open(os.path.join(result["out_dir"], SIDECAR_FILE))]
    assert {r["episode_id"] for r in rows} == {"franka-0000", "franka-0001"}
    assert all(r["label"] == int(r["pose_label"]) for r in rows)
    assert sorted(r["step"] for r in rows if r["episode_id"] == "franka-0000") == [1, 2, 3, 6, 7, 8, 9, 10]
    assert len(os.listdir(os.path.join(result["out_dir"], "success"))) == 6
    # a second run does not append to the dataset unless asked to replace it
    with pytest.raises(FileExistsError, match="--overwrite"):
        process(folder, log=lambda *_: None)
    assert main([folder, "--overwrite", "--num-samples-per-episode", "3"]) == 0
    rows = [json.loads(line) for line in open(os.path.join(result["out_dir"], SIDECAR_FILE))]
    assert len(rows) == 6 and {r["step"] for r in rows} == {1, 5, 10}


def test_process_skips_the_reset_frame_and_records_the_target_distance(tmp_path):
    folder = str(tmp_path / "logs")
    write_metadata(folder, dict(env="franka", image_size=[3, 8, 8], target_ee_pose=[0.0, 0.0, 0.0, 3.14, 0.0, 0.0]))
    write_episode(folder, "0000", dict(fake_episode(), reset_image=np.full((8, 8, 3), 255, np.uint8)))
    result = process(folder, log=lambda *_: None)
    assert result["counts"] == dict(success=3, failure=7)  # the frames after the 10 steps; no reset frame
    rows = [json.loads(line) for line in open(os.path.join(result["out_dir"], SIDECAR_FILE))]
    # the TCP moves 1 cm per step along every axis (fake_episode) from the origin, where the target is
    by_step = {r["step"]: r["target_dist"] for r in rows}
    assert by_step[1] == 0.0 and by_step[2] == pytest.approx(0.01 * np.sqrt(3), abs=1e-5)


def test_process_errors_are_clear(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path)])  # no episodes: a message, exit status 1
    with pytest.raises(FileNotFoundError, match="no episode_"):
        process(str(tmp_path))


def test_cap_failures_applies_the_ratio():
    labels = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    kept = cap_failures(list(range(10)), labels, 3.0, seed=0)
    assert kept[:2] == [0, 1] and len(kept) == 2 + 6 and kept == sorted(kept)
    assert cap_failures(list(range(10)), labels, 5.0, seed=0) == list(range(10))
