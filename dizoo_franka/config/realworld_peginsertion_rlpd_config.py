"""RLPD peg insertion on a Franka (or the franky-sim cell) with the learned image success reward, per step.

The policy (``rlpd_reward_image``, ``ding_ext.rlpd_policy``) sees the camera image (64x64, the env's
``obs_image_size``) through a small conv encoder plus the 14-float TCP state; half of every batch comes from the
collected episodes (``demo_path``, recorded by ``dizoo_franka.collect_data``, with their reset frames, which the
image observations need); its only reward is the ResNet success classifier's decision on every frame
(``reward_mode='per_step'``, ``combine_mode='replace'``), frozen, from ``checkpoint_path``. Our entry first clones
the actor on the demos (``bc_pretrain_iterations``; DI-engine's entry skips that step). The env settings (robot,
safety box, target, camera, image size) are those of ``realworld_collect_data.py``: the demos and the classifier
are checked against them.

Before: collect, process, train (``README.md``, "Franka: collect, label, process, train")::

    python -m dizoo_franka.collect_data --sim --out logs/sim_collect      # or on the robot, see collect_data
    python -m dizoo_franka.process_realworld_data logs/sim_collect
    python -m ding_ext.train_reward_model --data logs/sim_collect/collected_data store_threshold=true \\
        target_precision=0.9 model.image_size=[3,64,64]                   # -> logs/sim_collect/reward_model_ckpt/

**Sim cell** (this file starts the cell, points the env at it and stops it after)::

    python dizoo_franka/config/realworld_peginsertion_rlpd_config.py --sim [--env-step 2000]

**Real robot:** set ``env.robot_ip`` below (or ``--robot-ip``, or ``FRANKA_ROBOT_IP``), keep
``realtime_config='enforce'`` on the robot PC's realtime kernel, and the RealSense camera of the collection::

    python dizoo_franka/config/realworld_peginsertion_rlpd_config.py --robot-ip 172.16.0.2

**DI-engine's CLI** cannot start the cell: start it in another terminal, export what it prints, then run ``ding``
(``FRANKA_ROBOT_IP`` / ``FRANKA_CAMERA_PORT`` are read when this file is imported)::

    python -m dizoo_franka.sim_cell_process          # prints: export FRANKA_ROBOT_IP=... FRANKA_CAMERA_PORT=...
    export FRANKA_ROBOT_IP=127.0.0.1 FRANKA_CAMERA_PORT=40123
    ding -m serial_reward_model -c dizoo_franka/config/realworld_peginsertion_rlpd_config.py -s 0 --env-step 2000
    ding-reward -c dizoo_franka/config/realworld_peginsertion_rlpd_config.py --env-step 2000   # our entry

The whole path in the sim, small, with timings and fidelity numbers: ``python -m dizoo_franka.sim_walkthrough``.
"""
import copy

from easydict import EasyDict

from ding_ext.rlpd_policy import RLPD_DEMO_LEARN
from dizoo_franka.collect_data import demo_check_metadata
from dizoo_franka.config.realworld_collect_data import main_config as collect_config
from dizoo_franka.envs.franka_env import STATE_DIM
from dizoo_franka.sim_cell_process import env_overrides_from_environ

# the policy's image: smaller than the reward image (128 px) to keep the replay buffer small (2 x 12 kB per
# transition at 64 px, uint8); the env resizes its observation, the demo loader the recorded frames, alike
POLICY_IMAGE = [3, 64, 64]
ACTION_SHAPE = 4  # [dx, dy, dz, gripper]

env = dict(
    copy.deepcopy(collect_config.env),  # robot, camera, safety box, target, image_size: as collected
    obs_mode='state_image',
    obs_image_size=POLICY_IMAGE,
    # (bool) the episode ends at the pose-based success, as in the collection (the learned reward is the only
    # reward; on a robot this saves the time of holding at the target)
    terminate_on_success=True,
    collector_env_num=1,
    evaluator_env_num=1,
    n_evaluator_episode=5,
    stop_value=int(1e9),  # runs end at max_env_step
    # a reset that a collision reflex aborts (the peg still pressed on the board when the episode ended) is tried
    # again: the env's reset recovers the robot's errors first
    manager=dict(max_retry=3, retry_waiting_time=2.0),
    **env_overrides_from_environ(),  # FRANKA_ROBOT_IP / FRANKA_CAMERA_PORT, see the docstring
)

