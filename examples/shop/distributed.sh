#!/usr/bin/env bash
# The shop as six separate processes over a broker and a database, configured by environment
# variables alone (the same binaries `cargo run -p shop-<service>` starts).
#
#   bash examples/shop/distributed.sh            # run until Ctrl-C; logs in target/shop-logs/
#   bash examples/shop/distributed.sh --smoke    # start, place an order and a checkout, stop
#
#   TRANSPORT=amqp|nats (default amqp)   AMQP_URL, NATS_URL
#   STORE=postgres|redis (default postgres): postgres keeps every service's rows, outbox, inbox,
#   idempotent responses and sagas in PostgreSQL (DATABASE_URL; each run in a schema of its own);
#   redis keeps the state in memory with idempotency keys and processed ids in Redis (REDIS_URL).
set -euo pipefail
cd "$(dirname "$0")/../.."

transport=${TRANSPORT:-amqp}
store=${STORE:-postgres}
case $transport in
    amqp) broker=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f} ;;
    nats) broker=${NATS_URL:-nats://127.0.0.1:4222} ;;
    *) echo "TRANSPORT must be amqp or nats, not $transport" >&2; exit 2 ;;
esac
case $store in
    postgres | redis) ;;
    *) echo "STORE must be postgres or redis, not $store" >&2; exit 2 ;;
esac
smoke=false
[[ ${1:-} == --smoke ]] && smoke=true

services=(gateway orders inventory payments notifications orchestrator)
cargo build -q $(printf -- '-p shop-%s ' "${services[@]}")
bin=${CARGO_TARGET_DIR:-target}/debug
logs=${CARGO_TARGET_DIR:-target}/shop-logs
mkdir -p "$logs"
# A namespace per run: queues, streams and tables of earlier runs stay out of the way.
namespace=shop-$(date +%s)
if [[ $store == postgres ]]; then
    database=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
    schema=${namespace//-/_}
    psql -q "$database" -c "CREATE SCHEMA $schema"
    [[ $database == *\?* ]] && separator='&' || separator='?'
    stateful=(APP__POSTGRES__URL="$database${separator}options=-c%20search_path%3D$schema")
else
    stateful=(APP__STORE__KIND=redis APP__REDIS__URL="${REDIS_URL:-redis://127.0.0.1:6379}")
fi

pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    local failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    return $failed
}
trap 'stop_all' INT TERM

# The gateway signs who each request is from with this secret; the services verify it. A demo
# value, as in the one-process shop: a deployment mounts its own and sets
# APP__IDENTITY__SECRETS='[{"file":"/run/secrets/identity"}]'.
identity_secret='["demo-identity-secret-of-32-bytes!"]'

# run <service> <port offset> [VAR=value...]
run() {
    local name=$1 offset=$2
    shift 2
    env APP__HTTP__PORT=$((8080 + offset)) APP__ADMIN__PORT=$((9090 + offset)) \
        APP__SHUTDOWN__READINESS_DELAY=0s \
        APP__MESSAGING__TRANSPORT="$transport" APP__MESSAGING__URL="$broker" \
        APP__MESSAGING__NAMESPACE="$namespace" \
        APP__IDENTITY__SECRETS="$identity_secret" \
        "$@" "$bin/shop-$name" >"$logs/$name.log" 2>&1 &
    pids+=($!)
}

# client <name> <port> <attempt timeout> <timeout>: the same client settings as the one-process shop
# (shop::Setup): one retry, and a breaker that opens after three failures in a row for 5 s.
client() {
    local var=APP__CLIENTS__${1^^}
    echo "${var}__BASE_URL=http://127.0.0.1:$2" "${var}__ATTEMPT_TIMEOUT=$3" "${var}__TIMEOUT=$4" \
        "${var}__RETRY__MAX_RETRIES=1" "${var}__RETRY__BASE_DELAY=10ms" \
        "${var}__CIRCUIT_BREAKER__CONSECUTIVE_FAILURES=3" "${var}__CIRCUIT_BREAKER__OPEN_DURATION=5s" \
        "${var}__CIRCUIT_BREAKER__HALF_OPEN_CALLS=1"
}
run orders 1 "${stateful[@]}"
run inventory 2 "${stateful[@]}"
run payments 3 "${stateful[@]}"
run notifications 4 "${stateful[@]}"
# shellcheck disable=SC2046 # one word per setting
run orchestrator 5 "${stateful[@]}" APP__STEP_TIMEOUT=2s \
    $(client inventory 8082 2s 6s) $(client payments 8083 2s 6s)
# shellcheck disable=SC2046
run gateway 0 APP__IDENTITY__INCOMING=strip APP__JWT__SECRETS='["demo-secret"]' \
    $(client orders 8081 1s 3s) $(client inventory 8082 1s 3s) $(client payments 8083 1s 3s) \
    $(client orchestrator 8085 1s 3s)

ready() { curl -fs "http://127.0.0.1:$((9090 + $1))/health/ready" >/dev/null; }
for offset in 0 1 2 3 4 5; do
    for _ in $(seq 1 100); do
        ready "$offset" && break
        sleep 0.1
    done
    if ! ready "$offset"; then
        echo "error: ${services[$offset]} did not become ready; its log:" >&2
        tail -20 "$logs/${services[$offset]}.log" >&2
        stop_all || true
        exit 1
    fi
done
echo "shop up over $transport with $store: gateway http://127.0.0.1:8080 (x-api-key: demo-key), logs in $logs/"

if ! $smoke; then
    wait
    exit 0
fi

api() { curl -fsS -H 'x-api-key: demo-key' -H 'content-type: application/json' "$@"; }
# Waits until GET $1 through the gateway has "status":"$2".
await_status() {
    for _ in $(seq 1 100); do
        api "http://127.0.0.1:8080$1" | grep -q "\"status\":\"$2\"" && return 0
        sleep 0.1
    done
    echo "error: $1 never reached $2: $(api "http://127.0.0.1:8080$1")" >&2
    return 1
}
ok=true
order=$(api -H "idempotency-key: smoke-$namespace-1" -d '{"item":"book","quantity":1,"amount_cents":1299}' \
    http://127.0.0.1:8080/orders)
order_id=$(sed -E 's/.*"id":([0-9]+).*/\1/' <<<"$order")
await_status "/orders/$order_id" confirmed || ok=false
checkout=$(api -H "idempotency-key: smoke-$namespace-2" -d '{"item":"book","quantity":1,"amount_cents":2500}' \
    http://127.0.0.1:8080/checkouts)
checkout_id=$(sed -E 's/.*"id":"([^"]+)".*/\1/' <<<"$checkout")
await_status "/checkouts/$checkout_id" completed || ok=false
if stop_all; then echo "every service stopped cleanly"; else echo "error: a service exited non-zero" >&2; ok=false; fi
# The smoke run's namespace is of no use once it ended: its schema and, on a local RabbitMQ, its
# durable queues go, so that runs do not pile them up.
if [[ $store == postgres ]]; then
    psql -q "$database" -c "SET client_min_messages = warning; DROP SCHEMA $schema CASCADE"
fi
if [[ $transport == amqp ]] && command -v rabbitmqctl >/dev/null; then
    rabbitmqctl -q list_queues name | { grep "^$namespace\." || true; } | while read -r queue; do
        # rabbitmqctl reads standard input: kept off the list it is handed.
        rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null
    done
fi
$ok && echo "smoke test passed: order $order_id confirmed, checkout $checkout_id completed"
$ok
