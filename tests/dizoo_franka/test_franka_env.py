"""The ``franka`` env against the real franky-sim cell (libfranka protocol over loopback, MuJoCo physics).

Each test connects its own env to the module's cell and closes it. Poses are the robot's measured TCP pose
(``O_T_EE`` from the simulated joint state), in metres in the base frame.
"""
import time

import numpy as np
import pytest

from dizoo_franka.envs import FrankaEnv, SafetyBox, SimCamera, make_camera
from dizoo_franka.envs.cameras import OpenCVCamera, RealSenseCamera

HOLE_XYZ = np.array([0.55, 0.08, 0.12])  # TCP pose with the peg 3 cm deep in the cell's hole
DOWN = [np.pi, 0.0, 0.0]  # tool z axis pointing down (rotation vector)
# m: how far the TCP may stray outside the safety box. Every target is clipped into the box less the braking
# distance at the step dynamics (env.braking_margin, 9 mm here), so franky's commanded trajectory (O_T_EE_c) stays
# inside even when a step replaces a motion still running towards a face, and the measured TCP (O_T_EE) follows it.
# Worst observed with both cores busy (8 runs): commanded 5.6 mm, measured 12.8 mm inside the box (README).
BOX_TOLERANCE = 0.002


def make_env(sim_cell, **overrides) -> FrankaEnv:
    cfg = dict(
        robot_ip=sim_cell["robot_ip"],
        realtime_config="ignore",
        camera=dict(type="sim", host="127.0.0.1", port=sim_cell["camera_port"]),
        image_size=[3, 64, 64],
        reset_ee_pose=[0.55, 0.08, 0.22] + DOWN,
        target_ee_pose=list(HOLE_XYZ) + DOWN,
        reset_dynamics_factor=0.2,
    )
    cfg.update(overrides)
    return FrankaEnv(cfg)


@pytest.fixture
def env_factory(sim_cell):
    envs = []

    def factory(**overrides):
        envs.append(make_env(sim_cell, **overrides))
        return envs[-1]

    yield factory
    for env in envs:
        env.close()


def tcp_pos(env: FrankaEnv) -> np.ndarray:
    return np.asarray(env.robot.current_cartesian_state.pose.end_effector_pose.translation)


def sample_poses_until(env: FrankaEnv, deadline: float) -> list:
    """(measured, commanded) TCP positions every ~5 ms until ``deadline``, at least one pair."""
    samples = []
    while not samples or time.monotonic() < deadline:
        state = env.robot.state
        samples.append((np.asarray(state.O_T_EE.translation), np.asarray(state.O_T_EE_c.translation)))
        time.sleep(0.005)
    return samples


def wait_until_still(env: FrankaEnv, tol: float = 0.0005, timeout: float = 60.0) -> np.ndarray:
    """The TCP position once it moved less than ``tol`` metres in 0.3 s (the arm finished its last motion,
    however slowly the loaded sim runs)."""
    deadline = time.monotonic() + timeout
    last = tcp_pos(env)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = tcp_pos(env)
        if np.linalg.norm(now - last) < tol:
            return now
        last = now
    raise AssertionError(f"the arm did not come to rest in {timeout} s")


def test_registered_and_reset_step(env_factory):
    from ding.utils import ENV_REGISTRY
    assert ENV_REGISTRY.get("franka") is FrankaEnv
    env = env_factory()
    obs = env.reset()
    assert obs["state"].shape == (17, ) and obs["state"].dtype == np.float32
    np.testing.assert_allclose(obs["state"][13:16], 0.0, atol=1.0)  # no contact: no external force
    assert obs["image"].shape == (3, 64, 64) and obs["image"].dtype == np.uint8
    np.testing.assert_allclose(obs["state"][:3], [0.55, 0.08, 0.22], atol=0.003)
    z0 = obs["state"][2]
    for _ in range(3):
        timestep = env.step(np.array([0.0, 0.0, 1.0, 0.0], dtype=np.float32))
    info = timestep.info
    assert timestep.reward.shape == (1, ) and not timestep.done
    assert info["reward_image"].shape == (64, 64, 3) and info["reward_image"].dtype == np.uint8
    assert info["success"] is False and info["episode_len"] == 3
    np.testing.assert_allclose(info["action_sent"][:3], [0.0, 0.0, 1.0], atol=0.05)
    # three steps of at most 2 cm up, each from the measured pose (the sim runs slower than real time when the
    # machine is loaded, so each step covers less than its 2 cm in 0.1 s of wall time); the last target is reached
    target = info["target_pose"][:3]
    deadline = time.monotonic() + 60.0
    while np.abs(tcp_pos(env) - target).max() > 0.002 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0.015 < tcp_pos(env)[2] - z0 < 0.061


