#!/usr/bin/env bash
# The whole test suite, on a Debian or Ubuntu machine: installs what it needs when it is missing
# (PostgreSQL, Redis, RabbitMQ, NATS with JetStream, promtool, psql, curl), starts any server
# that is down, then runs every test with CI=true, so a backend that cannot be reached fails its
# tests instead of skipping them.
#
#   bash scripts/test.sh              # everything
#   bash scripts/test.sh -p hello     # arguments go to `cargo test` (default: --workspace --all-features)
#
# Only the in-process tests, without any server: `cargo test --workspace --all-features` (the
# tests of a real backend then print "skipping: ... unreachable" and pass).
set -euo pipefail
cd "$(dirname "$0")/.."

export CI=true
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
    for _ in $(seq 1 60); do port_open "$2" && return 0; sleep 1; done
    echo "error: $1 did not come up on 127.0.0.1:$2" >&2
    exit 1
}

# Packages for the commands that are missing.
missing=()
need() { command -v "$1" >/dev/null || missing+=("$2"); }
need pg_ctlcluster postgresql
need psql postgresql-client
need redis-server redis-server
need rabbitmq-server rabbitmq-server
need nats-server nats-server
need promtool prometheus
need curl curl
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Servers that are down.
start() {
    local name=$1 port=$2
    shift 2
    port_open "$port" && return 0
    echo "starting $name (port $port was closed)"
    as_root "$@" || true
    wait_port "$name" "$port"
}
start PostgreSQL 5432 sh -c 'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start'
start Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
start RabbitMQ 5672 rabbitmq-server -detached
# A RabbitMQ node can keep its port open while it no longer starts connections (the kernel
# accepts them, the node never answers the protocol header): every AMQP test would then fail
# on a timeout. It counts as down and is restarted.
amqp_answers() {
    timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672 && printf "AMQP\0\0\11\1" >&3 &&
        [ "$(head -c 1 <&3 | od -An -tx1 | tr -d " ")" = 01 ]' 2>/dev/null
}
if ! amqp_answers; then
    echo "restarting RabbitMQ (port 5672 is open, but it does not answer the AMQP header)"
    as_root timeout 30 rabbitmqctl stop >/dev/null 2>&1 || as_root pkill -9 -f 'beam.*rabbit' || true
    for _ in $(seq 1 30); do port_open 5672 || break; sleep 1; done
    as_root rabbitmq-server -detached || true
    for _ in $(seq 1 60); do amqp_answers && break; sleep 1; done
    amqp_answers || { echo "error: RabbitMQ does not answer on 127.0.0.1:5672" >&2; exit 1; }
fi
start "NATS (JetStream)" 4222 sh -c 'mkdir -p /var/lib/nats-server && start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server'

# The tests connect as postgres without a password to the database `test`.
if ! psql -q "${DATABASE_URL%/*}/postgres" -c 'SELECT 1' >/dev/null 2>&1; then
    hba=$(as_root sh -c 'ls /etc/postgresql/*/main/pg_hba.conf' | sort -V | tail -1)
    echo "letting local connections to PostgreSQL in without a password ($hba)"
    as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    as_root sh -c 'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main reload'
fi
if ! psql -q "$DATABASE_URL" -c 'SELECT 1' >/dev/null 2>&1; then
    echo "creating the database ${DATABASE_URL##*/}"
    psql -q "${DATABASE_URL%/*}/postgres" -c "CREATE DATABASE \"${DATABASE_URL##*/}\""
fi

if [ $# -eq 0 ]; then
    set -- --workspace --all-features
fi
cargo test "$@"
