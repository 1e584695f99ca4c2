#!/usr/bin/env bash
# Build the sandbox image locally (no registry): the host's Python, its shared libraries and
# its standard library, imported with `docker import`. Takes a few seconds.
# Uses $DOCKER_HOST if set, else the private engine of scripts/start-dockerd.sh.
set -euo pipefail
ROOT="${RLRF_DOCKERD_ROOT:-/tmp/rlrf-dockerd}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$HERE/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
HOST="${DOCKER_HOST:-unix://$ROOT/docker.sock}"
exec "$PY" -m sandboxes.docker_engine build --host "$HOST" "$@"
