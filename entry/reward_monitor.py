"""The learned reward checked against env success during RL: agreement, a reward-hacking alarm, hard-negative mining.

Each iteration ``RewardMonitor.update(new_data, step)`` scores the new transitions that carry a reward
image and an env success label, and:

- logs ``reward_model/precision``, ``recall``, ``env_accuracy``, ``env_success_rate`` and
  ``predicted_success_rate`` to tensorboard;
- raises the reward-hacking alarm when the precision stays below ``reward_model.precision_alarm``
  for ``alarm_patience`` consecutive iterations (iterations where the model calls nothing a success
  have no precision and neither count nor reset): a warning, the scalar ``reward_model/hacking_alarm``
  (1 while raised), and ``should_stop`` when ``stop_on_alarm`` is set;
- with ``reward_model.hard_negative_dir`` set, writes the frames the learned reward calls success
  while the env says failure into ``<dir>/failure/`` (sidecar: source 'policy', ``mined``
  'false_positive', the probability), ready for the next training round.
"""
import logging
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from ding_ext.image_dataset_writer import LabelledImageWriter
from ding_ext.transitions import FRAME_INFO_KEY, as_bool, lookup

logger = logging.getLogger(__name__)


class RewardMonitor:

    def __init__(self, reward_model: Any, tb_logger: Any, env_metadata: Mapping[str, Any]) -> None:
        cfg = reward_model.cfg
        self.model = reward_model
        self.tb_logger = tb_logger
        self.precision_alarm = float(cfg.precision_alarm)
        self.alarm_patience = int(cfg.alarm_patience)
        self.stop_on_alarm = bool(cfg.stop_on_alarm)
        self.low_streak = 0
        self.alarm = False
        self.alarms_raised = 0
        self.mined = 0
        self.miner: Optional[LabelledImageWriter] = None
        if cfg.get('hard_negative_dir'):
            self.miner = LabelledImageWriter(
                cfg.hard_negative_dir, target_success=0, target_failure=10 ** 9, sample_rate_success=0.0,
                sample_rate_fail=1.0, metadata=dict(env_metadata), progress=False
            )

    @property
    def should_stop(self) -> bool:
        return self.alarm and self.stop_on_alarm

    def update(self, data: List[Mapping[str, Any]], step: int) -> Optional[Dict[str, float]]:
        """Score the labelled frames of ``data``; returns the agreement stats (None when no frame has a label)."""
        cfg = self.model.cfg
        frames = [t for t in data if lookup(t, cfg.image_key) is not None and lookup(t, cfg.success_key) is not None]
        if not frames:
            return None
        images = [lookup(t, cfg.image_key) for t in frames]
        y = np.asarray([as_bool(lookup(t, cfg.success_key)) for t in frames], dtype=bool)
        # stored with the transitions (score_once): a frozen model does not score them again as they enter the buffer
        probs = self.model.transition_probs(frames, range(len(frames))).numpy()
        pred = probs > float(self.model.threshold)
        tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
        stats = {
            'precision': tp / (tp + fp) if tp + fp else float('nan'),
            'recall': tp / (tp + fn) if tp + fn else float('nan'),
            'env_accuracy': float((pred == y).mean()),
            'env_success_rate': float(y.mean()),
            'predicted_success_rate': float(pred.mean()),
            # counts, to pool precision and recall over a run
            'tp': float(tp), 'fp': float(fp), 'fn': float(fn), 'frames': float(len(y)),
        }
        self._check_alarm(stats['precision'], step)
        stats['hacking_alarm'] = float(self.alarm)
        for k, v in stats.items():
            if not np.isnan(v):
                self.tb_logger.add_scalar(f'reward_model/{k}', v, step)
        if self.miner is not None:
            for i in np.flatnonzero(pred & ~y).tolist():
                info = dict(lookup(frames[i], FRAME_INFO_KEY) or {})
                info.update(mined='false_positive', prob=round(float(probs[i]), 5))
                self.mined += self.miner.add(images[i], False, info, source='policy')
            stats['mined'] = float(self.mined)
        return stats

    def _check_alarm(self, precision: float, step: int) -> None:
        if np.isnan(precision):
            return
        if precision >= self.precision_alarm:
            self.low_streak, self.alarm = 0, False
            return
        self.low_streak += 1
        if self.low_streak >= self.alarm_patience and not self.alarm:
            self.alarm = True
            self.alarms_raised += 1
            logger.warning(
                "reward-hacking alarm at iteration %d: the learned reward's precision against env success has been "
                "below precision_alarm=%.2f for %d iterations (last %.3f): the policy is collecting frames the "
                "classifier calls success that the env does not.%s", step, self.precision_alarm, self.low_streak,
                precision, " Stopping (stop_on_alarm)." if self.stop_on_alarm else
                " Mine them (hard_negative_dir) and retrain the classifier, or set stop_on_alarm."
            )

    def close(self) -> None:
        if self.miner is not None:
            self.miner.close()
