"""Robot, gripper and camera connections shared by the Franka envs of one process.

A Franka's FCI serves one client, and so does a camera (the sim cell likewise: a second ``franky.Robot`` to the same
address waits for ever). DI-engine's serial pipelines build a collector env and an evaluator env that take turns on
the one arm (with the ``base`` env manager both live in the training process), so the envs share one connection per
robot address. The env that drives the arm holds the turn; an env whose turn another env took since its last step
(an evaluation ran in the middle of a collected episode) learns it from ``take_turn``: the arm is no longer where its
episode left it, and ``FrankaEnv`` ends that episode.
"""
from typing import Any, Callable, Dict, Optional, Set, Tuple


class SharedConnection:
    """The arm (``FrankyArm``: robot and gripper) and camera of one address, the envs using them and the env whose
    turn it is."""

    def __init__(self, arm: Any, camera: Any) -> None:
        self.arm, self.camera = arm, camera
        self.users: Set[int] = set()
        self.turn: Optional[int] = None


_OPEN: Dict[str, SharedConnection] = {}


def acquire(address: str, user: Any, open_fn: Callable[[], Tuple[Any, Any]]) -> SharedConnection:
    """The connection to ``address`` (opened with ``open_fn() -> (arm, camera)`` unless another env of
    this process holds it); ``user`` joins it and has the turn."""
    conn = _OPEN.get(address)
    if conn is None:
        conn = SharedConnection(*open_fn())
        _OPEN[address] = conn
    conn.users.add(id(user))
    conn.turn = id(user)
    return conn


def take_turn(conn: SharedConnection, user: Any) -> bool:
    """Give ``user`` the turn; False when another env had it since ``user``'s last turn."""
    had_it = conn.turn == id(user)
    conn.turn = id(user)
    return had_it


def release(address: str, user: Any) -> bool:
    """``user`` leaves the connection; True when it was the last one (the caller then stops and closes it)."""
    conn = _OPEN.get(address)
    if conn is None:
        return True
    conn.users.discard(id(user))
    if conn.users:
        return False
    del _OPEN[address]
    return True


def drop(address: str) -> None:
    """Forget a lost connection: the next reset of every env that used it connects again."""
    _OPEN.pop(address, None)
