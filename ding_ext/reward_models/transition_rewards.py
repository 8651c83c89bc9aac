"""``TransitionRewards``: rewards for DI-engine transitions from an image success classifier's probabilities.

The half of ``BaseImageRewardModel`` that turns transitions into rewards: which transitions are scored
(``reward_mode``), the probability stored with each one (``score_once``), the threshold, and the combination with
the env reward (``combine_mode``). It needs from the model ``cfg``, ``threshold``, ``model_version``,
``predict_proba`` and ``debug_writer``.
"""
from typing import Any, Dict, List, Mapping, Sequence

import torch

from ..transitions import FRAME_INFO_KEY, SCORE_KEY, as_bool, attach_score, lookup


class TransitionRewards:
    """``estimate()`` and the reward arithmetic of an image reward model (see the module docstring)."""

    def apply_threshold(self, probs: torch.Tensor) -> torch.Tensor:
        """Model reward from probabilities: p itself with use_soft_reward, p above the threshold (else 0) with
        use_soft_reward='above_threshold', else success/fail_reward by threshold."""
        probs = torch.as_tensor(probs, dtype=torch.float32)
        if self.cfg.use_soft_reward == 'above_threshold':
            return torch.where(probs > self.threshold, probs, torch.zeros_like(probs))
        if self.cfg.use_soft_reward:
            return probs.clone()
        return torch.where(
            probs > self.threshold,
            torch.full_like(probs, float(self.cfg.success_reward)),
            torch.full_like(probs, float(self.cfg.fail_reward)),
        )

    def combine(self, env_reward: torch.Tensor, model_reward: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        scaled = self.scale_reward(model_reward)
        if c.combine_mode == 'replace':
            return scaled
        if c.combine_mode == 'add':
            return env_reward + scaled
        return c.env_reward_weight * env_reward + scaled

    def compute_rewards(self, images: Any, *, states: Any = None) -> torch.Tensor:
        """Model reward (before combining with the env reward) for a batch of images (``states``: the robot's reward
        state per image, for models that gate on it)."""
        probs = self.predict_proba(images, states=states)
        self._dump_debug(images, probs)
        return self.apply_threshold(probs)

    def _dump_debug(self, images: Any, probs: torch.Tensor) -> None:
        if self.debug_writer is not None:
            self.debug_writer.threshold = self.threshold  # follows a later load() of another checkpoint
            self.debug_writer.write(images, probs.tolist())

    def _image_of(self, transition: Mapping, index: int) -> Any:
        image = lookup(transition, self.cfg.image_key)
        if image is None:
            stored = transition.get(SCORE_KEY)
            why = "" if stored is None else (
                f" and its stored probability is from model version {stored.version!r}, not the current "
                f"{self.model_version!r} (a transition stored without its image can be scored again only by a "
                "frozen model)"
            )
            raise KeyError(
                f"transition {index} has no reward image at key {self.cfg.image_key!r}{why} "
                f"(reward_mode={self.cfg.reward_mode!r}); keys present: {sorted(transition.keys())}. "
                "Make the env emit it (reward_render_mode) or set reward_model.image_key"
            )
        return image

    def _state_of(self, transition: Mapping, index: int) -> Any:
        state = lookup(transition, self.cfg.state_key)
        if state is None:
            raise KeyError(
                f"transition {index} has no reward state at key {self.cfg.state_key!r}: the joint-speed gate "
                f"(still_joint_speed) needs the robot's joint velocities with each reward image. Make the env emit "
                f"them (reward_state=True) or set reward_model.state_key; keys present: {sorted(transition.keys())}")
        return state

    def _score_transitions(self, data: Sequence[Dict[str, Any]], idx: Sequence[int]) -> torch.Tensor:
        states = [self._state_of(data[i], i) for i in idx] if self.needs_states else None
        return self._score_images([self._image_of(data[i], i) for i in idx], states)

    def transition_probs(self, data: Sequence[Dict[str, Any]], idx: Sequence[int]) -> torch.Tensor:
        """Success probabilities of ``data[i]`` for ``i`` in ``idx``, scored in one batch.

        With ``score_once`` a transition's probability is stored with it (``SCORE_KEY``, a ``StoredScore`` shared by
        its shallow copies) together with ``model_version``, and reused while the version is unchanged: a frozen
        model scores each stored image once; a trained or reloaded one scores it again when it is next asked.
        """
        version = self.model_version if self.cfg.score_once else None
        if version is None:
            return self._score_transitions(data, idx)
        probs: List[float] = [0.0] * len(idx)
        todo: Dict[int, List[int]] = {}  # stored score -> positions in idx (a batch may hold a transition twice)
        for j, i in enumerate(idx):
            stored = attach_score(data[i])
            if stored.version == version:
                probs[j] = stored.prob
            else:
                todo.setdefault(id(stored), []).append(j)
        if todo:
            first = [js[0] for js in todo.values()]
            new = self._score_transitions(data, [idx[j] for j in first]).tolist()
            for js, p in zip(todo.values(), new):
                stored = data[idx[js[0]]][SCORE_KEY]
                stored.prob, stored.version = p, version
                for j in js:
                    probs[j] = p
        return torch.tensor(probs, dtype=torch.float32)

    def _score_images(self, images: List[Any], states: Any = None) -> torch.Tensor:
        probs = self.predict_proba(images, states=states)
        self._dump_debug(images, probs)
        return probs

    def estimate(self, data: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Copies of ``data`` with ``reward`` replaced by the combined reward; the rewards of ``data`` are unchanged.

        The reward image, the sidecar's ``frame_info`` and the stored probability are dropped from the copies (the
        learner does not need them); with ``score_once`` each scored transition of ``data`` keeps its probability
        (``transition_probs``), so a stored transition is scored once while the weights do not change.
        """
        if len(data) == 0:
            return []
        drop = {self.cfg.image_key, FRAME_INFO_KEY, SCORE_KEY}  # the learner's collate cannot batch them
        out = [{k: v for k, v in t.items() if k not in drop} for t in data]
        if self.cfg.reward_mode == 'per_step':
            idx = list(range(len(data)))
        else:
            idx = [i for i, t in enumerate(data) if as_bool(t.get('done', False))]
        model_r = torch.zeros(len(data))
        if idx:
            model_r[idx] = self.apply_threshold(self.transition_probs(data, idx))
        env = [torch.as_tensor(t['reward'], dtype=torch.float32) for t in data]
        if all(e.shape == env[0].shape for e in env):  # one vectorised combine, one view per transition
            env_r = torch.stack(env)
            combined = self.combine(env_r, model_r.view(-1, *[1] * (env_r.dim() - 1)).expand_as(env_r))
            for t, r in zip(out, combined.unbind(0)):
                t['reward'] = r
        else:
            for t, e, m in zip(out, env, model_r.tolist()):
                t['reward'] = self.combine(e, torch.full_like(e, m))
        return out
