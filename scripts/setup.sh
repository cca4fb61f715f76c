#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian/Ubuntu machine. Usage: scripts/setup.sh [run|test]
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v npm >/dev/null || need+=(nodejs npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "$MODE" = "test" ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  command -v chromium >/dev/null || need+=(chromium)
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "==> installing OS packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating virtualenv"
  python3 -m venv .venv
fi
stamp=".venv/.requirements.sha"
sum="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
  echo "==> installing Python packages"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -r requirements.txt
  echo "$sum" > "$stamp"
fi

if [ ! -f app/static/vendor/htmx.min.js ] || ! cmp -s node_modules/htmx.org/dist/htmx.min.js app/static/vendor/htmx.min.js; then
  echo "==> installing front-end assets (htmx from the npm registry)"
  npm install --no-audit --no-fund --silent >/dev/null
  mkdir -p app/static/vendor
  cp node_modules/htmx.org/dist/htmx.min.js app/static/vendor/htmx.min.js
fi
mkdir -p instance
