#!/usr/bin/env bash
# Installs the dev environment and runs the whole test suite (unit + integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev
# The Docker sandbox tests need an engine; start one if it is installed but not running.
if command -v dockerd >/dev/null && ! docker info >/dev/null 2>&1; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null && SUDO="sudo"
  ($SUDO dockerd >/tmp/thinkgym-dockerd.log 2>&1 &)
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
# The Docker sandbox image is built locally (no registry), in about a second.
if docker info >/dev/null 2>&1; then
  docker image inspect "${THINKGYM_SANDBOX_IMAGE:-thinkgym-sandbox:1}" >/dev/null 2>&1 \
    || bash scripts/build_sandbox_image.sh "${THINKGYM_SANDBOX_IMAGE:-thinkgym-sandbox:1}" \
    || echo "warning: could not build the Docker sandbox image; its tests will be skipped" >&2
else
  echo "note: no Docker engine could be started; the Docker sandbox tests will be skipped" >&2
fi
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec .venv/bin/python -m pytest "$@"
