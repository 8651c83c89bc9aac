"""Stage 1: dense-reward PPO on PickCube while writing success/failure reward images.

    python dizoo_maniskill/config/pickcube_ppo_collect_config.py
writes ``pickcube_reward_data/success/0001.png ...`` and ``failure/...`` (plus ``metadata.json``);
a restart continues the numbering. The run stops when both targets are reached (or at max_train_iter).
"""
from dizoo_maniskill.config.pickcube_base import PPO, make_config

max_train_iter = 100000
main_config, create_config = make_config(
    'pickcube_ppo_collect_seed0',
    PPO,
    'ppo_reward_image',
    reward_data_collection=dict(
        # (bool) write reward images while training
        enabled=True,
        # (str) output folder: success/ and failure/ PNGs
        save_dir='pickcube_reward_data',
        # (int) images to keep per class
        target_success=5000,
        target_failure=5000,
        # (float) probability of keeping a success / failure frame; with episode_end images
        # (one frame per episode) failures are common and successes rare
        sample_rate_success=1.0,
        sample_rate_fail=0.1,
        # (bool) end the run once both targets are reached
        stop_when_done=True,
    ),
)
pickcube_ppo_collect_config, pickcube_ppo_collect_create_config = main_config, create_config

if __name__ == "__main__":
    from entry import serial_pipeline_reward_model_onpolicy
    serial_pipeline_reward_model_onpolicy((main_config, create_config), seed=0, max_train_iter=max_train_iter)
