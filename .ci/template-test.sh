#!/usr/bin/env bash
# Generates services from template/ (the default variant, the fullest one, and one with Redis and
# RabbitMQ) against this
# working tree, builds them, runs their tests, starts one and stops it with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
if ! command -v cargo-generate >/dev/null; then
    echo "installing cargo-generate"
    # 0.23.14 is the newest release whose locked dependencies build with this toolchain (1.95).
    cargo install --locked cargo-generate --version 0.23.14
fi
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
# One target directory for both services, kept between runs: the chassis compiles once.
export CARGO_TARGET_DIR="$ROOT/target/template"

generate() {
    local name=$1
    shift
    cargo generate --path "$ROOT/template" --name "$name" --silent --vcs none --no-workspace \
        --destination "$OUT" -d chassis_source=path -d "chassis_path=$ROOT/chassis" "$@"
    # Start from the workspace's resolved versions so nothing new is compiled needlessly.
    cp "$ROOT/Cargo.lock" "$OUT/$name/Cargo.lock"
}

generate plain-service
generate full-service -d messaging=nats -d idempotency_store=postgres -d downstream_client=true \
    -d http_port=18080 -d admin_port=19090
generate redis-service -d messaging=amqp -d idempotency_store=redis

# A bad name is refused with a clear message.
if cargo generate --path "$ROOT/template" --name "9-Bad Name" --silent --vcs none --no-workspace \
    --destination "$OUT" -d chassis_source=path -d "chassis_path=$ROOT/chassis" 2>"$OUT/bad.log"; then
    echo "error: the template accepted an invalid name" >&2
    exit 1
fi
grep -q "not a valid service name" "$OUT/bad.log"

for service in plain-service full-service redis-service; do
    echo "== $service"
    (cd "$OUT/$service" && cargo fmt --check && cargo clippy --all-targets -- -D warnings && cargo test)
done

echo "== run full-service, probe it, stop it with SIGTERM"
cd "$OUT/full-service"
APP__SHUTDOWN__READINESS_DELAY=0s "$CARGO_TARGET_DIR/debug/full-service" > "$OUT/run.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
    curl -fs localhost:19090/health/ready >/dev/null && break
    sleep 0.1
done
curl -fs localhost:19090/health/ready | grep -q '"status":"pass"\|"status":"warn"'
curl -fs localhost:19090/metrics | grep -q chassis_build_info
# Prometheus accepts the generated service's exposition, lint included.
curl -fs localhost:19090/metrics | promtool check metrics
curl -fs localhost:18080/hello/ci | grep -q "Hello, ci!"
kill -TERM "$PID"
wait "$PID"
echo "template OK (clean exit on SIGTERM)"
