"""Start and stop ``dizoo_franka.sim_cell`` as a subprocess of the robot-sim venv (for collection, demos, tests).

    with SimCellProcess(workdir) as cell:
        cell.ready["robot_ip"], cell.ready["camera_port"]

The cell gets SIGTERM when this process dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``).
"""
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
from typing import Any, Dict, Optional

ROOT = Path(__file__).resolve().parents[1]
ROBOT_SIM_PYTHON = ROOT / ".robot-sim-venv" / "bin" / "python"
READY_TIMEOUT_S = 180.0


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pump(stream, lines: "queue.Queue[str]", log) -> None:
    for line in stream:
        log.write(line)
        log.flush()
        lines.put(line)


class SimCellProcess:
    """One sim cell: ``ready`` is its READY dict plus ``log_path``; ``stop()`` sends SIGTERM and returns the exit
    code. Raises RuntimeError when the cell does not start (with its log)."""

    def __init__(self, workdir: Any, image_size: int = 128, extra_args=()) -> None:
        if not ROBOT_SIM_PYTHON.exists():
            raise RuntimeError(f"{ROBOT_SIM_PYTHON} is missing: run `bash scripts/setup_robot_sim.sh` (make setup)")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), MUJOCO_GL="egl", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log_path = workdir / "sim_cell.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(ROBOT_SIM_PYTHON), "-m", "dizoo_franka.sim_cell", "--image-size", str(image_size), *extra_args],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None
        )
        lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=_pump, args=(self.proc.stdout, lines, self._log), daemon=True).start()
        self.ready: Optional[Dict[str, Any]] = None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.ready is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sim cell exited with {self.proc.returncode}; log: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"no READY from the sim cell in {READY_TIMEOUT_S} s; log: {self.log_path}")
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
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "SimCellProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
