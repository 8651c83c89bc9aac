"""``LearnedSuccess``: an env-side success detector from a classifier checkpoint, for episodes that end when the
learned reward sees success (hardware without a pose oracle; RLinf and HIL-SERL end episodes so).

Each frame is scored; success is ``hold_steps`` consecutive frames above the threshold (the checkpoint's
``calibrated_threshold`` unless one is given, else 0.5).
"""
from typing import Any, Optional, Tuple


class LearnedSuccess:

    def __init__(self, checkpoint: Optional[str], hold_steps: int, threshold: Optional[float] = None,
                 device: str = 'cpu') -> None:
        from .checkpoint_io import load_checkpoint
        from .evaluate_reward_model import build_model_from_checkpoint
        if not checkpoint:
            raise ValueError("a learned success detector needs a classifier checkpoint (learned_success_checkpoint)")
        if threshold is None:
            threshold = load_checkpoint(checkpoint)[1].get('calibrated_threshold', 0.5)
        self.model = build_model_from_checkpoint(checkpoint, device, float(threshold))
        self.hold_steps = int(hold_steps)
        self.count = 0

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def reset(self) -> None:
        self.count = 0

    def update(self, image: Any) -> Tuple[float, int, bool]:
        """Score one HxWx3 uint8 frame: (probability, consecutive frames above the threshold, success)."""
        prob = float(self.model.predict_proba([image])[0])
        self.count = self.count + 1 if prob > self.threshold else 0
        return prob, self.count, self.count >= self.hold_steps
