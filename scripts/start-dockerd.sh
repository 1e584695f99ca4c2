#!/usr/bin/env bash
# Start a private Docker engine for the sandbox backend (root; installs docker.io if missing).
# No bridge, no iptables, no IP forwarding; its own socket, data root and pidfile under $ROOT.
# Prints DOCKER_HOST=unix://$ROOT/docker.sock. Stop it with: $0 --stop
set -euo pipefail
ROOT="${RLRF_DOCKERD_ROOT:-/tmp/rlrf-dockerd}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$HERE/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
if [ "${1:-}" = "--stop" ]; then
    exec "$PY" -m sandboxes.docker_engine stop --root "$ROOT"
fi
if ! command -v dockerd >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io
    }
fi
exec "$PY" -m sandboxes.docker_engine start --root "$ROOT"
