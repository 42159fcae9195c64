#!/usr/bin/env bash
# Install Shoal and watch a whole cluster work on this machine: a 3-member etcd, two schedulers, agent
# hosts in network namespaces (one zone each), Prometheus, a load generator and a host provider. A
# service is declared, spread, scaled on load, given a bought host, survives a dead host and a dead
# scheduler leader, and rolls out a new version without a failed request; each step prints what it
# measured, and the end draws the timeline. Everything is removed afterwards (also after Ctrl-C).
# Run as root.   Options: --hosts N (or SHOAL_DEMO_HOSTS=N), --profile full|short, --out DIR.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "the demo needs root (network namespaces, mounts, cgroups)" >&2; exit 1; }
bash "$here/scripts/install.sh"
venv=${SHOAL_VENV:-$here/.venv}
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec "$venv/bin/python" -m scripts.demo "$@"
