"""``demo_mix``: DI-engine's naive replay buffer plus a demo buffer, sampled symmetrically (RLPD).

Registered in DI-engine's ``BUFFER_REGISTRY``, so any off-policy entry that builds its buffer with
``create_buffer`` gets it: ours, and DI-engine's own behind ``ding -m serial_reward_model``. Every
``sample(n)`` returns ``n - round(n * demo_sample_ratio)`` online transitions and the rest from the
demonstrations (``ding_ext.demo_episodes``), on the keys both have, each marked ``is_demo``.

Scoring: sampled demos come with their reward images, and both entries (ours, and DI-engine's) call an image
reward model's ``estimate`` on every sampled batch. The copies a sample returns share each stored transition's
``StoredScore`` (``ding_ext.transitions``), so with ``score_once`` the probability ``estimate`` stores reaches the
stored transition: a frozen model scores each demo and online image once, however often it is sampled.

    create_config.replay_buffer = dict(type='demo_mix', import_names=['ding_ext.demo_replay_buffer'])
    main_config.policy.other.replay_buffer = dict(replay_buffer_size=100000, demo_path='pickcube_demos',
        demo_sample_ratio=0.5, demo_env_metadata=dict(control_mode='pd_ee_delta_pos', ...))
"""
from typing import Any, Dict, List, Optional

from ding.utils import BUFFER_REGISTRY
from ding.worker.replay_buffer.naive_buffer import NaiveReplayBuffer

from .demo_episodes import DemoBuffer, load_demo_transitions
from .transitions import FRAME_INFO_KEY, IMAGE_KEY, SCORE_KEY, attach_score

# set on every sampled transition: True for demonstrations
DEMO_KEY = 'is_demo'


@BUFFER_REGISTRY.register('demo_mix')
class DemoMixReplayBuffer(NaiveReplayBuffer):
    config = dict(
        NaiveReplayBuffer.config,
        type='demo_mix',
        # (str) folder of episode_*.npz demonstrations (``python -m dizoo_maniskill.record_demos``)
        demo_path=None,
        # (float) fraction of every sampled batch taken from the demonstrations (RLPD: 0.5)
        demo_sample_ratio=0.5,
        # (int|None) use the first N episodes of the folder (sorted by name)
        demo_max_episodes=None,
        # (dict) env settings the demos must have been recorded with (checked against the folder's metadata.json)
        demo_env_metadata={},
        # (int) seed of the demo sampling
        demo_seed=0,
        # (bool) image observations dict(state, image) from the recorded frames, for a policy that sees images (the
        # episodes need their reset frame, ``reset_image``); False: the flat recorded observations
        demo_obs_image=False,
        # (list|None) [3, H, W] the demo observation images are resized to: the env's obs_image_size (None: as recorded)
        demo_obs_image_size=None,
        # (bool) only the episodes that reach success (the folder may also hold near misses, for the classifier)
        demo_success_only=False,
    )

    def __init__(self, cfg: Any, tb_logger: Any = None, exp_name: Optional[str] = 'default_experiment',
                 instance_name: Optional[str] = 'buffer') -> None:
        # the demos first: a bad demo folder fails before the naive buffer starts its logging thread
        if not cfg.get('demo_path'):
            raise ValueError("replay_buffer type 'demo_mix' needs demo_path (a folder of recorded demo episodes)")
        self.demo_ratio = float(cfg.get('demo_sample_ratio', 0.5))
        if not 0.0 < self.demo_ratio < 1.0:
            raise ValueError(f"replay_buffer.demo_sample_ratio must be in (0, 1), got {self.demo_ratio}")
        transitions = load_demo_transitions(cfg.demo_path, dict(cfg.get('demo_env_metadata') or {}),
                                            cfg.get('demo_max_episodes'), bool(cfg.get('demo_obs_image', False)),
                                            cfg.get('demo_obs_image_size'), bool(cfg.get('demo_success_only', False)))
        self.demos = DemoBuffer(transitions, seed=int(cfg.get('demo_seed', 0)))
        super().__init__(cfg, tb_logger, exp_name, instance_name)

    def sample(self, size: int, cur_learner_iter: int, sample_range: slice = None,
               replace: bool = False) -> Optional[List[Dict[str, Any]]]:
        n_demo = int(round(size * self.demo_ratio))
        online = super().sample(size - n_demo, cur_learner_iter, sample_range, replace)
        if online is None:
            return None
        demos = self.demos.sample(n_demo)
        # the learner's collate needs one set of keys: this buffer adds its own (collect_iter, replay_unique_id, ...);
        # DEMO_KEY marks the demonstrations (for a policy's behaviour-cloning term); the copies share the stored
        # transitions' StoredScore, so a probability estimate() stores through them is kept
        keys = (set(online[0]) & set(demos[0])) - {DEMO_KEY, SCORE_KEY}
        return [self._copy(t, keys, False) for t in online] + [self._copy(t, keys, True) for t in demos]

    @staticmethod
    def _copy(t: Dict[str, Any], keys: set, is_demo: bool) -> Dict[str, Any]:
        if IMAGE_KEY in t:  # a transition a reward model may score: its copies share its StoredScore
            attach_score(t)
        out = {k: t[k] for k in keys}
        out[DEMO_KEY] = is_demo
        # also where the other source lacks them (a frozen model's online transitions are stored scored, without
        # images: the demos still need theirs, and their frame_info, which holds a gated model's reward state)
        for k in (IMAGE_KEY, SCORE_KEY, FRAME_INFO_KEY):
            if k in t:
                out[k] = t[k]
        return out
