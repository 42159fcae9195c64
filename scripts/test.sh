#!/usr/bin/env bash
# The whole test suite: lint, types, generated-code freshness, the CLI contract, then pytest
# (unit, conformance, integration — the root/kernel tests included; run as root).
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/install.sh >/dev/null
venv=${SHOAL_VENV:-$here/.venv}
export PATH="$venv/bin:$PATH"

echo "==> ruff"
ruff check .
echo "==> mypy"
mypy
echo "==> import contracts"
lint-imports --no-cache
contract="$here/../shared/checks/cli-contract.sh"
if [ -x "$contract" ] || [ -f "$contract" ]; then
  echo "==> CLI contract ($contract)"
  bash "$contract"
fi
cluster="$here/../shared/checks/cluster-contract.sh"
if [ -f "$cluster" ]; then
  echo "==> cluster contract ($cluster)"
  bash "$cluster"
fi
echo "==> pytest"
exec python -m pytest "$@"