def test_safety_box_holds_under_adversarial_actions(env_factory):
    low, high = np.array([0.50, 0.03, 0.18]), np.array([0.60, 0.13, 0.27])
    env = env_factory(
        # every action aims up to 50 cm outside the box
        ee_pose_limit_min=low.tolist(), ee_pose_limit_max=high.tolist(), action_scale=0.5,
        reset_ee_pose=[0.55, 0.08, 0.22] + DOWN
    )
    env.reset()
    inner = env.command_box
    assert 0.005 < env.braking_margin < 0.02 and np.allclose(inner.low, low + env.braking_margin)
    rng = np.random.RandomState(0)
    samples, clipped = [], []

    def push(action, corner=None):
        info = env.step(action).info
        clipped.append(info["clipped"])
        assert "error" not in info, info["error"]
        assert inner.contains(info["target_pose"][:3], tolerance=1e-6)
        # franky is not called from a second thread (concurrent calls into one franky.Robot deadlocked)
        samples.extend(sample_poses_until(env, env._next_tick - 0.01))
        return corner is not None and np.abs(samples[-1][1] - corner).max() < 0.002

    # drive into the upper corner, then the lower one, until the commanded pose sits there (however slowly the
    # loaded sim runs), then 10 random full steps
    for action, corner in [(np.ones(4), inner.high), (-np.ones(4), inner.low)]:
        deadline = time.monotonic() + 60.0
        while not push(action, corner):
            assert time.monotonic() < deadline, f"the commanded pose never reached {corner}: {samples[-1][1]}"
    for _ in range(10):
        push(rng.choice([-1.0, 1.0], size=4))
    samples += sample_poses_until(env, time.monotonic() + 0.5)
    measured, commanded = (np.array(v) for v in zip(*samples))
    worst_measured = np.maximum(low - measured, measured - high).max()
    worst_commanded = np.maximum(low - commanded, commanded - high).max()
    print(f"{len(samples)} samples, worst excursion outside the box: measured {worst_measured * 1000:.1f} mm, "
          f"commanded {worst_commanded * 1000:.1f} mm")
    assert worst_commanded <= BOX_TOLERANCE, f"commanded TCP left the box by {worst_commanded:.4f} m"
    assert worst_measured <= BOX_TOLERANCE, f"measured TCP left the box by {worst_measured:.4f} m"
    assert any(clipped)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_action_rejected_nothing_sent(env_factory, bad):
    env = env_factory()
    env.reset()
    wait_until_still(env, tol=2e-5)  # let reset's motion settle
    before, commanded = tcp_pos(env), np.array(env.robot.state.O_T_EE_c.matrix)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array([0.5, bad, 0.0, 0.0]))
    time.sleep(0.3)
    # the robot's commanded pose (what the controller was last told) and its measured pose are unchanged
    np.testing.assert_allclose(np.array(env.robot.state.O_T_EE_c.matrix), commanded, atol=1e-9)
    np.testing.assert_allclose(tcp_pos(env), before, atol=1e-4)
    assert env.step(np.zeros(4)).info["episode_len"] == 1  # the rejected action was not counted as a step


