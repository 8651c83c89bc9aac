"""Serial pipelines with an image reward model, and the ``ding-reward`` CLI."""
from .serial_entry_reward_model import serial_pipeline_reward_model_offpolicy, serial_pipeline_reward_model_onpolicy

__all__ = ["serial_pipeline_reward_model_onpolicy", "serial_pipeline_reward_model_offpolicy"]
