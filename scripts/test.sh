#!/usr/bin/env bash
# The test suite, slow tests included. Installs what the tests need (Chromium for the report tests).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/ensure_env.sh" dev,ray
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[mmad-boost] installing Debian's chromium for the browser tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[mmad-boost] could not install chromium; browser tests will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
cd "$root"
"$root/.venv/bin/ruff" check --quiet "$root"  # lint and format first: configured in pyproject.toml
"$root/.venv/bin/ruff" format --check --quiet "$root" || { echo "[mmad-boost] run: .venv/bin/ruff format ." >&2; exit 1; }
exec "$root/.venv/bin/python" -m pytest "$@"
