#!/usr/bin/env bash
# The test suite, on a fresh machine or a warm one: builds (or reuses) the Tansu
# broker, finds (or starts) PostgreSQL, then runs every test of the workspace:
# unit tests, and the end-to-end scenarios on SQLite and on PostgreSQL.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh -p saga-tests).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export TANSU_BIN=$("$root/scripts/tansu.sh")
export TEST_POSTGRES_URL=$("$root/scripts/postgres.sh")
echo "test.sh: broker $TANSU_BIN; PostgreSQL ${TEST_POSTGRES_URL}" >&2
export RUST_LOG=${RUST_LOG:-warn,librdkafka=off,rdkafka=off}

cargo test --workspace --locked --no-fail-fast "$@"
