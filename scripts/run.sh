#!/usr/bin/env bash
# Start the whole system in the foreground: Redis (if none is running), migrations, Stripe emulator (when no
# STRIPE_SECRET_KEY; its control token in .run/emulator-token, its account in instance/emulator-state.json beside
# the SQLite database), demo data, web on :5000, an RQ worker and the scheduler. Ctrl-C stops everything.
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

. scripts/services.sh
start_redis
if [ -z "${STRIPE_SECRET_KEY:-}" ]; then
  start_emulator "http://127.0.0.1:5000/webhooks/stripe"
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
.venv/bin/gunicorn --config gunicorn.conf.py --bind 127.0.0.1:5000 --access-logfile - &
pids+=($!)
sleep 1
echo
echo "ServicePro is running on http://127.0.0.1:5000  (logs in .run/; Ctrl-C stops everything)"
cat .run/demo-logins.txt
wait -n "${pids[@]}"
