"""Off-policy variant: SAC on PickCube with the ResNet classifier as the reward.

    python dizoo_maniskill/config/pickcube_sac_resnet_reward_config.py
    ding -m serial_reward_model -c dizoo_maniskill/config/pickcube_sac_resnet_reward_config.py -s 0
(DI-engine's stock CLI: it cannot pass cooptrain/pretrain flags, so they are read from
``reward_model.cooptrain_reward`` / ``pretrain_reward``.)

The classifier is co-trained on env success labels during RL, starting from the stage-2
checkpoint when ``checkpoint_path`` exists (from random weights otherwise: then its rewards mean
little until both classes have been seen). For a frozen classifier set ``cooptrain_reward=False``.
"""
from dizoo_maniskill.config.pickcube_base import RESNET_REWARD, SAC, make_config

max_train_iter = 2000
main_config, create_config = make_config(
    'pickcube_sac_resnet_reward_seed0', SAC, 'sac_reward_image',
    # co-trained weights drift away from the threshold calibrated for the stage-2 weights: a fixed threshold
    reward_model=dict(RESNET_REWARD, cooptrain_reward=True, reward_threshold=0.5)
)
pickcube_sac_resnet_reward_config, pickcube_sac_resnet_reward_create_config = main_config, create_config

if __name__ == "__main__":
    from entry import serial_pipeline_reward_model_offpolicy
    rm = main_config.reward_model
    serial_pipeline_reward_model_offpolicy(
        (main_config, create_config), seed=0, max_train_iter=max_train_iter, cooptrain_reward=rm.cooptrain_reward,
        pretrain_reward=rm.pretrain_reward
    )
