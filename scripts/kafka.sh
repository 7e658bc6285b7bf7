#!/usr/bin/env bash
# Apache Kafka 4.4 (KRaft), the broker the system is proven on, from Maven Central's
# jars: there is no Kafka tarball and no kafka-*.sh here.
#
#   scripts/kafka.sh                        fetch the broker jars once (cached in .tools/), print their directory
#   scripts/kafka.sh run PORT DIR [K=V...]  one node on 127.0.0.1:PORT (controller on PORT+1), data in DIR;
#                                           formats DIR the first time, keeps it across restarts; foreground
#   scripts/kafka.sh cluster N BASEPORT DIR N nodes (three of them controllers), replication factor 3 and
#                                           min.insync.replicas=2; node i listens on BASEPORT+2(i-1);
#                                           prints the bootstrap list when ready, stops them all on SIGTERM
#   scripts/kafka.sh ready BOOTSTRAP [RF]   waits until a client can create a topic there (RF replicas)
#   scripts/kafka.sh tool CLASS [ARG...]    runs one of Kafka's command-line tools, e.g.
#                                           org.apache.kafka.tools.AclCommand --bootstrap-server ... --list
#
# The settings live in deploy/kafka/server.properties, shared with compose.yaml;
# `run` appends only what is particular to one node. Knobs of `run`, for clusters and
# tests: KAFKA_NODE_ID (1), KAFKA_CONTROLLER_PORT (PORT+1), KAFKA_VOTERS
# (ID@127.0.0.1:CONTROLLER_PORT; three or more voters append cluster.properties),
# KAFKA_CLUSTER_ID (else DIR/cluster-id, made once), KAFKA_HEAP_OPTS. K=V arguments
# are appended last and win. SIGTERM stops a node cleanly; its log is DIR/server.log.
#
# Secure node (one node): KAFKA_SECRETS=DIR, a directory made by
# deploy/kafka/secrets.sh. Then PORT is the SASL_SSL client listener (INTERNAL,
# SCRAM-SHA-512), KAFKA_BROKER_PORT (PORT+2) the inter-broker and admin listener
# (TLS, client certificate required), the controller listener is TLS too, and
# deploy/kafka/secure.properties (ACLs, super users; shared with compose.yaml) is
# appended. The SCRAM user of each DIR/<principal>.password is created when DIR
# is formatted, so clients can authenticate from the first second; no ACLs exist
# yet (apply `shopctl acls` with the admin certificate, see tests/src/broker.rs).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=4.4.0
config="$root/deploy/kafka"
libs="$root/.tools/kafka-$version/libs"

