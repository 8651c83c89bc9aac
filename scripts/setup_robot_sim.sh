#!/usr/bin/env bash
# Idempotent set-up of the robot-sim environment .robot-sim-venv/ for dizoo_franka/sim_cell.py (franky-sim's
# MuJoCo Franka cell). It is separate from .venv: franky-sim's pinocchio needs numpy>=2, the main venv pins
# numpy<2. Like .venv it is a symlink into a cache keyed by the pinned versions below and the Python version,
# so a second set-up on the same machine takes a second. MUJOCO_GL=egl rendering needs libegl1 (setup_env.sh's
# Mesa step installs it).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"
# pinned: the versions resolved on 2026-11-26 (pip install franky-sim franky-control mujoco)
PACKAGES=(franky-sim==1.0.4 franky-control==2.0.0 mujoco==4.0.0 numpy==2.4.6 pin==4.1.0)

log() { printf '[setup-robot-sim] %s\n' "$*"; }

key=$( (printf '%s\n' "${PACKAGES[@]}"; "$PY" -c 'import sys; print(sys.version_info[:2])') | sha256sum | cut -c1-16)
cache="${ROBOT_SIM_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ding-image-reward/robot-sim-$key}"
if [ ! -f "$cache/.complete" ]; then
  log "creating the robot-sim environment in $cache"
  rm -rf "$cache"
  "$PY" -m venv "$cache"
  # pipefail: the pipeline fails when pip fails (the filter only drops this machine's index warnings)
  "$cache/bin/pip" install -q "${PACKAGES[@]}" 2>&1 | { grep -v -e "is ignored: it is neither" -e "^DEPRECATION" || true; } \
    || { echo "[setup-robot-sim] error: pip install failed" >&2; exit 1; }
  (cd / && "$cache/bin/python" -c 'import franky_sim, franky, mujoco') \
    || { echo "[setup-robot-sim] error: franky_sim / franky / mujoco do not import" >&2; exit 1; }
  touch "$cache/.complete"
else
  log "robot-sim environment cached at $cache"
fi
if [ -L .robot-sim-venv ] || [ ! -e .robot-sim-venv ]; then
  ln -sfn "$cache" .robot-sim-venv
else
  echo "[setup-robot-sim] error: .robot-sim-venv exists and is not a symlink; remove it and re-run" >&2; exit 1
fi
log "ready: $(.robot-sim-venv/bin/python -c 'import mujoco, numpy; from importlib.metadata import version as v; print("franky-sim", v("franky-sim"), "| franky-control", v("franky-control"), "| mujoco", mujoco.__version__, "| numpy", numpy.__version__)')"
