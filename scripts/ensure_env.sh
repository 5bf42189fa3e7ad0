#!/usr/bin/env bash
# Create or refresh .venv at the project root. Usage: ensure_env.sh [extras]  (e.g. "dev,ray")
# Reinstalls only when pyproject.toml or the extras change (stamp file inside .venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
venv="$root/.venv"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null 2>&1 || py=python3
if [ ! -x "$venv/bin/python" ]; then
  echo "[mmad-boost] creating $venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
stamp="$venv/.mmad_boost_stamp"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16)+${extras}"
if [ -f "$stamp" ] && grep -qxF "$want" "$stamp"; then exit 0; fi
# Also accept a stamp from a superset install (e.g. dev,ray covers the demo's plain install).
if [ -z "$extras" ] && [ -f "$stamp" ] && grep -q "^$(sha256sum "$root/pyproject.toml" | cut -c1-16)+" "$stamp"; then exit 0; fi
echo "[mmad-boost] installing the package into $venv (first time: several minutes)" >&2
# torch first, pinned: these builds lie on the machine's disk; other torch builds break here.
"$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
"$venv/bin/python" -m pip install -q -e "$spec"
echo "$want" > "$stamp"
