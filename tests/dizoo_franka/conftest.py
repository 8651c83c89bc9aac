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


@pytest.fixture(scope="module")
def sim_cell(tmp_path_factory):
    """Start the cell, wait for its READY line, yield its READY dict (robot_ip, camera_port, ...), stop it."""
    if not ROBOT_SIM_PYTHON.exists():
        pytest.fail(f"{ROBOT_SIM_PYTHON} is missing: run `bash scripts/setup_robot_sim.sh` (make setup does)")
    workdir = tmp_path_factory.mktemp("sim_cell")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MUJOCO_GL="egl", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log = open(workdir / "sim_cell.log", "w")
    proc = subprocess.Popen(
        [str(ROBOT_SIM_PYTHON), "-m", "dizoo_franka.sim_cell", "--image-size", "128"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None
    )
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines, log), daemon=True).start()
    ready = None
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while ready is None:
            if proc.poll() is not None:
                log_text = (workdir / "sim_cell.log").read_text()
                pytest.fail(f"the sim cell exited with {proc.returncode}; log: {log_text}")
            if time.monotonic() > deadline:
                pytest.fail(f"no READY from the sim cell in {READY_TIMEOUT_S} s")
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("READY "):
                ready = json.loads(line[len("READY "):])
        yield ready
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    # a clean SIGTERM shutdown is part of the cell's contract
    assert proc.returncode == 0, f"the sim cell exited with {proc.returncode} after SIGTERM"
    print(f"sim cell log: {workdir / 'sim_cell.log'}", file=sys.stderr)
