#!/usr/bin/env bash
# Install everything Shoal and its tests need on a fresh Debian machine, as root. Idempotent.
#   system packages: busybox-static (test images), umoci + skopeo (image tools nobody here wrote),
#                    iproute2, runc + crun (benchmark peers only)
#   Python:          a venv at .venv with the project (editable) and its dev tools
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${SHOAL_VENV:-$here/.venv}
packages=(busybox-static umoci skopeo iproute2 nftables runc crun docker-registry apache2-utils prometheus)

missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "==> installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating virtualenv $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.shoal-installed"
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  echo "==> installing shoal and its dev tools into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[dev]" 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c "import agent, proto.agent.v1.agent_pb2" >/dev/null
  touch "$stamp"
fi
echo "==> ready: $venv/bin/shoal, $venv/bin/shoal-agent"
