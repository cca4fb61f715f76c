# Shared by scripts/run.sh and scripts/replit.sh (sourced, not run): start the local Redis and the Stripe emulator
# when they are needed. Expects PY (a Python with the requirements) and a `pids` array the caller cleans up.

# Start redis-server from the PATH on 127.0.0.1:6379 unless REDIS_URL already answers.
start_redis() {
  REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
  export REDIS_URL
  if redis_answers; then return; fi
  case "$REDIS_URL" in
    redis://127.0.0.1:6379* | redis://localhost:6379*) ;;
    *) echo "error: Redis at $REDIS_URL does not answer" >&2; exit 1 ;;
  esac
  if ! command -v redis-server >/dev/null; then
    echo "error: no Redis at $REDIS_URL and no redis-server on the PATH: install Redis or set REDIS_URL" >&2
    exit 1
  fi
  echo "==> starting Redis on 127.0.0.1:6379"
  redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no --dir "$PWD/.run" >.run/redis.log 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    redis_answers && return
    sleep 0.1
  done
  echo "error: redis-server did not start (see .run/redis.log)" >&2
  exit 1
}

redis_answers() {
  $PY -c "import redis, sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()" "$REDIS_URL" 2>/dev/null
}

# Start the Stripe emulator on 127.0.0.1:12111 delivering webhooks to $1, with a fresh control token that only
# this user can read (.run/emulator-token); STRIPE_EMULATOR_PUBLIC_URL exposes its pages on all interfaces.
# Its account is kept in instance/emulator-state.json (STRIPE_EMULATOR_STATE_FILE; set it empty for memory only),
# beside the database that holds its ids. Call it before the migrations, which create a new database.
start_emulator() {
  local webhook_url="$1" host=127.0.0.1 extra=() state="${STRIPE_EMULATOR_STATE_FILE-instance/emulator-state.json}"
  if [ -n "${STRIPE_EMULATOR_PUBLIC_URL:-}" ]; then
    host=0.0.0.0
    extra=(--allow-remote --public-url "$STRIPE_EMULATOR_PUBLIC_URL")
  fi
  if [ -n "$state" ]; then
    match_emulator_state "$state"
    extra+=(--state-file "$state")
  fi
  STRIPE_EMULATOR_CONTROL_TOKEN="$($PY -c 'import secrets; print(secrets.token_urlsafe(24))')"
  export STRIPE_EMULATOR_CONTROL_TOKEN
  (umask 077 && printf '%s\n' "$STRIPE_EMULATOR_CONTROL_TOKEN" > .run/emulator-token)
  echo "==> starting the local Stripe emulator on $host:12111 (no STRIPE_SECRET_KEY set)"
  $PY -m stripe_emulator --host "$host" --port 12111 --webhook-url "$webhook_url" ${extra[@]+"${extra[@]}"} >.run/emulator.log 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break  # e.g. port 12111 taken by another emulator, whose token we lack
    $PY -c "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open(
      'http://127.0.0.1:12111/_emulator/health', timeout=1)" 2>/dev/null && return
    sleep 0.1
  done
  echo "error: the Stripe emulator did not start (see .run/emulator.log)" >&2
  exit 1
}

# The emulator's saved account and the SQLite database belong together: a new database with an old account would
# leave Stripe objects no tenant points at, so the account goes; an old database without it is said out loud. Only
# the default database is judged (with DATABASE_URL set, its age is not known here).
match_emulator_state() {
  local state="$1" db=instance/servicepro.db
  [ -z "${DATABASE_URL:-}" ] || return 0
  if [ ! -e "$db" ] && [ -e "$state" ]; then
    echo "==> new database: starting the Stripe emulator empty too (removed $state)"
    rm -f "$state"
  elif [ -e "$db" ] && [ ! -e "$state" ]; then
    echo "note: $db exists but the Stripe emulator has no saved account ($state): Stripe customers and invoices" \
      "of earlier runs are gone; the demo makes its customers again. For a fresh demo: rm $db, then start again."
  fi
}
