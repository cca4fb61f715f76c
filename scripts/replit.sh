#!/usr/bin/env bash
# Replit's Run button and Reserved VM deployment (and any host that runs the Procfile by hand): set up without
# root, then run the Procfile's processes — release, then web, worker and scheduler — plus Redis when REDIS_URL
# does not answer, and, when there is no STRIPE_SECRET_KEY outside production, the Stripe emulator and demo data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
[ -f .env ] && set -a && . ./.env && set +a
export FLASK_APP=app:create_app PATH="$PWD/.venv/bin:$PATH" PORT="${PORT:-5000}"
if [ -z "${APP_BASE_URL:-}" ]; then
  domain="${REPLIT_DOMAINS:-${REPLIT_DEV_DOMAIN:-}}"  # deployment: REPLIT_DOMAINS; workspace: REPLIT_DEV_DOMAIN
  domain="${domain%%,*}"
  if [ -n "$domain" ]; then export APP_BASE_URL="https://$domain"; fi
fi
PY=.venv/bin/python
pids=()
cleanup() { trap - INT TERM EXIT; echo "==> stopping"; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup INT TERM EXIT
procfile() { sed -n "s/^$1: *//p" Procfile; }

. scripts/services.sh
start_redis
demo=""
if [ -z "${STRIPE_SECRET_KEY:-}" ] && [ "${APP_ENV:-}" != "production" ]; then
  demo=1
  start_emulator "http://127.0.0.1:$PORT/webhooks/stripe"
fi

echo "==> release: $(procfile release)"
bash -c "$(procfile release)"
if [ -n "$demo" ]; then
  echo "==> seeding demo data"
  flask seed demo > .run/demo-logins.txt
fi
for name in worker scheduler web; do
  echo "==> $name: $(procfile "$name")"
  bash -c "exec $(procfile "$name")" &
  pids+=($!)
done
if [ -n "$demo" ]; then cat .run/demo-logins.txt; fi
wait -n "${pids[@]}"
