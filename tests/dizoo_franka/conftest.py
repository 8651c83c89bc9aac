"""The real franky-sim cell (``dizoo_franka.sim_cell``) as a fixture: a subprocess of the robot-sim venv."""
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROBOT_SIM_PYTHON = ROOT / ".robot-sim-venv" / "bin" / "python"
READY_TIMEOUT_S = 180.0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL (Linux prctl)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pump(stream, lines: "queue.Queue[str]", log) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        lines.put(line)


class SimCellProcess:
    """One sim cell subprocess: ``ready`` is its READY dict plus ``log_path``; ``stop()`` sends SIGTERM."""

    def __init__(self, workdir: Path) -> None:
        if not ROBOT_SIM_PYTHON.exists():
            pytest.fail(f"{ROBOT_SIM_PYTHON} is missing: run `bash scripts/setup_robot_sim.sh` (make setup does)")
        env = dict(os.environ, PYTHONPATH=str(ROOT), MUJOCO_GL="egl", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log_path = workdir / "sim_cell.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(ROBOT_SIM_PYTHON), "-m", "dizoo_franka.sim_cell", "--image-size", "128"],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None
        )
        lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=_pump, args=(self.proc.stdout, lines, self._log), daemon=True).start()
        self.ready = None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.ready is None:
            if self.proc.poll() is not None:
                pytest.fail(f"the sim cell exited with {self.proc.returncode}; log: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"no READY from the sim cell in {READY_TIMEOUT_S} s")
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("READY "):
                self.ready = dict(json.loads(line[len("READY "):]), log_path=str(self.log_path))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def sim_cell(tmp_path_factory):
    """Start the cell, wait for its READY line, yield its READY dict (robot_ip, camera_port, log_path, ...), stop
    it; a clean SIGTERM shutdown is part of the cell's contract."""
    cell = SimCellProcess(tmp_path_factory.mktemp("sim_cell"))
    try:
        yield cell.ready
    finally:
        returncode = cell.stop()
    assert returncode == 0, f"the sim cell exited with {returncode} after SIGTERM; log: {cell.log_path}"


@pytest.fixture
def own_sim_cell(tmp_path):
    """A cell for one test alone (which may stop or kill it): the ``SimCellProcess``."""
    cell = SimCellProcess(tmp_path)
    try:
        yield cell
    finally:
        cell.stop()
