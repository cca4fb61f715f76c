#!/usr/bin/env bash
# Start the whole system in the foreground: Redis (if none is running), migrations, Stripe emulator (when no
# STRIPE_SECRET_KEY), demo data, web on :5000, an RQ worker and the scheduler. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export FLASK_APP=app:create_app
[ -f .env ] && set -a && . ./.env && set +a
PY=.venv/bin/python
FLASK=.venv/bin/flask
mkdir -p instance .run
pids=()
cleanup() { trap - INT TERM EXIT; echo; echo "==> stopping"; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup INT TERM EXIT

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
export REDIS_URL
if ! $PY -c "import redis,sys; redis.Redis.from_url('$REDIS_URL', socket_connect_timeout=1).ping()" 2>/dev/null; then
  echo "==> starting Redis on 127.0.0.1:6379"
  redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --dir "$PWD/.run" >.run/redis.log 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do $PY -c "import redis; redis.Redis(socket_connect_timeout=1).ping()" 2>/dev/null && break; sleep 0.1; done
fi

if [ -z "${STRIPE_SECRET_KEY:-}" ]; then
  echo "==> starting the local Stripe emulator on 127.0.0.1:12111 (no STRIPE_SECRET_KEY set)"
  $PY -m stripe_emulator --port 12111 --webhook-url "http://127.0.0.1:5000/webhooks/stripe" >.run/emulator.log 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -fs http://127.0.0.1:12111/_emulator/requests >/dev/null 2>&1 && break; sleep 0.1; done
fi

echo "==> migrating the database"
$FLASK db upgrade >/dev/null
echo "==> seeding demo data"
$FLASK seed demo > .run/demo-logins.txt

echo "==> starting worker, scheduler and web"
$PY worker.py >.run/worker.log 2>&1 &
pids+=($!)
$PY scheduler.py >.run/scheduler.log 2>&1 &
pids+=($!)
.venv/bin/gunicorn --bind 127.0.0.1:5000 --workers 2 --threads 4 --access-logfile - "app:create_app()" &
pids+=($!)
sleep 1
echo
echo "ServicePro is running on http://127.0.0.1:5000  (logs in .run/; Ctrl-C stops everything)"
cat .run/demo-logins.txt
wait -n "${pids[@]}"
