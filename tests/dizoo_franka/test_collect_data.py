"""Episode collection against the real sim cell: files per episode, labels, resume, a lost connection."""
import copy
import os

import numpy as np

from ding_ext.demo_episodes import episode_names, load_demo_transitions, read_episode
from dizoo_franka.collect_data import collect, record_episode
from dizoo_franka.config.realworld_collect_data import main_config
from dizoo_franka.drivers import FAILURE, SUCCESS, UNLABELLED, KeyboardTeleop, ScriptedInsertion
from dizoo_franka.envs import FrankaEnv
from dizoo_franka.envs.franky_arm import STATE_DIM


def sim_config(ready, **collect):
    cfg = copy.deepcopy(main_config)
    cfg.env.update(
        robot_ip=ready["robot_ip"], realtime_config="ignore", image_size=[3, 32, 32],
        camera=dict(type="sim", host="127.0.0.1", port=ready["camera_port"]), max_episode_steps=20,
        reset_ee_pose=[0.55, 0.08, 0.17, np.pi, 0.0, 0.0], reset_random_xyz=[0.005, 0.005, 0.0],
        success_hold_steps=3, reset_dynamics_factor=0.3,
    )
    cfg.collect.update(dict(driver="scripted", noise=0.05, miss_prob=0.0, num_data_episodes=2), **collect)
    return cfg


def test_collect_writes_one_file_per_episode_and_resumes(sim_cell, tmp_path):
    out = str(tmp_path / "collected")
    written = collect(sim_config(sim_cell), out, log=lambda *_: None)
    assert [os.path.basename(p) for p in written] == ["episode_0000.npz", "episode_0001.npz"]
    for path in written:
        episode = read_episode(path)
        steps = len(episode["action"])
        assert 0 < steps <= 20 and episode["image"].shape == (steps, 32, 32, 3)
        assert episode["obs"].shape == (steps, STATE_DIM) and np.array_equal(episode["image_step"], np.arange(steps))
        assert episode["reset_image"].shape == (32, 32, 3)  # the reset observation's frame (image observations)
        assert np.all(episode["human_label"] == UNLABELLED) and not episode["connection_lost"]
        np.testing.assert_array_equal(episode["obs"][1:], episode["next_obs"][:-1])
        # the scripted driver went down towards the hole (it starts 5 cm above the inserted pose)
        assert episode["tcp_pos"][-1][2] < episode["obs"][0][2] - 0.02
        # the pose label is the env's: success only after 3 steps at the target
        for t in np.flatnonzero(episode["success"]):
            assert t >= 2 and np.all(episode["at_target"][t - 2:t + 1])
        assert episode["done"][-1] and not np.any(episode["done"][:-1])
    mtimes = [os.path.getmtime(p) for p in written]
    # a second run resumes: only the missing third episode is recorded, the first two are left alone
    written = collect(sim_config(sim_cell, num_data_episodes=3), out, log=lambda *_: None)
    assert [os.path.basename(p) for p in written] == ["episode_0002.npz"]
    assert episode_names(out) == ["0000", "0001", "0002"]
    assert [os.path.getmtime(p) for p in (os.path.join(out, f"episode_000{i}.npz") for i in range(2))] == mtimes
    # the folder is an RLPD demo folder, for flat and for image observations
    transitions = load_demo_transitions(out, expected_metadata=dict(env="franka"))
    assert len(transitions) == sum(len(read_episode(os.path.join(out, f"episode_000{i}.npz"))["action"])
                                   for i in range(3))
    with_images = load_demo_transitions(out, obs_image=True)
    assert len(with_images) == len(transitions) and with_images[0]["obs"]["image"].shape == (3, 32, 32)
    # the image of each observation is the frame after the previous step (the reset frame first)
    assert np.array_equal(with_images[1]["obs"]["image"].numpy().transpose(1, 2, 0), transitions[0]["reward_image"])


def test_keyboard_labels_stick_until_changed():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        driver = KeyboardTeleop(stream=stream)
        driver.action_dim = 4
        os.write(write_fd, b"ffc")
        action = driver.act(np.zeros(STATE_DIM))
        np.testing.assert_allclose(action, [0.0, 0.0, -1.0, 0.0])  # two 'f' (down) clipped to one unit step
        assert driver.human_label() == SUCCESS
        driver.act(np.zeros(STATE_DIM))
        assert driver.human_label() == SUCCESS and not driver.end_requested()  # still on, no key in between
        os.write(write_fd, b"aq")
        driver.act(np.zeros(STATE_DIM))
        assert driver.human_label() == FAILURE and driver.end_requested()
    os.close(write_fd)


class KillCellAfter(ScriptedInsertion):
    """The scripted driver, and the cell dies after ``steps`` steps (a pulled network cable)."""

    def __init__(self, cell, steps, **kwargs):
        super().__init__(**kwargs)
        self.cell, self.steps, self.count = cell, steps, 0

    def act(self, state):
        self.count += 1
        if self.count == self.steps:
            self.cell.proc.kill()
            self.cell.proc.wait()
        return super().act(state)


def test_human_labels_recorded_and_lost_connection_keeps_the_episode(own_sim_cell, tmp_path):
    cfg = sim_config(own_sim_cell.ready)
    env = FrankaEnv(cfg.env)
    try:
        read_fd, write_fd = os.pipe()
        with os.fdopen(read_fd, "rb", buffering=0) as stream:
            keyboard = KeyboardTeleop(stream=stream)
            os.write(write_fd, b"rcq")  # up, success label, end of episode: one step
            episode = record_episode(env, keyboard)
        os.close(write_fd)
        assert len(episode["action"]) == 1 and episode["human_label"].tolist() == [SUCCESS]
        assert episode["done"][-1] and not episode["success"][-1]  # the human and the pose label can differ
        driver = KillCellAfter(own_sim_cell, 4, target_xyz=cfg.env.target_ee_pose[:3],
                               action_scale=env._cfg.action_scale)
        episode = record_episode(env, driver)
    finally:
        env.close()
    # the step after the loss ends the episode; what was collected before is in it
    assert episode["connection_lost"] and "lost the connection" in str(episode["error"])
    assert len(episode["action"]) == 4 and episode["done"][-1]
