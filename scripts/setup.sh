#!/usr/bin/env bash
# Idempotent set-up. Usage: scripts/setup.sh [run|test]
# Needs python3 (with venv) and redis-server (plus PostgreSQL, Chromium and npm for `test`); only when one is missing
# does it install OS packages with apt-get, which needs root or sudo. Nothing else is fetched but Python packages
# (and, for `test`, axe-core from npm): the front-end assets the app serves are committed and only checked here.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-run}"

need=()
command -v redis-server >/dev/null || need+=(redis-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "$MODE" = "test" ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need+=(postgresql)
  command -v chromium >/dev/null || need+=(chromium)
  command -v npm >/dev/null || need+=(npm)
fi
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null && command -v apt-get >/dev/null; then
      SUDO="sudo"
    else
      echo "error: missing ${need[*]}; install them (or put them on the PATH) and run again" >&2
      exit 1
    fi
  fi
  echo "==> installing OS packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating virtualenv"
  python3 -m venv .venv
fi
# `run` needs the runtime packages only (requirements.txt, what a Procfile deploy installs); `test` adds the test tools.
reqs=requirements.txt
if [ "$MODE" = "test" ]; then reqs=requirements-dev.txt; fi
stamp=".venv/.requirements-$MODE.sha"
sum="$(cat requirements.txt "$reqs" | .venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
  echo "==> installing Python packages"
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/pip install -q -r "$reqs"
  echo "$sum" > "$stamp"
fi

# The committed assets must be the pinned ones (app/static/vendor/SHA256SUMS).
.venv/bin/python - <<'PY'
import hashlib
import pathlib
import sys

vendor = pathlib.Path("app/static/vendor")
for line in (vendor / "SHA256SUMS").read_text().splitlines():
    digest, name = line.split(maxsplit=1)
    path = vendor / name.lstrip("*")
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        sys.exit(f"error: {path} is missing or not the pinned file (app/static/vendor/SHA256SUMS); "
                 f"restore it with: git checkout -- {path}")
PY
# Test assets from npm (package-lock.json): axe-core, which the browser tests inject into every page.
if [ "$MODE" = "test" ]; then
  lock="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ "$(cat node_modules/.package-lock.sha 2>/dev/null)" != "$lock" ]; then
    echo "==> installing test assets (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
    echo "$lock" > node_modules/.package-lock.sha
  fi
fi
mkdir -p instance .run
