"""Real Franka arm (peg insertion) for the image reward: not implemented yet.

Planned: a ``franka`` DI-engine env on franky-control, a franky-sim robot cell for tests, episode
collection and processing into the ``success/`` + ``failure/`` folders ``ding_ext.train_reward_model``
reads. Shared code (reward model, trainer, image dataset writer) already lives in ``ding_ext``.
"""
