#!/usr/bin/env bash
# Install everything Shoal and its tests need on a fresh Debian machine, as root. Idempotent.
#   system packages: busybox-static (test images), umoci + skopeo (image tools nobody here wrote),
#                    iproute2, runc + crun (benchmark peers only), python3-seccomp (libseccomp's binding)
#   Python:          a venv at .venv with the project (editable) and its dev tools
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${SHOAL_VENV:-$here/.venv}
packages=(busybox-static umoci skopeo iproute2 nftables runc crun docker-registry apache2-utils prometheus etcd-server etcd-client curl
          python3-seccomp)

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
# An older install used setuptools' default editable mode: a meta-path finder that every Python process
# (CLI, agent, supervisor, nsenter helper) imports from a .pth at start-up, ≈ 20-30 ms each. Redo it.
finder=$(compgen -G "$venv/lib/python3*/site-packages/__editable___shoal_*_finder.py" || true)
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] || [ -n "$finder" ]; then
  echo "==> installing shoal and its dev tools into $venv"
  # editable_mode=compat: a plain path entry in a .pth file, which costs nothing at start-up.
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[dev,bench]" \
    --config-settings editable_mode=compat 2>&1 | grep -v '^WARNING: Location' || true
  "$venv/bin/python" -c "import agent, proto.agent.v1.agent_pb2" >/dev/null
  touch "$stamp"
fi
# libseccomp's official Python binding comes from Debian (python3-seccomp) for its /usr/bin/python3; the
# venv's Python is the same minor version (3.11), so the one extension module is linked in by name —
# not the whole of dist-packages, which would shadow the venv's own packages.
seccomp_so=$(compgen -G "/usr/lib/python3/dist-packages/seccomp.cpython-*-x86_64-linux-gnu.so" \
             || compgen -G "/usr/lib/python3/dist-packages/seccomp.cpython-*.so" || true)
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['platlib'])")
if [ -n "$seccomp_so" ]; then
  ln -sfn "$seccomp_so" "$site/$(basename "$seccomp_so")"
fi
"$venv/bin/python" -c "import seccomp" || {
  echo "libseccomp's Python binding does not import in $venv (python3-seccomp is built for" \
       "$(/usr/bin/python3 -V 2>&1)); see agent/security/seccomp_filter.py" >&2; exit 1; }
# Byte-compile the project's own modules (pip compiles only what it copies into site-packages): a
# process that finds no .pyc compiles every module it imports, and with PYTHONDONTWRITEBYTECODE set
# it does so on every start. Cheap when nothing changed.
"$venv/bin/python" -m compileall -q -j 0 "$here/agent" "$here/proto" "$here/scheduler" >/dev/null || true
echo "==> ready: $venv/bin/shoal, $venv/bin/shoal-agent"
