#!/usr/bin/env bash
# Load run: the same routes served by bare axum and by the chassis (full inbound stack), measured
# with wrk over loopback. The two servers alternate for several rounds and the medians are
# reported, so drift on a shared machine hits both alike: many short rounds resist a noisy
# host's slow phases better than a few long ones.
#
# Usage: bash benches/load.sh [seconds per run, default 3] [rounds, default 21]
#        EXPORT=1 bash benches/load.sh ...   # the chassis exports its spans over OTLP/HTTP to a
#                                            # local sink that drops them, and reports the
#                                            # export thread's part of the CPU per request
#        BASELINE=/path/to/bench-server bash benches/load.sh ...
#            # also runs the chassis of another build (a copy of an earlier
#            # target/release/bench-server) in every round, to compare two builds in one run
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-3}"
ROUNDS="${2:-21}"
CONNECTIONS=32
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
cargo build --release -q -p chassis-benches --bin bench-server
SERVER=target/release/bench-server
# With two cores or more, the server gets one and wrk another, so they do not fight over one.
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER="taskset -c 1"
    PIN_WRK="taskset -c 0"
else
    PIN_SERVER=""
    PIN_WRK=""
fi

SINK=""
CHASSIS_ENV=()
if [ "${EXPORT:-0}" = 1 ]; then
    $PIN_WRK "$SERVER" otlp-sink 4318 >/dev/null 2>&1 &
    SINK=$!
    trap 'kill "$SINK" 2>/dev/null || true' EXIT
    CHASSIS_ENV=(APP__TELEMETRY__OTLP__ENDPOINT=http://127.0.0.1:4318)
fi

# CPU time (user + system) that the process or thread of the stat file $1 has used, in clock ticks.
stat_ticks() { awk '{print $14 + $15}' "$1"; }
cpu_ticks() { stat_ticks "/proc/$1/stat"; }
# The part of it that the span export threads (named otel-export) used.
export_ticks() {
    local task ticks=0
    for task in /proc/"$1"/task/*; do
        [ "$(cat "$task/comm" 2>/dev/null)" = otel-export ] && ticks=$((ticks + $(stat_ticks "$task/stat")))
    done
    echo "$ticks"
}

# run <mode> <port> [server binary]: prints "requests/s p99 cpu-µs-per-request
# export-thread-cpu-µs-per-request"
run() {
    local mode=$1 port=$2 server=${3:-$SERVER}
    local extra=()
    [ "$mode" = chassis ] && extra=("${CHASSIS_ENV[@]}")
    env "${extra[@]}" $PIN_SERVER "$server" "$mode" "$port" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$port/users/1" >/dev/null && break; sleep 0.1; done
    $PIN_WRK wrk -t1 -c"$CONNECTIONS" -d1s "http://127.0.0.1:$port/users/42" >/dev/null # warm-up
    local before after export_before export_after
    before=$(cpu_ticks "$pid")
    export_before=$(export_ticks "$pid")
    $PIN_WRK wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/users/42" > "/tmp/wrk-$mode.txt"
    after=$(cpu_ticks "$pid")
    export_after=$(export_ticks "$pid")
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    awk -v ticks="$((after - before))" -v export="$((export_after - export_before))" -v hz="$(getconf CLK_TCK)" '
        /requests in/ {n=$1} /Requests\/sec/ {rps=$2} $1 == "99%" {p99=$2}
        END {printf "%s %s %.2f %.2f\n", rps, p99, ticks / hz * 1e6 / n, export / hz * 1e6 / n}' "/tmp/wrk-$mode.txt"
}

results=()
for round in $(seq 1 "$ROUNDS"); do
    read -r bare_rps bare_p99 bare_cpu _ < <(run bare 3100)
    # The two builds take turns going first: the server that runs right after another one
    # measures a little slower on this host, and alternating cancels that out.
    if [ -n "${BASELINE:-}" ] && [ $((round % 2)) = 0 ]; then
        read -r base_rps base_p99 base_cpu _ < <(run chassis 3102 "$BASELINE")
        read -r chassis_rps chassis_p99 chassis_cpu chassis_export < <(run chassis 3101)
    else
        read -r chassis_rps chassis_p99 chassis_cpu chassis_export < <(run chassis 3101)
        if [ -n "${BASELINE:-}" ]; then
            read -r base_rps base_p99 base_cpu _ < <(run chassis 3102 "$BASELINE")
        fi
    fi
    ratio=$(awk -v b="$bare_rps" -v c="$chassis_rps" 'BEGIN {printf "%.1f", 100 * c / b}')
    exporting=""
    [ -n "$SINK" ] && exporting=", of which the export thread $chassis_export µs"
    echo "round $round: bare $bare_rps req/s (p99 $bare_p99, $bare_cpu µs CPU/req)," \
        "chassis $chassis_rps req/s (p99 $chassis_p99, $chassis_cpu µs CPU/req$exporting): $ratio %" >&2
    if [ -n "${BASELINE:-}" ]; then
        base_ratio=$(awk -v b="$bare_rps" -v c="$base_rps" 'BEGIN {printf "%.1f", 100 * c / b}')
        echo "    baseline build: $base_rps req/s (p99 $base_p99, $base_cpu µs CPU/req): $base_ratio %" >&2
    else
        base_rps=0 base_p99=0ms base_cpu=0 base_ratio=0
    fi
    results+=("$bare_rps $bare_p99 $chassis_rps $chassis_p99 $ratio $bare_cpu $chassis_cpu $base_rps $base_p99 $base_cpu $base_ratio $chassis_export")
done

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
column() { printf '%s\n' "${results[@]}" | awk -v c="$1" '{print $c}'; }
# p99 as reported by wrk (ms or us); normalised to ms for the median.
ms() { sed -E 's/([0-9.]+)us/\1 0.001/; s/([0-9.]+)ms/\1 1/; s/([0-9.]+)s$/\1 1000/' | awk '{printf "%.2f\n", $1 * $2}'; }
echo "| server | requests/s (median of $ROUNDS) | p99 (median) | server CPU per request (median) |"
echo "|---|---|---|---|"
echo "| bare axum | $(column 1 | median) | $(column 2 | ms | median) ms | $(column 6 | median) µs |"
echo "| chassis (full stack) | $(column 3 | median) | $(column 4 | ms | median) ms | $(column 7 | median) µs |"
[ -n "${BASELINE:-}" ] &&
    echo "| chassis (baseline build) | $(column 8 | median) | $(column 9 | ms | median) ms | $(column 10 | median) µs |"
[ -n "$SINK" ] &&
    echo "chassis' export thread: $(column 12 | median) µs of CPU per request (median), included above"
echo "ratio (median of per-round ratios): $(column 5 | median) %"
[ -n "${BASELINE:-}" ] && echo "baseline build's ratio (median of per-round ratios): $(column 11 | median) %"
exit 0
