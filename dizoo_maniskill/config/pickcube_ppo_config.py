"""Stage 3: PPO on PickCube's dense env reward, to a checkpoint that stage 4 resumes from.

    python dizoo_maniskill/config/pickcube_ppo_config.py
writes ``pickcube_ppo_seed0/ckpt/iteration_<N>.pth.tar`` after ``max_train_iter`` iterations.
"""
from dizoo_maniskill.config.pickcube_base import PPO, make_config

max_train_iter = 100
main_config, create_config = make_config('pickcube_ppo_seed0', PPO, 'ppo_reward_image')
pickcube_ppo_config, pickcube_ppo_create_config = main_config, create_config

if __name__ == "__main__":
    from entry import serial_pipeline_reward_model_onpolicy
    serial_pipeline_reward_model_onpolicy((main_config, create_config), seed=0, max_train_iter=max_train_iter)
