#!/usr/bin/env bash
# Builds the Docker image of the code sandbox locally; no registry is needed.
#
#   bash scripts/build_sandbox_image.sh [IMAGE]        # default IMAGE: thinkgym-sandbox:1
#
# The image is an almost empty root filesystem (mount points, /etc/passwd) made with
# `docker import`. At run time thinkgym.verifiers.docker_sandbox binds the host's /usr (and any
# real /lib* directories) and the host Python install (at /opt/python) read-only into each
# container, so the image stays a few KiB, builds in about a second and matches the host's
# Python exactly. Rebuild only when this script changes.
set -euo pipefail
IMAGE=${1:-thinkgym-sandbox:1}
command -v docker >/dev/null || { echo "docker CLI not found (apt-get install docker.io)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "Docker engine not reachable (start dockerd)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{usr,tmp,proc,dev,sys,etc,opt/python,root,home}
chmod 1777 "$root/tmp"
chmod 0755 "$root/root" "$root/opt" "$root/opt/python"
# Mirror the host's merged-/usr links (bin -> usr/bin ...); real directories become mount points.
# /sbin stays a real, empty directory: Docker mounts its init (docker-init) there.
mkdir "$root/sbin"
for d in bin lib lib32 lib64 libx32; do
  if [[ -L /$d ]]; then ln -s "$(readlink "/$d")" "$root/$d"; elif [[ -d /$d ]]; then mkdir "$root/$d"; fi
done
printf 'root:x:0:0:root:/root:/bin/sh\nsandbox:x:10001:10001:sandbox:/tmp:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nsandbox:x:10001:\n' > "$root/etc/group"
tar -C "$root" --numeric-owner -c . | docker import \
  --change 'WORKDIR /tmp' \
  --change 'ENV HOME=/tmp PATH=/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1' \
  --change 'LABEL org.thinkgym.sandbox=1' \
  - "$IMAGE" >/dev/null
echo "built $IMAGE"
