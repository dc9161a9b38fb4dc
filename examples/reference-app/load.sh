#!/usr/bin/env bash
# Load the reference app with and without the perfkit layers, alternating
# (with, then without, on the same routes), ROUNDS times; prints each run's
# summary line. Both apps run side by side on their own databases.
#
#   bash examples/reference-app/load.sh                       # embedded: SQLite, no Redis
#   LAYERED_DB=postgres://postgres@127.0.0.1/perfkit_load BARE_DB=postgres://postgres@127.0.0.1/perfkit_load_bare \
#     REDIS_URL=redis://127.0.0.1:6379 bash examples/reference-app/load.sh
#
# ROUNDS (3), DURATION seconds per run (5), CONCURRENCY (64; 32 for payments).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONCURRENCY=${CONCURRENCY:-64}
cargo build --release -q -p perfkit-reference-app
bin=$PWD/target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
layered_db=${LAYERED_DB:-sqlite://$work/layered.db}
bare_db=${BARE_DB:-sqlite://$work/bare.db}
redis=${REDIS_URL:-}
start() { # port, database, bare
  (cd "$work" && RUST_LOG=warn DATABASE_URL=$2 BARE=$3 REDIS_PREFIX="perfkit-load-$1:" \
    ${redis:+REDIS_URL=$redis} "$bin/perfkit-reference-app" --listen "127.0.0.1:$1" >"$work/app-$1.log" 2>&1) &
}
start 3101 "$layered_db" false
start 3102 "$bare_db" true
for port in 3101 3102; do
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.5
  done
done
echo "layered (3101): $layered_db${redis:+ + $redis}; bare (3102): $bare_db"
for round in $(seq 1 "$ROUNDS"); do
  for route in agents prices payments; do
    connections=$CONCURRENCY
    [ "$route" = payments ] && connections=$((CONCURRENCY / 2))
    for port in 3101 3102; do
      label=layered; [ "$port" = 3102 ] && label=bare
      summary=$("$bin/perfkit-load" --url "http://127.0.0.1:$port" --route "$route" \
        --concurrency "$connections" --duration "$DURATION" --warmup 1 | tail -n +2 | head -1)
      echo "round $round  $route  $label  $summary"
    done
  done
done
