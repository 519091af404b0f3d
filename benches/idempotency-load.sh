#!/usr/bin/env bash
# Load run of POST with a fresh Idempotency-Key per request, against the same route without the
# layer and with each store, in one run. Needs the local Redis and PostgreSQL.
# Usage: bash benches/idempotency-load.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -q -p chassis-benches --bin bench-server
SCRIPT="$(mktemp --suffix .lua)"
cat > "$SCRIPT" <<'LUA'
local counter = 0
local prefix = tostring(math.random(1, 1000000000))
request = function()
  counter = counter + 1
  return wrk.format("POST", "/payments", {
    ["Idempotency-Key"] = prefix .. "-" .. counter,
    ["Content-Type"] = "application/json",
  }, '{"amount":50}')
end
LUA
echo "| store | requests/s | p99 |"
echo "|---|---|---|"
port=3200
for store in none memory redis postgres transactional; do
    port=$((port + 1))
    target/release/bench-server "idempotency-$store" "$port" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    wrk -t1 -c32 -d2s -s "$SCRIPT" "http://127.0.0.1:$port" >/dev/null
    wrk -t1 -c32 -d"${DURATION}s" --latency -s "$SCRIPT" "http://127.0.0.1:$port" > /tmp/wrk-idem.txt
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    rps=$(awk '/Requests\/sec/ {print $2}' /tmp/wrk-idem.txt)
    p99=$(awk '$1 == "99%" {print $2}' /tmp/wrk-idem.txt)
    echo "| $store | $rps | $p99 |"
done
rm -f "$SCRIPT"
