#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian bookworm machine (Python 3.11, no GPU needed):
#   1. Vulkan for SAPIEN's renderer: Mesa lavapipe >= 24.3 from bookworm-backports, only when no
#      Vulkan device is present already (a GPU machine brings its own through the NVIDIA driver);
#   2. the Python environment .venv/, a symlink into a cache keyed by requirements.txt, so a second
#      set-up on the same machine takes seconds;
#   3. this checkout installed into it in editable mode (console scripts included).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*"; }
# pip, without the warnings about this machine's missing local package indexes; fails when pip fails
pip_quiet() {
  local rc=0
  "$@" 2>&1 | { grep -v -e "is ignored: it is neither" -e "^DEPRECATION" || true; } || rc=$?
  [ "${PIPESTATUS[0]:-$rc}" = 0 ] && [ "$rc" = 0 ]
}

sudo_cmd=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then sudo_cmd="sudo"; fi

# ---- 1. Vulkan ---------------------------------------------------------------------------------
mesa_ok() {
  local v
  v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
  [ -n "$v" ] && dpkg --compare-versions "$v" ge 24.3
}
gpu_vulkan_present() {
  # an NVIDIA driver registers its own Vulkan ICD; nothing to install then
  ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1
}
if [ "${SKIP_APT:-0}" = "1" ]; then
  log "SKIP_APT=1: not touching system packages"
elif gpu_vulkan_present; then
  log "GPU Vulkan driver found: not installing Mesa"
elif mesa_ok; then
  log "Mesa Vulkan (lavapipe) $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers) already installed"
elif command -v apt-get >/dev/null 2>&1; then
  log "installing Mesa lavapipe from bookworm-backports (CPU Vulkan rendering)"
  src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ] && ! grep -q 'bookworm-backports' "$src"; then
    $sudo_cmd sed -i '0,/^Suites: bookworm bookworm-updates/s//Suites: bookworm bookworm-updates bookworm-backports/' "$src"
  fi
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' | $sudo_cmd tee /etc/apt/sources.list.d/backports.list >/dev/null
  fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq -t bookworm-backports \
    mesa-vulkan-drivers libvulkan1 libegl1 libgl1 >/dev/null
  mesa_ok || { echo "[setup] error: Mesa >= 24.3 could not be installed; ManiSkill cannot render on CPU" >&2; exit 1; }
else
  log "warning: no apt-get and no Vulkan driver found; ManiSkill rendering may fail"
fi

# ---- 2. Python environment ---------------------------------------------------------------------
key=$( (cat requirements.txt; "$PY" -c 'import sys; print(sys.version_info[:2])') | sha256sum | cut -c1-16)
cache="${VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ding-image-reward/venv-$key}"
if [ ! -f "$cache/.complete" ]; then
  log "creating Python environment in $cache (first time: several minutes, ~5 GB)"
  rm -rf "$cache"
  "$PY" -m venv "$cache"
  pip_quiet "$cache/bin/pip" install -q --upgrade "pip<25" wheel
  pip_quiet "$cache/bin/pip" install -q -r requirements.txt
  touch "$cache/.complete"
else
  log "Python environment cached at $cache"
fi
if [ -L .venv ] || [ ! -e .venv ]; then
  ln -sfn "$cache" .venv
elif [ ! -f .venv/.complete ]; then
  echo "[setup] error: .venv exists and is not a set-up environment; remove it and re-run" >&2; exit 1
fi

# ---- 3. this checkout ---------------------------------------------------------------------------
# --no-deps: the dependencies are exactly requirements.txt; --no-build-isolation: reuse the venv's
# setuptools (DI-engine pins it) instead of downloading a build environment.
pip_quiet .venv/bin/pip install -q --no-deps --no-build-isolation -e . || { echo "[setup] error: pip install -e . failed" >&2; exit 1; }
# the check imports DI-engine, whose optional-package notes (and gym's) are noise here: shown only on failure
check_out=$(cd / && "$root/.venv/bin/python" -c 'import ding_ext' 2>&1) || { echo "$check_out" >&2; echo "[setup] error: ding_ext does not import" >&2; exit 1; }
log "ready: $(.venv/bin/python -W ignore -c 'import torch, ding, mani_skill; print("torch", torch.__version__, "| DI-engine", ding.__version__, "| mani-skill", mani_skill.__version__)' 2>/dev/null)"
# the robot-sim venv for dizoo_franka/sim_cell.py (franky-sim needs numpy>=2, so not in .venv)
bash "$root/scripts/setup_robot_sim.sh"
