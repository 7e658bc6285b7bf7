#!/usr/bin/env bash
# The whole system on one machine, on the embedded defaults: builds the binaries,
# starts the broker (Tansu on its sqlite engine, data/broker.db; or Apache Kafka,
# data/kafka/), the payment gateway simulator and the six services (SQLite files
# data/<service>.db), creates the topics, runs the demo, then waits for Ctrl-C
# and stops everything gracefully (SIGTERM).
#
#   scripts/run-local.sh [--broker tansu|kafka]           bring it up, run the demo, keep running until Ctrl-C
#   scripts/run-local.sh [--broker tansu|kafka] --check   bring it up, run `shopctl demo --check`,
#                                                         shut down, exit with the demo's status
#
# Tansu (the default) is one Rust binary, no JVM; Kafka is the broker the system
# is proven on and staging runs (its jars come from Maven Central; needs a JDK).
# Environment: BROKER_PORT (9092; Kafka's controller takes the next port),
# GATEWAY_PORT (8090), HTTP_PORT_BASE (8081: the services listen on 8081..8086),
# DEMO_TIMEOUT (120s), RUST_LOG (info).
# Data and logs: ./data (data/logs/<name>.log). Delete ./data for a fresh start.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

check=0
broker=tansu
while [ $# -gt 0 ]; do
    case "$1" in
        --check) check=1 ;;
        --broker)
            broker=${2:-}
            shift
            ;;
        --broker=*) broker=${1#--broker=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run-local.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case "$broker" in
    tansu | kafka) ;;
    *) echo "run-local.sh: --broker must be tansu or kafka, not '$broker'" >&2; exit 2 ;;
esac

BROKER_PORT=${BROKER_PORT:-9092}
GATEWAY_PORT=${GATEWAY_PORT:-8090}
HTTP_PORT_BASE=${HTTP_PORT_BASE:-8081}
DEMO_TIMEOUT=${DEMO_TIMEOUT:-120s}
export RUST_LOG=${RUST_LOG:-info}

services=(user-svc product-svc order-svc inventory-svc payment-svc notification-svc)
data="$root/data"
logs="$data/logs"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
brokers="127.0.0.1:$BROKER_PORT"
gateway_url="http://127.0.0.1:$GATEWAY_PORT"

