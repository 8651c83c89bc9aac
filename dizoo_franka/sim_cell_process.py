"""Start and stop ``dizoo_franka.sim_cell`` as a subprocess of the robot-sim venv (for collection, demos, tests).

    with SimCellProcess(workdir) as cell:
        env_cfg.update(sim_env_overrides(cell.ready))   # robot_ip, realtime_config='ignore', the sim camera

The cell gets SIGTERM when this process dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``).

For a command that cannot start the cell itself (``ding -m serial_reward_model -c CONFIG``), start it in another
terminal; it prints the variables that the Franka configs read (``env_overrides_from_environ``) and runs until Ctrl+C:

    python -m dizoo_franka.sim_cell_process [--workdir logs/sim_cell]
    # READY {...}
    # export FRANKA_ROBOT_IP=127.0.0.1 FRANKA_CAMERA_PORT=40123
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


# the variables a Franka config reads: the robot's address, and (sim cell only) its frame server's port
ROBOT_IP_VAR, CAMERA_PORT_VAR = "FRANKA_ROBOT_IP", "FRANKA_CAMERA_PORT"


def sim_env_overrides(ready: Dict[str, Any]) -> Dict[str, Any]:
    """``franka`` env settings that connect it to a running cell (its READY dict)."""
    return dict(robot_ip=ready["robot_ip"], realtime_config="ignore",
                camera=dict(type="sim", host="127.0.0.1", port=int(ready["camera_port"])))


def env_overrides_from_environ(environ: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Env settings from ``FRANKA_ROBOT_IP`` (a robot's or the cell's address) and ``FRANKA_CAMERA_PORT`` (a sim
    cell's frame server: the sim camera and realtime_config 'ignore'); {} when neither is set."""
    environ = os.environ if environ is None else environ
    out: Dict[str, Any] = {}
    if environ.get(ROBOT_IP_VAR):
        out["robot_ip"] = environ[ROBOT_IP_VAR]
    if environ.get(CAMERA_PORT_VAR):
        if not environ[CAMERA_PORT_VAR].isdigit():
            raise ValueError(f"{CAMERA_PORT_VAR} must be the sim cell's camera port (a number), "
                             f"got {environ[CAMERA_PORT_VAR]!r}")
        if "robot_ip" not in out:
            raise ValueError(f"{CAMERA_PORT_VAR} is set but {ROBOT_IP_VAR} is not: set both as "
                             "`python -m dizoo_franka.sim_cell_process` prints them")
        out.update(sim_env_overrides(dict(robot_ip=out["robot_ip"], camera_port=environ[CAMERA_PORT_VAR])))
    return out


def main(argv=None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="python -m dizoo_franka.sim_cell_process",
                                     description="Run the sim cell until Ctrl+C; print the variables to export.")
    parser.add_argument("--workdir", default=os.path.join("logs", "sim_cell"), help="where the cell's log goes")
    parser.add_argument("--image-size", type=int, default=128, help="rendered frame side in pixels")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with SimCellProcess(args.workdir, image_size=args.image_size) as cell:
        print("READY " + json.dumps(cell.ready), flush=True)
        print(f"export {ROBOT_IP_VAR}={cell.ready['robot_ip']} {CAMERA_PORT_VAR}={cell.ready['camera_port']}",
              flush=True)
        while not stop.wait(0.5) and cell.proc.poll() is None:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