fetch_jars() {
    [ -f "$libs/.complete" ] && return 0
    command -v java >/dev/null || { echo "kafka.sh: java not found (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
    command -v mvn >/dev/null || { echo "kafka.sh: mvn not found (apt-get install maven)" >&2; exit 1; }
    echo "kafka.sh: fetching Apache Kafka $version jars from Maven Central into $libs (once)" >&2
    local staging="$libs.partial"
    rm -rf "$staging"
    mvn -B -q -f "$config/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$staging" >&2
    [ -f "$staging/kafka_2.13-$version.jar" ] || { echo "kafka.sh: the broker jar is missing after mvn" >&2; exit 1; }
    rm -rf "$libs"
    mv "$staging" "$libs"
    touch "$libs/.complete"
}

# The JVM every Kafka class here runs in; KAFKA_HEAP_OPTS is a list of flags.
read -ra heap <<<"${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
jvm=(java "${heap[@]}" -XX:+UseG1GC -Djava.awt.headless=true -cp "$libs/*")
java_cmd() { "${jvm[@]}" "$@"; }

# Writes DIR/server.properties for one node and formats DIR/data if it is new.
prepare_node() {
    local port=$1 dir=$2
    shift 2
    local node_id=${KAFKA_NODE_ID:-1}
    local controller_port=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
    local voters=${KAFKA_VOTERS:-$node_id@127.0.0.1:$controller_port}
    local secrets=${KAFKA_SECRETS:-}
    [ -z "$secrets" ] || secrets=$(cd "$secrets" && pwd)
    mkdir -p "$dir/data"
    dir=$(cd "$dir" && pwd)
    {
        cat "$config/server.properties"
        if [ "$(tr ',' '\n' <<<"$voters" | grep -c .)" -ge 3 ]; then
            cat "$config/cluster.properties"
        fi
        if [ -n "$secrets" ]; then
            cat "$config/secure.properties"
        fi
        echo
        echo "# --- this node (scripts/kafka.sh run) ---"
        echo "node.id=$node_id"
        echo "controller.quorum.voters=$voters"
        if [ -n "$secrets" ]; then
            local broker_port=${KAFKA_BROKER_PORT:-$((port + 2))}
            echo "listeners=INTERNAL://127.0.0.1:$port,BROKER://127.0.0.1:$broker_port,CONTROLLER://127.0.0.1:$controller_port"
            echo "advertised.listeners=INTERNAL://127.0.0.1:$port,BROKER://127.0.0.1:$broker_port"
            echo "ssl.keystore.location=$secrets/broker.pem"
            echo "ssl.truststore.location=$secrets/ca.crt"
        else
            echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port"
            echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port"
            echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
            echo "inter.broker.listener.name=PLAINTEXT"
        fi
        echo "log.dirs=$dir/data"
        local override
        for override in "$@"; do
            case "$override" in
                *=*) echo "$override" ;;
                *) echo "kafka.sh: override '$override' is not KEY=VALUE" >&2; exit 2 ;;
            esac
        done
    } >"$dir/server.properties"
    local cluster_id=${KAFKA_CLUSTER_ID:-}
    if [ -z "$cluster_id" ]; then
        [ -s "$dir/cluster-id" ] || java_cmd kafka.tools.StorageTool random-uuid >"$dir/cluster-id"
        cluster_id=$(cat "$dir/cluster-id")
    fi
    # A secure node's SCRAM users, stored with the first metadata (only read when
    # DIR is formatted, so a restart keeps the passwords it had).
    local scram=() file
    if [ -n "$secrets" ]; then
        for file in "$secrets"/*.password; do
            scram+=(--add-scram "SCRAM-SHA-512=[name=$(basename "$file" .password),password=$(cat "$file")]")
        done
    fi
    # --ignore-formatted: a restart keeps its data. No --standalone: the voters are static.
    java_cmd kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$dir/server.properties" \
        "${scram[@]}" >/dev/null
    echo "$dir"
}

run_node() {
    local dir
    dir=$(prepare_node "$@")
    # exec: the broker is this process, so a SIGKILL sent to it reaches the JVM.
    exec "${jvm[@]}" -Dkafka.logs.dir="$dir" -Dlog4j2.configurationFile="$config/log4j2.properties" \
        kafka.Kafka "$dir/server.properties"
}

wait_ready() {
    local bootstrap=$1 replication=${2:-1} deadline=$((SECONDS + ${KAFKA_READY_TIMEOUT:-120}))
    until java_cmd org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic kafka-sh.ready --partitions 1 --replication-factor "$replication" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "kafka.sh: no topic could be created on $bootstrap" >&2
            return 1
        fi
        sleep 1
    done
}

run_cluster() {
    local nodes=$1 base=$2 dir=$3 i voters="" bootstrap="" pids=()
    [ "$nodes" -ge 3 ] || { echo "kafka.sh: a cluster needs at least 3 nodes" >&2; exit 2; }
    for i in 1 2 3; do
        voters+="${voters:+,}$i@127.0.0.1:$((base + 2 * (i - 1) + 1))"
    done
    mkdir -p "$dir"
    [ -s "$dir/cluster-id" ] || java_cmd kafka.tools.StorageTool random-uuid >"$dir/cluster-id"
    for i in $(seq 1 "$nodes"); do
        local port=$((base + 2 * (i - 1)))
        bootstrap+="${bootstrap:+,}127.0.0.1:$port"
        # Nodes past the third are brokers only.
        local roles=()
        [ "$i" -le 3 ] || roles=(process.roles=broker)
        KAFKA_NODE_ID=$i KAFKA_VOTERS=$voters KAFKA_CLUSTER_ID=$(cat "$dir/cluster-id") \
            KAFKA_CONTROLLER_PORT=$((port + 1)) "$0" run "$port" "$dir/node-$i" "${roles[@]}" \
            >"$dir/node-$i.out" 2>&1 &
        pids+=($!)
    done
    trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' TERM INT
    wait_ready "$bootstrap" 3
    echo "$bootstrap"
    wait
}

fetch_jars
case "${1:-}" in
    "") echo "$libs" ;;
    run)
        [ $# -ge 3 ] || { echo "usage: kafka.sh run PORT DIR [KEY=VALUE...]" >&2; exit 2; }
        shift
        run_node "$@"
        ;;
    cluster)
        [ $# -eq 4 ] || { echo "usage: kafka.sh cluster N BASEPORT DIR" >&2; exit 2; }
        run_cluster "$2" "$3" "$4"
        ;;
    ready)
        [ $# -ge 2 ] || { echo "usage: kafka.sh ready BOOTSTRAP [REPLICATION]" >&2; exit 2; }
        wait_ready "$2" "${3:-1}"
        ;;
    tool)
        [ $# -ge 2 ] || { echo "usage: kafka.sh tool CLASS [ARG...]" >&2; exit 2; }
        shift
        java_cmd "$@"
        ;;
    *)
        echo "usage: kafka.sh [run PORT DIR [KEY=VALUE...] | cluster N BASEPORT DIR | ready BOOTSTRAP [RF] | tool CLASS [ARG...]]" >&2
        exit 2
        ;;
esac
