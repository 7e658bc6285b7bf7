#!/usr/bin/env bash
# Prints a PostgreSQL admin URL the tests can use, starting a throwaway cluster
# if none is reachable:
#   1. $TEST_POSTGRES_URL if set;
#   2. postgres://postgres@127.0.0.1:5432/postgres if something answers there;
#   3. otherwise a fresh cluster (initdb + pg_ctl, Debian's postgresql package,
#      installed if missing) on a free port under .tools/pg, left running.
#
#   scripts/postgres.sh start DIR PORT   a cluster of the caller's own in DIR (created once),
#                                        started on 127.0.0.1:PORT; prints its admin URL
#   scripts/postgres.sh stop DIR         stops that cluster (fast shutdown), e.g. to
#                                        test an outage; `start` brings it back with its data
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

# Debian's server binaries (the package installed if missing) and, as root, the
# user they run as: initdb refuses to run as root.
find_server() {
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        echo "postgres.sh: installing Debian's postgresql package" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    run_as=()
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        run_as=(runuser -u postgres --)
    fi
}

# A cluster in $1 on port $2: created if new, started, waited for.
start_cluster() {
    local dir=$1 port=$2
    find_server
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        "${run_as[@]}" mkdir -p "$dir/data"
        "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust >/dev/null
    fi
    "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c max_connections=400 -k /tmp" -w start >/dev/null
}

case "${1:-}" in
    start)
        dir=${2:?usage: postgres.sh start DIR PORT}
        port=${3:?usage: postgres.sh start DIR PORT}
        start_cluster "$dir" "$port"
        echo "postgres://postgres@127.0.0.1:$port/postgres"
        exit 0
        ;;
    stop)
        dir=${2:?usage: postgres.sh stop DIR}
        find_server
        "${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
        exit 0
        ;;
esac

if [ -n "${TEST_POSTGRES_URL:-}" ]; then
    echo "$TEST_POSTGRES_URL"
    exit 0
fi

if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432 -U postgres; then
    echo "postgres://postgres@127.0.0.1:5432/postgres"
    exit 0
fi

data="$root/.tools/pg/data"
port_file="$root/.tools/pg/port"

mkdir -p "$root/.tools/pg"
if [ -f "$port_file" ] && pg_isready -q -h 127.0.0.1 -p "$(cat "$port_file")"; then
    echo "postgres://postgres@127.0.0.1:$(cat "$port_file")/postgres"
    exit 0
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rm -rf "$data"
start_cluster "$root/.tools/pg" "$port"
echo "$port" >"$port_file"
echo "postgres.sh: started a throwaway PostgreSQL on 127.0.0.1:$port" >&2
echo "postgres://postgres@127.0.0.1:$port/postgres"