main_config = EasyDict(dict(
    exp_name='franka_peginsertion_rlpd_seed0',
    env=env,
    policy=dict(
        cuda=False,  # True on a robot PC with a GPU (the conv encoder dominates an update's cost)
        random_collect_size=0,  # the first iteration's 64 steps fill the online half of a batch
        model=dict(
            obs_shape=STATE_DIM, action_shape=ACTION_SHAPE, image_shape=POLICY_IMAGE,
            # (dict) ding_ext.image_encoder.ImageStateEncoder: 4 conv layers (32 channels), a 64-d LayerNorm'd
            # projection; DrQ's random shift of up to 4 pixels while learning
            encoder=dict(channels=32, strides=[2, 2, 2, 1], feature_dim=64, random_shift=4),
            num_critics=2, hidden_size=256, num_layers=2, critic_layer_norm=True,
        ),
        learn=dict(
            # the PickCube recipe's learner (see README): clone the demos, keep the actor near them, little noise
            RLPD_DEMO_LEARN,
            batch_size=128, discount_factor=0.95,
            # gradient updates per env step (our entry); DI-engine's entry uses update_per_collect (= utd x n_sample)
            utd_ratio=1.0,
            update_per_collect=64,
            bc_pretrain_iterations=1000,
            learner=dict(hook=dict(save_ckpt_after_iter=1000, save_ckpt_after_run=True)),
        ),
        collect=dict(n_sample=64),
        eval=dict(evaluator=dict(eval_freq=1000)),
        other=dict(replay_buffer=dict(
            replay_buffer_size=50000,
            # (str) the collected episodes (dizoo_franka.collect_data --out)
            demo_path='logs/sim_collect',
            demo_sample_ratio=0.5,
            # (bool) the successful episodes only: the collection's near misses (miss_prob) teach the classifier, not
            # the actor (bc_weight clones every demo)
            demo_success_only=True,
            # image observations from the recorded frames, resized as the env resizes its own
            demo_obs_image=True,
            demo_obs_image_size=POLICY_IMAGE,
            # checked against the folder's metadata.json (our entry adds the generic env fields)
            demo_env_metadata=demo_check_metadata(env),
        )),
    ),
    reward_model=dict(
        type='resnet',
        import_names=['ding_ext'],
        arch='resnet18',
        hidden_dim=256,
        # (list) the classifier's input size: as trained (model.image_size of ding_ext.train_reward_model)
        image_size=[3, 64, 64],
        # every frame scored; the classifier's 0/1 decision is the reward
        reward_mode='per_step',
        combine_mode='replace',
        success_reward=1.0,
        fail_reward=0.0,
        # the threshold the trainer stored (store_threshold=true); a number to use another
        reward_threshold='auto',
        checkpoint_path='logs/sim_collect/reward_model_ckpt/best_model.safetensors',
        cooptrain_reward=False,
        pretrain_reward=False,
    ),
))
create_config = EasyDict(dict(
    env=dict(type='franka', import_names=['dizoo_franka.envs.franka_env']),
    env_manager=dict(type='base'),
    policy=dict(type='rlpd_reward_image', import_names=['ding_ext.rlpd_policy']),
    replay_buffer=dict(type='demo_mix', import_names=['ding_ext.demo_replay_buffer']),
    reward_model=dict(type='resnet', import_names=['ding_ext']),
))
realworld_peginsertion_rlpd_config, realworld_peginsertion_rlpd_create_config = main_config, create_config


def run(main_cfg: EasyDict, create_cfg: EasyDict, seed: int = 0, max_env_step: int = 2000, sim_dir: str = None):
    """Our entry with a frozen classifier; ``sim_dir``: start a sim cell there and train in it."""
    import contextlib

    from dizoo_franka.sim_cell_process import SimCellProcess, sim_env_overrides
    from entry import serial_pipeline_reward_model_offpolicy
    main_cfg = copy.deepcopy(main_cfg)
    with (SimCellProcess(sim_dir) if sim_dir else contextlib.nullcontext()) as cell:
        if cell is not None:
            main_cfg.env.update(sim_env_overrides(cell.ready))
        return serial_pipeline_reward_model_offpolicy((main_cfg, create_cfg), seed=seed, max_env_step=max_env_step,
                                                      cooptrain_reward=False, pretrain_reward=False)


if __name__ == "__main__":
    import argparse
    import os
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sim', action='store_true', help='start the sim cell and train there')
    parser.add_argument('--robot-ip', default=None, help='the robot (FCI) address (real robot)')
    parser.add_argument('--env-step', type=int, default=2000, help='env steps of this run')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    if args.robot_ip:
        main_config.env.robot_ip = args.robot_ip
    run(main_config, create_config, args.seed, args.env_step,
        sim_dir=os.path.join(main_config.exp_name, 'sim_cell') if args.sim else None)
