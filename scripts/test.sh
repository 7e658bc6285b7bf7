#!/usr/bin/env bash
# The test suite, on a fresh machine or a warm one: fetches (or reuses) the Apache
# Kafka jars and builds (or reuses) the Tansu broker, finds (or starts)
# PostgreSQL, then runs every test of the workspace: unit tests, and the
# end-to-end scenarios on Kafka and on Tansu, each on SQLite and on PostgreSQL.
#
#   TEST_BROKER=kafka|tansu|both (default both) picks the brokers of the saga,
#   failure and fault suites; the other broker's tests are filtered out by name
#   (`--skip on_kafka` / `--skip on_tansu`), so cargo reports them as filtered.
#
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p saga-tests).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

broker=${TEST_BROKER:-both}
skip=()
case "$broker" in
    both) ;;
    kafka) skip=(--skip on_tansu) ;;
    tansu) skip=(--skip on_kafka) ;;
    *) echo "test.sh: TEST_BROKER must be kafka, tansu or both, not '$broker'" >&2; exit 2 ;;
esac
export TEST_BROKER=$broker
if [ "$broker" != tansu ]; then
    echo "test.sh: Kafka jars in $("$root/scripts/kafka.sh")" >&2
fi
if [ "$broker" != kafka ]; then
    TANSU_BIN=$("$root/scripts/tansu.sh")
    export TANSU_BIN
    echo "test.sh: Tansu at $TANSU_BIN" >&2
fi
TEST_POSTGRES_URL=$("$root/scripts/postgres.sh")
export TEST_POSTGRES_URL
echo "test.sh: brokers: $broker; PostgreSQL ${TEST_POSTGRES_URL}" >&2
export RUST_LOG=${RUST_LOG:-warn,librdkafka=off,rdkafka=off}

# The skip filters go to the test binaries, after any the caller gave.
args=("$@")
if [ ${#skip[@]} -gt 0 ]; then
    case " ${args[*]:-} " in
        *" -- "*) args+=("${skip[@]}") ;;
        *) args+=(-- "${skip[@]}") ;;
    esac
fi
cargo test --workspace --locked --no-fail-fast "${args[@]}"
