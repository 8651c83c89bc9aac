"""Who drives the arm while episodes are collected, and the human success labels.

- ``ScriptedInsertion``: approach above the hole, then insert, with Gaussian action noise (the sim, demos);
- ``KeyboardTeleop``: keys from a terminal (or any text stream) move the TCP and label frames;
- ``SpaceMouseTeleop``: a 3Dconnexion SpaceMouse through ``pyspacemouse`` (imported when one is made), with the
  same label keys read from the keyboard.

A driver is ``reset(env)`` at the start of an episode, then ``act(obs_state) -> action`` once per step; teleop
drivers also report ``human_label()`` for the current frame and ``end_requested()``.

Label keys (as RLinf): ``c`` marks the current frame success, ``a`` failure; the mark stays on for the following
frames until the other key or ``u`` (unlabelled) is pressed. ``q`` ends the episode. Motion keys of the keyboard
(one unit step each): ``w``/``s`` +x/-x, ``d``/``e`` +y/-y, ``r``/``f`` up/down.
"""
import os
import select
import sys
from typing import Optional, TextIO

import numpy as np

UNLABELLED, FAILURE, SUCCESS = -1, 0, 1
LABEL_KEYS = {"c": SUCCESS, "a": FAILURE, "u": UNLABELLED}
END_KEY = "q"
KEYBOARD_MOTION = {  # key -> unit step [dx, dy, dz]
    "w": (1, 0, 0), "s": (-1, 0, 0), "d": (0, 1, 0), "e": (0, -1, 0), "r": (0, 0, 1), "f": (0, 0, -1),
}


class ScriptedInsertion:
    """Proportional approach to ``approach_height`` metres above the target, then straight down onto it, plus
    N(0, ``noise``) action noise. ``miss_offset`` (m, xy) aims that far beside the hole in a ``miss_prob``
    fraction of episodes (the peg then hovers above the board: frames that look close to success but are not)."""

    def __init__(self, target_xyz, action_scale: float, noise: float = 0.1, approach_height: float = 0.05,
                 miss_prob: float = 0.0, miss_offset: float = 0.02, hover: float = 0.01, seed: int = 0) -> None:
        self.target = np.asarray(target_xyz, dtype=np.float64)
        self.action_scale, self.noise = float(action_scale), float(noise)
        self.approach_height, self.miss_prob, self.miss_offset = float(approach_height), miss_prob, miss_offset
        self.hover = float(hover)
        self.rng = np.random.RandomState(seed)
        self.goal = self.target
        self.action_dim = 3

    def reset(self, env) -> None:
        self.action_dim = env.action_space.shape[0]
        self.goal = self.target.copy()
        if self.rng.uniform() < self.miss_prob:
            angle = self.rng.uniform(0, 2 * np.pi)
            self.goal[:2] += self.miss_offset * np.array([np.cos(angle), np.sin(angle)])
            self.goal[2] += self.approach_height - self.hover  # hover above the board, beside the hole
        self.inserting = False

    def act(self, state: np.ndarray) -> np.ndarray:
        pos = np.asarray(state[:3], dtype=np.float64)
        above = self.goal + np.array([0.0, 0.0, self.approach_height])
        self.inserting = self.inserting or np.linalg.norm(pos[:2] - self.goal[:2]) < 0.003
        waypoint = self.goal if self.inserting else np.where(np.arange(3) < 2, self.goal, np.maximum(above, pos))
        step = np.clip((waypoint - pos) / self.action_scale, -1.0, 1.0) + self.rng.normal(0.0, self.noise, 3)
        action = np.zeros(self.action_dim, dtype=np.float32)
        action[:3] = np.clip(step, -1.0, 1.0)
        return action

    def human_label(self) -> int:
        return UNLABELLED

    def end_requested(self) -> bool:
        return False


class KeyboardTeleop:
    """Single-key commands from ``stream`` (default: the terminal, put in cbreak mode while collecting); every key
    read before a step applies to that step (motion keys add up, label keys set the label)."""

    def __init__(self, stream: Optional[TextIO] = None, speed: float = 1.0) -> None:
        self.stream = stream if stream is not None else sys.stdin
        self.speed = float(speed)
        self.label = UNLABELLED
        self._end = False
        self._motion = np.zeros(3)
        self._terminal = None
        if stream is None and sys.stdin.isatty():
            import termios
            import tty
            self._terminal = termios.tcgetattr(sys.stdin)
            tty.setcbreak(sys.stdin.fileno())
        self.action_dim = 3

    def reset(self, env) -> None:
        self.action_dim = env.action_space.shape[0]
        self.label, self._end = UNLABELLED, False

    def poll_keys(self) -> None:
        self._motion = np.zeros(3)
        fd = self.stream.fileno()
        while select.select([fd], [], [], 0.0)[0]:
            key = os.read(fd, 1).decode(errors="ignore").lower()
            if not key:
                break
            if key in LABEL_KEYS:
                self.label = LABEL_KEYS[key]
            elif key == END_KEY:
                self._end = True
            elif key in KEYBOARD_MOTION:
                self._motion += KEYBOARD_MOTION[key]

    def act(self, state: np.ndarray) -> np.ndarray:
        self.poll_keys()
        action = np.zeros(self.action_dim, dtype=np.float32)
        action[:3] = np.clip(self._motion * self.speed, -1.0, 1.0)
        return action

    def human_label(self) -> int:
        return self.label

    def end_requested(self) -> bool:
        return self._end

    def close(self) -> None:
        if self._terminal is not None:
            import termios
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, self._terminal)
            self._terminal = None


class SpaceMouseTeleop(KeyboardTeleop):
    """Translation from a SpaceMouse (its axes scaled by ``speed`` into [-1, 1]), labels and end from the keys."""

    def __init__(self, stream: Optional[TextIO] = None, speed: float = 1.0, deadzone: float = 0.05) -> None:
        try:
            import pyspacemouse
        except ImportError as e:
            raise ImportError("the SpaceMouse driver needs pyspacemouse (pip install pyspacemouse); "
                              "without one, collect with driver='keyboard'") from e
        if not pyspacemouse.open():
            raise RuntimeError("pyspacemouse found no SpaceMouse (is it plugged in, and readable by this user?)")
        self._spacemouse = pyspacemouse
        self.deadzone = float(deadzone)
        super().__init__(stream, speed)

    def act(self, state: np.ndarray) -> np.ndarray:
        self.poll_keys()
        reading = self._spacemouse.read()
        motion = np.array([reading.x, reading.y, reading.z], dtype=np.float64)
        motion[np.abs(motion) < self.deadzone] = 0.0
        action = np.zeros(self.action_dim, dtype=np.float32)
        action[:3] = np.clip(motion * self.speed, -1.0, 1.0)
        return action

    def close(self) -> None:
        self._spacemouse.close()
        super().close()


def make_driver(kind: str, env_cfg, noise: float = 0.1, miss_prob: float = 0.0, seed: int = 0):
    if kind == "scripted":
        return ScriptedInsertion(np.asarray(env_cfg.target_ee_pose)[:3], env_cfg.action_scale, noise=noise,
                                 miss_prob=miss_prob, seed=seed)
    if kind == "keyboard":
        return KeyboardTeleop()
    if kind == "spacemouse":
        return SpaceMouseTeleop()
    raise ValueError(f"driver must be 'scripted', 'keyboard' or 'spacemouse', got {kind!r}")
