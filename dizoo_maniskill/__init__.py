"""ManiSkill3 tasks for the image reward (PickCube recipe: collect, train, reward RL).

Importing any ``dizoo_maniskill`` module also imports ``ding_ext``, which registers the ``resnet``
reward model and the ``*_reward_image`` policies: DI-engine keeps the env's ``import_names`` in a
saved ``formatted_total_config.py`` but not the policy's or the reward model's, so a re-run of a
saved config still finds them.
"""
import ding_ext  # noqa: F401
