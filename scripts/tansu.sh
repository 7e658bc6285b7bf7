#!/usr/bin/env bash
# Tansu, the Kafka-compatible broker used locally and in tests.
#
#   scripts/tansu.sh                 build Tansu 0.6.0 once (cached in .tools/), print its path
#   scripts/tansu.sh run PORT [URL]  run a broker on 127.0.0.1:PORT with storage URL
#                                    (default memory://tansu/; e.g. sqlite://data/broker.db)
#
# The first build takes about 8 minutes on 2 cores; later calls reuse the binary.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=0.6.0

find_tansu() {
    local candidate
    for candidate in "${TANSU_BIN:-}" "$root/.tools/bin/tansu" "$(command -v tansu 2>/dev/null || true)" "$HOME/.cargo/bin/tansu"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" --version 2>/dev/null | grep -q "tansu $version"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

tansu=$(find_tansu) || {
    echo "tansu.sh: building tansu $version into $root/.tools (once; about 8 minutes)" >&2
    # The features matter: dynostore gives the memory:// engine, libsql the sqlite:// one.
    cargo install tansu --version "$version" --locked --features dynostore,libsql,postgres --root "$root/.tools" >&2
    tansu="$root/.tools/bin/tansu"
}

case "${1:-}" in
    "")
        echo "$tansu"
        ;;
    run)
        port=${2:?usage: tansu.sh run PORT [STORAGE_URL]}
        storage=${3:-memory://tansu/}
        exec "$tansu" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "$storage"
        ;;
    *)
        echo "usage: tansu.sh [run PORT [STORAGE_URL]]" >&2
        exit 2
        ;;
esac
