"""Franka arm (peg insertion) for the image reward.

- ``dizoo_franka.envs``: the ``franka`` DI-engine env over franky-control, its cameras and safety box;
- ``dizoo_franka.sim_cell``: a franky-sim (MuJoCo) robot cell speaking the libfranka protocol, with a camera,
  run from its own venv (``.robot-sim-venv``, see ``scripts/setup_robot_sim.sh``).

This package module imports nothing, so ``python -m dizoo_franka.sim_cell`` runs without DI-engine or torch.
Planned next: episode collection and processing into the ``success/`` + ``failure/`` folders that
``ding_ext.train_reward_model`` reads, and runnable configs.
"""
