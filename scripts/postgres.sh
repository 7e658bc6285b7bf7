#!/usr/bin/env bash
# Prints a PostgreSQL admin URL the tests can use, starting a throwaway cluster
# if none is reachable:
#   1. $TEST_POSTGRES_URL if set;
#   2. postgres://postgres@127.0.0.1:5432/postgres if something answers there;
#   3. otherwise a fresh cluster (initdb + pg_ctl, Debian's postgresql package,
#      installed if missing) on a free port under .tools/pg, left running.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

if [ -n "${TEST_POSTGRES_URL:-}" ]; then
    echo "$TEST_POSTGRES_URL"
    exit 0
fi

if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432 -U postgres; then
    echo "postgres://postgres@127.0.0.1:5432/postgres"
    exit 0
fi

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "postgres.sh: installing Debian's postgresql package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi

data="$root/.tools/pg/data"
port_file="$root/.tools/pg/port"
run_as=()
if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    run_as=(runuser -u postgres --)
fi

mkdir -p "$root/.tools/pg"
if [ -f "$port_file" ] && pg_isready -q -h 127.0.0.1 -p "$(cat "$port_file")"; then
    echo "postgres://postgres@127.0.0.1:$(cat "$port_file")/postgres"
    exit 0
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
rm -rf "$data"
mkdir -p "$data"
[ "$(id -u)" = 0 ] && chown -R postgres "$root/.tools/pg"
"${run_as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust >/dev/null
"${run_as[@]}" "$bin/pg_ctl" -D "$data" -l "$root/.tools/pg/log" \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c max_connections=400 -k /tmp" -w start >/dev/null
echo "$port" >"$port_file"
echo "postgres.sh: started a throwaway PostgreSQL on 127.0.0.1:$port" >&2
echo "postgres://postgres@127.0.0.1:$port/postgres"
