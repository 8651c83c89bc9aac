"""Stage 4: resume stage 3's PPO policy and continue with the ResNet classifier as the reward.

    python dizoo_maniskill/config/pickcube_ppo_resnet_reward_config.py
needs ``pickcube_ppo_seed0/ckpt`` (stage 3) and ``pickcube_reward_model/best_model.safetensors``
(stage 2). Terminal mode: the final frame's success decision replaces the env reward; a frozen model.
"""
from dizoo_maniskill.config.pickcube_base import PPO, RESNET_REWARD, make_config

max_train_iter = 100
main_config, create_config = make_config(
    'pickcube_ppo_resnet_reward_seed0', dict(PPO, resume_dir='pickcube_ppo_seed0'), 'ppo_reward_image',
    reward_model=RESNET_REWARD
)
pickcube_ppo_resnet_reward_config, pickcube_ppo_resnet_reward_create_config = main_config, create_config

if __name__ == "__main__":
    from entry import serial_pipeline_reward_model_onpolicy
    rm = main_config.reward_model
    serial_pipeline_reward_model_onpolicy(
        (main_config, create_config), seed=0, max_train_iter=max_train_iter, cooptrain_reward=rm.cooptrain_reward,
        pretrain_reward=rm.pretrain_reward
    )