def test_success_after_holding_at_target(env_factory):
    hold = 20
    env = env_factory(success_hold_steps=hold, max_episode_steps=80)
    env.reset()
    history = []
    for _ in range(80):
        pos = tcp_pos(env)
        action = np.append(np.clip((HOLE_XYZ - pos) / 0.02, -1.0, 1.0), 0.0)  # a proportional expert
        timestep = env.step(action)
        history.append((timestep.info["at_target"], timestep.info["success"], timestep.info["hold_steps"]))
        if timestep.done:
            break
    at_target, success, hold_steps = (np.array(v) for v in zip(*history))
    assert success[-1] and timestep.done and timestep.info["terminated"], history
    assert timestep.reward[0] == 1.0
    first = int(np.argmax(success))
    assert first == len(history) - 1 and np.all(at_target[first - hold + 1:first + 1])
    assert not np.any(success[hold_steps < hold])
    # the peg is in the hole: 3 cm below the board's top, which only the hole allows
    np.testing.assert_allclose(tcp_pos(env), HOLE_XYZ, atol=0.005)


def test_camera_frames_change_when_the_arm_moves(sim_cell, env_factory):
    env = env_factory()
    env.reset()
    with SimCamera("127.0.0.1", sim_cell["camera_port"]) as camera:
        first = camera.read()
        assert first.shape == (128, 128, 3) and first.dtype == np.uint8
        assert first.std() > 10  # a lit scene, not a blank frame
        for _ in range(4):
            env.step(np.array([0.0, 1.0, 1.0, 0.0]))
        time.sleep(0.5)
        moved = camera.read()
    assert np.abs(moved.astype(int) - first.astype(int)).mean() > 1.0


def test_two_envs_share_the_arm_and_an_interrupted_episode_ends(env_factory):
    """A collector's and an evaluator's env of one process (DI-engine's base env manager) share the connection (a
    second client would wait for ever); an episode whose arm the other env drove since its last step ends, truncated,
    without sending its action, and the next reset starts a clean one."""
    collector, evaluator = env_factory(), env_factory()
    collector.reset()
    assert not collector.step(np.array([0.0, 0.0, 1.0, 0.0])).done
    evaluator.reset()
    assert evaluator.robot is collector.robot and evaluator.camera is collector.camera
    assert not evaluator.step(np.array([0.0, 0.0, -1.0, 0.0])).done
    before = wait_until_still(collector)
    timestep = collector.step(np.array([0.0, 0.0, 1.0, 0.0]))
    assert timestep.done and timestep.info['truncated'] and 'another env' in timestep.info['error']
    assert not timestep.info['success'] and np.all(timestep.info['action_sent'] == 0)
    assert timestep.info['reward_image'].shape == (64, 64, 3)
    np.testing.assert_allclose(wait_until_still(collector), before, atol=0.002)  # nothing was sent
    collector.reset()
    evaluator.close()  # the other env keeps the connection
    assert not collector.step(np.array([0.0, 0.0, 1.0, 0.0])).done and collector.robot is not None


def test_camera_errors_are_clear():
    with pytest.raises(ValueError, match="camera type"):
        make_camera(dict(type="webcam"))
    with pytest.raises(RuntimeError, match="could not open"):
        OpenCVCamera("/nonexistent/video-device")
    try:
        import pyrealsense2  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pyrealsense2"):
            RealSenseCamera(serial="000000000000")


def test_collision_reflex_ends_the_episode_and_the_env_recovers(sim_cell, env_factory):
    # the peg hangs over the board 6 cm beside the hole; the box lets the arm push it into the board's top
    env = env_factory(reset_ee_pose=[0.55, 0.14, 0.19] + DOWN, ee_pose_limit_min=[0.45, 0.0, 0.10],
                      max_episode_steps=60)
    env.reset()
    for _ in range(60):
        timestep = env.step(np.array([0.0, 0.0, -1.0, 0.0]))
        if timestep.done:
            break
    info = timestep.info
    # the cell's collision reflex aborted the motion: libfranka's ControlException, as on the real robot
    assert timestep.done and info["truncated"] and not info["terminated"], info.get("error")
    assert "ControlException" in info["error"] and "reflex" in info["error"], info["error"]
    assert info["recovered"] is True and info["episode_len"] < 60
    assert not env.robot.has_errors
    log = open(sim_cell["log_path"]).read()
    assert "sim_cell: reflex" in log and "sim_cell: error recovery" in log
    # the peg stopped on the board's top (tip 5 cm below the TCP, board top at z = 0.10)
    assert tcp_pos(env)[2] > 0.14
    # the run goes on: the next episode resets and steps without error
    env.reset()
    np.testing.assert_allclose(tcp_pos(env), [0.55, 0.14, 0.19], atol=0.003)
    timestep = env.step(np.array([0.0, 0.0, 0.5, 0.0]))
    assert not timestep.done and "error" not in timestep.info


