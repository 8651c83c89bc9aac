"""Collect ~20 peg-insertion episodes on a real Franka (or the sim cell) for the classifier and as RLPD demos.

    python dizoo_franka/config/realworld_collect_data.py                    # real robot: the env below, SpaceMouse
    python -m dizoo_franka.collect_data --sim --out logs/sim_collect        # the sim cell, scripted policy
    python -m dizoo_franka.collect_data --robot-ip 172.16.0.2 --camera realsense:123456789012 --driver keyboard

``env`` is the ``franka`` env's config (``dizoo_franka.envs.FrankaEnv``: robot, camera, safety box, success);
``collect`` says how many episodes and who drives. See ``dizoo_franka.collect_data`` for what is recorded.
"""
from easydict import EasyDict

main_config = EasyDict(dict(
    exp_name='franka_collect_data',
    env=dict(
        # (str) Robot (FCI) address.
        robot_ip='172.16.0.2',
        # (str) 'enforce' on the robot PC's realtime kernel.
        realtime_config='enforce',
        # (dict) The camera that sees the insertion (see dizoo_franka.envs.cameras).
        camera=dict(type='realsense', serial=None),
        # (list) TCP pose [x, y, z, rx, ry, rz] with the peg inserted; measure it on your robot (Desk, or
        # robot.current_cartesian_state with the peg in the hole).
        target_ee_pose=[0.55, 0.08, 0.12, 3.141592653589793, 0.0, 0.0],
        # (list) Start pose above the hole, with a random offset per episode.
        reset_ee_pose=[0.55, 0.08, 0.22, 3.141592653589793, 0.0, 0.0],
        reset_random_xyz=[0.03, 0.03, 0.01],
        # (int) Consecutive steps at the target that make a success.
        success_hold_steps=20,
        # (list) Safety box of the TCP (m, base frame).
        ee_pose_limit_min=[0.45, -0.02, 0.10],
        ee_pose_limit_max=[0.65, 0.18, 0.30],
        max_episode_steps=120,
        use_gripper=True,
        image_size=[3, 128, 128],
    ),
    collect=dict(
        # (int) Episodes in the output folder when collection ends (a re-run resumes).
        num_data_episodes=20,
        # (str) 'spacemouse', 'keyboard' (real robot) or 'scripted' (sim: approach and insert with noise).
        driver='spacemouse',
        # (float) Std of the scripted driver's action noise.
        noise=0.15,
        # (float) Fraction of scripted episodes that hover beside the hole instead (near-miss negatives).
        miss_prob=0.3,
        # (int) Seed of the env's reset offsets and the scripted driver (+ the episode count on resume).
        seed=0,
    ),
))
create_config = EasyDict(dict(
    env=dict(type='franka', import_names=['dizoo_franka.envs.franka_env']),
    env_manager=dict(type='base'),
))

if __name__ == '__main__':
    from dizoo_franka.collect_data import main
    main()
