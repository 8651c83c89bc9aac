"""DI-engine environments for ManiSkill3 tasks (``import dizoo_maniskill.envs`` registers ``maniskill``)."""
