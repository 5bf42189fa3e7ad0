#!/usr/bin/env bash
# The main job: build the bundled sample benchmark and run the offline demo. Offline, no GPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/ensure_env.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$root/.venv/bin/mmad-boost" demo "$@"
