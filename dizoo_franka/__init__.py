"""Franka arm (peg insertion) for the image reward.

- ``dizoo_franka.envs``: the ``franka`` DI-engine env over franky-control, its cameras and safety box;
- ``dizoo_franka.sim_cell``: a franky-sim (MuJoCo) robot cell speaking the libfranka protocol, with a camera and
  a collision reflex (``sim_cell_reflex``), run from its own venv (``.robot-sim-venv``, see
  ``scripts/setup_robot_sim.sh``); ``sim_cell_process`` starts it from the main venv;
- ``dizoo_franka.collect_data`` (drivers in ``drivers``) records episodes; ``process_realworld_data`` turns them
  into the classifier's dataset; ``config/`` holds the runnable configs.

This package module imports nothing, so ``python -m dizoo_franka.sim_cell`` runs without DI-engine or torch.
"""