say() { printf '\033[1mrun-local:\033[0m %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_ok() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
    else
        local rest=${1#http://} ; port_in_use "$(echo "${rest%%/*}" | cut -d: -f2)"
    fi
}

# ---- build ------------------------------------------------------------------
say "building the release binaries (cargo build --release --locked)"
cargo build --release --locked \
    -p user-svc -p product-svc -p order-svc -p inventory-svc -p payment-svc -p notification-svc -p shopctl
for name in "${services[@]}" gateway-sim shopctl; do
    [ -x "$bin/$name" ] || die "$bin/$name was not built"
done
shopctl() { "$bin/shopctl" --brokers "$brokers" "$@"; }

if [ "$broker" = tansu ]; then
    say "finding Tansu (built once by scripts/tansu.sh, about 14 minutes on 2 cores)"
    tansu=$("$root/scripts/tansu.sh")
    # Tansu holds every fetch for the whole wait (Kafka answers as soon as a
    # record is there), so the services' consumers must not wait long.
    export KAFKA_FETCH_WAIT_MAX=10ms
    broker_ports=("$BROKER_PORT")
else
    say "finding the Apache Kafka jars (fetched once by scripts/kafka.sh)"
    "$root/scripts/kafka.sh" >/dev/null
    broker_ports=("$BROKER_PORT" $((BROKER_PORT + 1)))
fi

for port in "${broker_ports[@]}" "$GATEWAY_PORT" $(seq "$HTTP_PORT_BASE" $((HTTP_PORT_BASE + ${#services[@]} - 1))); do
    if port_in_use "$port"; then
        die "port $port is already in use (another run-local.sh? set BROKER_PORT / GATEWAY_PORT / HTTP_PORT_BASE)"
    fi
done

mkdir -p "$logs"

# ---- processes --------------------------------------------------------------
pids=()
names=()
setsid=$(command -v setsid || true)

start() {
    local name=$1
    shift
    printf '\n==== %s started %s ====\n' "$name" "$(date -u +%FT%TZ)" >>"$logs/$name.log"
    # A session of its own: Ctrl-C reaches this script only, which then stops
    # the processes in order (services before the broker they flush to).
    $setsid "$@" >>"$logs/$name.log" 2>&1 &
    pids+=("$!")
    names+=("$name")
    say "started $name (pid $!, log data/logs/$name.log)"
}

alive() { kill -0 "$1" 2>/dev/null; }

# Stops in reverse start order: services first (they finish in-flight work,
# flush their outboxes and commit offsets), then the gateway, then the broker.
stop_all() {
    local i pid name waited
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        name=${names[i]}
        alive "$pid" || continue
        kill -TERM "$pid" 2>/dev/null || true
        waited=0
        while alive "$pid" && [ "$waited" -lt 300 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if alive "$pid"; then
            say "$name did not stop within 30s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        say "stopped $name"
    done
    pids=()
    names=()
}

interrupted=0
trap 'interrupted=1' INT TERM
trap 'stop_all' EXIT

# Waits until `probe` succeeds, failing if the process `pid` dies or after `secs`.
wait_for() {
    local what=$1 pid=$2 secs=$3
    shift 3
    local deadline=$((SECONDS + secs))
    until "$@"; do
        if ! alive "$pid"; then
            tail -n 20 "$logs/$what.log" >&2 || true
            die "$what exited during start-up (log: data/logs/$what.log)"
        fi
        [ "$interrupted" = 0 ] || exit 130
        [ "$SECONDS" -lt "$deadline" ] || die "$what not ready after ${secs}s (log: data/logs/$what.log)"
        sleep 0.2
    done
}

if [ "$broker" = tansu ]; then
    # Tansu reads the sqlite:// path relative to its working directory (the repository root).
    start tansu "$tansu" broker \
        --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers" \
        --storage-engine "sqlite://data/broker.db"
    storage="sqlite engine, data/broker.db"
else
    # One node, broker and controller; its log is data/kafka/server.log.
    start kafka "$root/scripts/kafka.sh" run "$BROKER_PORT" "$data/kafka"
    storage="Apache Kafka, data/kafka/"
fi
# Up means a client can create a topic: the topics the services need.
topics_created() { shopctl --timeout 2s topics create >/dev/null 2>&1; }
wait_for "$broker" "${pids[-1]}" 120 topics_created
say "broker up at $brokers ($storage)"

say "topics created (catalogue topics, and each service's .dlq and .replay)"

start gateway-sim env GATEWAY_LISTEN="127.0.0.1:$GATEWAY_PORT" "$bin/gateway-sim"
wait_for gateway-sim "${pids[-1]}" 30 http_ok "$gateway_url/healthz"

port=$HTTP_PORT_BASE
for name in "${services[@]}"; do
    start "$name" env KAFKA_BROKERS="$brokers" DATA_DIR="$data" HTTP_ADDR="127.0.0.1:$port" \
        PAYMENT_GATEWAY_URL="$gateway_url" "$bin/$name"
    port=$((port + 1))
done
port=$HTTP_PORT_BASE
for i in "${!services[@]}"; do
    wait_for "${services[i]}" "${pids[i + 2]}" 90 http_ok "http://127.0.0.1:$port/readyz"
    port=$((port + 1))
done
say "all six services ready (health: http://127.0.0.1:$HTTP_PORT_BASE..$((HTTP_PORT_BASE + 5))/readyz)"

# ---- demo -------------------------------------------------------------------
say "running the demo"
demo=(demo --gateway-url "$gateway_url" --timeout "$DEMO_TIMEOUT")
[ "$check" = 0 ] || demo+=(--check)
status=0
shopctl "${demo[@]}" || status=$?

if [ "$check" = 1 ]; then
    if [ "$status" = 0 ]; then say "demo check passed"; else say "demo check FAILED (status $status)"; fi
    stop_all
    exit "$status"
fi

cat >&2 <<EOF

The system is running (logs in data/logs/, data in data/). Try, in another terminal:

  export KAFKA_BROKERS=$brokers PATH="$bin:\$PATH"
  shopctl user register --id alice --email alice@example.com --name Alice
  shopctl product create --sku MUG --name Mug --price 1250 --stock 10
  shopctl order place --user alice --line MUG:2 --token tok_visa
  shopctl order timeline <ORDER_ID> --follow
  shopctl order cancel --id <ORDER_ID> --reason "changed my mind"
  shopctl topics list
  shopctl dlq list order-svc
  shopctl dlq replay order-svc --dry-run
  shopctl demo --gateway-url $gateway_url
  curl -X PUT -d '{"mode":"outage"}' -H 'content-type: application/json' $gateway_url/control

Press Ctrl-C to stop everything.
EOF

while [ "$interrupted" = 0 ]; do
    for i in "${!pids[@]}"; do
        if ! alive "${pids[i]}"; then
            say "${names[i]} exited unexpectedly (log: data/logs/${names[i]}.log); stopping"
            exit 1
        fi
    done
    sleep 1
done
say "stopping (SIGTERM to each process)"
stop_all
