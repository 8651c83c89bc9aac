"""Serial pipelines with an image reward model, and the ``ding-reward`` CLI.

The pipelines are imported on first use (``from entry import serial_pipeline_reward_model_onpolicy``), so
that ``python -m entry.demo`` can quiet third-party import chatter before DI-engine is imported.
"""
__all__ = ["serial_pipeline_reward_model_onpolicy", "serial_pipeline_reward_model_offpolicy"]


def __getattr__(name: str):
    if name in __all__:
        from . import serial_entry_reward_model
        return getattr(serial_entry_reward_model, name)
    raise AttributeError(f"module 'entry' has no attribute {name!r}")