def test_external_force_shows_the_peg_pressing_on_the_board(tmp_path):
    from dizoo_franka.sim_cell_process import SimCellProcess
    with SimCellProcess(tmp_path / "cell", extra_args=["--reflex-force", "0"]) as cell:  # no reflex: it presses on
        # the peg hangs over the board beside the hole; the box lets the TCP go 2 cm below the peg's contact
        env = make_env(cell.ready, reset_ee_pose=[0.55, 0.14, 0.19] + DOWN, ee_pose_limit_min=[0.45, 0.0, 0.12])
        try:
            free = env.reset()["state"][13:16]
            for _ in range(40):
                state = env.step(np.array([0.0, 0.0, -1.0, 0.0])).obs["state"]
                if state[15] < -5.0:
                    break
        finally:
            env.close()
    # O_F_ext_hat_K: the force the robot exerts, down on the board; none in free space
    assert np.abs(free).max() < 1.0 and state[15] < -5.0 and abs(state[15]) > np.abs(state[13:15]).max(), state


def test_lost_connection_ends_the_episode_with_a_clear_message(own_sim_cell):
    env = make_env(own_sim_cell.ready)
    try:
        env.reset()
        for _ in range(3):
            last = env.step(np.array([0.0, 0.0, 0.5, 0.0]))
        own_sim_cell.proc.kill()  # the cell dies mid-episode, as a robot whose network cable is pulled
        own_sim_cell.proc.wait()
        timestep = env.step(np.array([0.0, 0.0, 0.5, 0.0]))
        info = timestep.info
        assert timestep.done and info["truncated"] and info["connection_lost"] is True
        assert "lost the connection to the robot" in info["error"], info["error"]
        # the episode's last observation and frame are what the env saw before the loss
        np.testing.assert_array_equal(timestep.obs["state"], last.obs["state"])
        assert info["reward_image"].shape == (64, 64, 3) and info["episode_len"] == 4
        with pytest.raises(ConnectionError, match="cannot connect to the robot"):
            env.reset()
    finally:
        env.close()


def test_learned_success_ends_the_episode(tmp_path, env_factory):
    from tests.ding_ext.helpers import force_probability, make_model
    model = make_model(image_size=[3, 64, 64])
    force_probability(model, 0.9)  # every frame: p(success) = 0.9
    checkpoint = model.save(str(tmp_path / "classifier.safetensors"))
    env = env_factory(terminate_on_learned_success=True, learned_success_checkpoint=checkpoint,
                      success_hold_steps=3, max_episode_steps=6)
    env.reset()
    steps = [env.step(np.zeros(4)) for _ in range(3)]
    assert [t.info["learned_hold_steps"] for t in steps] == [1, 2, 3]
    assert steps[-1].done and steps[-1].info["terminated"] and steps[-1].info["learned_success"]
    assert abs(steps[-1].info["learned_success_prob"] - 0.9) < 1e-4 and not steps[-1].info["success"]
    # above the classifier's output: never learned success, the episode runs to max_episode_steps
    env.close()  # the cell serves one client at a time
    env = env_factory(terminate_on_learned_success=True, learned_success_checkpoint=checkpoint,
                      learned_success_threshold=0.95, success_hold_steps=3, max_episode_steps=6)
    env.reset()
    steps = [env.step(np.zeros(4)) for _ in range(6)]
    assert [t.done for t in steps] == [False] * 5 + [True] and steps[-1].info["truncated"]
    assert not any(t.info["learned_success"] for t in steps)
    with pytest.raises(ValueError, match="learned_success_checkpoint"):
        make_env(dict(robot_ip="127.0.0.1", camera_port=0), terminate_on_learned_success=True)
