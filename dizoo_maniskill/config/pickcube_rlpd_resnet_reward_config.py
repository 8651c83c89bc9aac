"""RLPD on PickCube with the ResNet success classifier as the only, per-step reward.

The reward sees the env's last 2 frames: the classifier judges the last one, and the still-scene gate (a threshold on
the frames' difference, ``ding_ext.motion_gate``) withholds success while the robot still moves, as PickCube's
success requires.

Off-policy SAC in the RLPD style (``ding_ext.rlpd_policy``: LayerNorm critic ensemble, update-to-data ratio)
with a demo buffer of scripted-expert episodes (half of every batch); our entry first clones the actor on them
(``bc_pretrain_iterations``; DI-engine's entry skips that step). The env runs every episode for
``max_episode_steps`` (no termination on success): the policy must reach the goal and stay, and the
per-step classifier reward is the only signal of success it gets. Needs:

    python -m dizoo_maniskill.record_demos --demo-dir pickcube_demos --workers 2 --source scripted  # the demos
    # a classifier for this env's reward camera at reward_model.checkpoint_path, e.g. as `make demo` trains it
    python dizoo_maniskill/config/pickcube_rlpd_resnet_reward_config.py
    ding -m serial_reward_model -c dizoo_maniskill/config/pickcube_rlpd_resnet_reward_config.py -s 0
    ding-reward -c dizoo_maniskill/config/pickcube_rlpd_resnet_reward_config.py --env-step 30000

Without the ``reward_model`` block the same config learns from the env's sparse success reward (the oracle
that ``bench/pickcube_learned_reward.py`` compares against).
"""
from dizoo_maniskill.config.pickcube_base import RESNET_REWARD, RLPD, RLPD_ENV, make_config
from entry.experiment_config import demo_env_metadata

max_env_step = 30000
main_config, create_config = make_config(
    'pickcube_rlpd_resnet_reward_seed0', RLPD, 'rlpd_reward_image', env=RLPD_ENV,
    reward_model=dict(
        RESNET_REWARD,
        # the env's 2-frame clips: the classifier looks at the last frame; a clip whose two frames differ by more than
        # the still-scene threshold stored in the checkpoint (ding_ext.motion_gate) scores 0
        type='resnet_video', clip_length=2, num_frames=1, frame_sampling='last', still_motion_threshold='auto',
        # every frame is scored: reward 1 while the classifier sees success (the env's sparse reward, learned)
        reward_mode='per_step',
        checkpoint_path='pickcube_rlpd_reward_model/best_model.safetensors',
        pretrain_data_dir='pickcube_rlpd_reward_data',
    ),
)
# checked against the demo folder's metadata.json by DI-engine's entry too (ours fills it from env at start)
main_config.policy.other.replay_buffer.demo_env_metadata = demo_env_metadata(main_config.env)
pickcube_rlpd_resnet_reward_config, pickcube_rlpd_resnet_reward_create_config = main_config, create_config

if __name__ == "__main__":
    from entry import serial_pipeline_reward_model_offpolicy
    rm = main_config.reward_model
    serial_pipeline_reward_model_offpolicy(
        (main_config, create_config), seed=0, max_env_step=max_env_step, cooptrain_reward=rm.cooptrain_reward,
        pretrain_reward=rm.pretrain_reward
    )
