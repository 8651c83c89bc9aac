"""Runnable configs of the Franka peg insertion (``main_config`` / ``create_config`` pairs)."""
