# syntax=docker/dockerfile:1
#
# One image for the whole system: the six services, the payment gateway simulator
# and the shopctl CLI. compose.yaml picks the program per container by command.
#
#   docker build -t shop-saga:local .          (or: docker compose build)
#   docker run --rm shop-saga:local shopctl --help
#
# Needs BuildKit (the default builder of current Docker): the cargo registry and
# the target directory live in cache mounts, so a rebuild after a source change
# recompiles only the crates that changed.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------
# Builder: compiles the release binaries. librdkafka is built from source by the
# rdkafka-sys crate (bundled, ./configure + make), which wants a C/C++ toolchain,
# make, perl, pkg-config, zlib headers and, for TLS (SASL_SSL), OpenSSL's. The full rust image already ships
# them; they are listed so that a switch to a slimmer base image keeps working.
# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential make perl pkg-config zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*

# Every binary the image carries. compose.yaml runs only these (a test in
# tests/tests/compose.rs checks both directions).
ARG BINARIES="user-svc product-svc order-svc inventory-svc payment-svc notification-svc gateway-sim shopctl"

WORKDIR /src
COPY . .

# --locked: build exactly what Cargo.lock says, or fail.
RUN --mount=type=cache,id=shop-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=shop-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=shop-target,target=/src/target,sharing=locked \
    set -eux; \
    bins=""; \
    for bin in $BINARIES; do bins="$bins --bin $bin"; done; \
    cargo build --release --locked $bins; \
    mkdir -p /out; \
    for bin in $BINARIES; do install -m 0755 "target/release/$bin" "/out/$bin"; done

# ---------------------------------------------------------------------------
# Runtime: Debian slim, the binaries, CA certificates, and curl for the
# container health checks (GET /readyz, /healthz). Runs as an unprivileged user.
# The binaries link glibc, libgcc and zlib, part of the base image, and OpenSSL
# (libssl3) for Kafka's TLS.
# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 shop \
    && useradd --system --uid 10001 --gid shop --home-dir /var/lib/shop --shell /usr/sbin/nologin shop \
    && mkdir -p /var/lib/shop/data \
    && chown -R shop:shop /var/lib/shop

COPY --from=builder /out/ /usr/local/bin/

LABEL org.opencontainers.image.title="shop-saga" \
      org.opencontainers.image.description="Order saga over Kafka: six services, payment gateway simulator, shopctl" \
      org.opencontainers.image.licenses="MIT"

USER shop:shop
WORKDIR /var/lib/shop

# Container defaults; compose.yaml sets the rest (see docs/configuration.md).
# DATA_DIR only matters when DATABASE_URL is not set (embedded SQLite).
ENV DATA_DIR=/var/lib/shop/data \
    HTTP_ADDR=0.0.0.0:8080

EXPOSE 8080

# No ENTRYPOINT: the command names the program, e.g. `order-svc`,
# `gateway-sim`, or `shopctl topics create --partitions 6`.
CMD ["shopctl", "--help"]
