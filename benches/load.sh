#!/usr/bin/env bash
# Load run: the same routes served by bare axum and by the chassis (full inbound stack), one after
# the other in the same run, measured with wrk over loopback. Usage: bash benches/load.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
THREADS=1
CONNECTIONS=32
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -q -p chassis-benches --bin bench-server
SERVER=target/release/bench-server

run() {
    local mode=$1 port=$2
    # The server gets one worker thread less than the machine so wrk has a core of its own.
    "$SERVER" "$mode" "$port" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$port/users/1" >/dev/null && break; sleep 0.1; done
    wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/users/42" >/dev/null # warm-up
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/users/42" > "/tmp/wrk-$mode.txt"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    local rps p99
    rps=$(awk '/Requests\/sec/ {print $2}' "/tmp/wrk-$mode.txt")
    p99=$(awk '$1 == "99%" {print $2}' "/tmp/wrk-$mode.txt")
    echo "$mode $rps $p99"
}

bare=$(run bare 3100)
chassis=$(run chassis 3101)
echo "| server | requests/s | p99 |"
echo "|---|---|---|"
echo "$bare" | awk '{printf "| bare axum | %s | %s |\n", $2, $3}'
echo "$chassis" | awk '{printf "| chassis (full stack) | %s | %s |\n", $2, $3}'
awk -v b="$(echo "$bare" | cut -d' ' -f2)" -v c="$(echo "$chassis" | cut -d' ' -f2)" 'BEGIN {printf "ratio: %.1f%%\n", 100 * c / b}'
