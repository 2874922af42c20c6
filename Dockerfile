# syntax=docker/dockerfile:1
#
# tolov container image.
#
#   docker build -t tolov .
#   docker run --rm -p 8080:8080 tolov                      # sandbox, SQLite in /var/lib/tolov
#   docker run --rm --env-file .env tolov check-config      # validate a configuration
#
# Configuration comes from TOLOV__SECTION__KEY environment variables (see .env.example) or a
# file passed with --config / TOLOV_CONFIG. No secret is baked into the image.

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
# Build stage. Migrations (migrations/) and config/default.toml are compiled into the binary.
# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config

# BuildKit cache mounts keep the crate registry and compiled dependencies between builds; the
# target directory is not part of the layer, so the binary is copied out of it. Touching the
# crate roots makes cargo rebuild tolov itself (and re-embed migrations/ and config/) even when
# the copied sources carry older timestamps than the cached build. Only the service is built
# (`--bin tolov`): the load generator's source (tools/) is not in the image. Without the line
# tables the release profile keeps for profiling: ≈ 97 MB → 19 MB, and symbols stay, so
# backtraces still name functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    touch src/lib.rs src/main.rs \
 && CARGO_PROFILE_RELEASE_DEBUG=false cargo build --release --locked --bin tolov \
 && install -D -m 0755 target/release/tolov /out/tolov

# ---------------------------------------------------------------------------------------------
# Runtime stage: same Debian release as the build stage, so the glibc matches.
# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates: for curl and an operator's shell. tolov itself does not read them: its TLS
# (rustls, for the providers and PostgreSQL) carries Mozilla's root set (webpki-roots), so a
# certificate added to the system store here would not be trusted by tolov.
# curl: the HEALTHCHECK below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# Unprivileged user; its home is the working directory, where the default SQLite file
# (tolov.db, used when no database URL is configured) is written.
RUN groupadd --system --gid 10001 tolov \
 && useradd --system --uid 10001 --gid tolov --home-dir /var/lib/tolov --no-create-home \
        --shell /usr/sbin/nologin tolov \
 && install -d -o tolov -g tolov -m 0750 /var/lib/tolov

COPY --from=build /out/tolov /usr/local/bin/tolov

WORKDIR /var/lib/tolov
USER 10001:10001
# The SQLite file lives here: a volume keeps it when the container is replaced
# (docker run -v tolov-data:/var/lib/tolov …). Compose runs PostgreSQL instead.
VOLUME ["/var/lib/tolov"]

# Listen on all interfaces inside the container (the built-in default is 127.0.0.1:8080).
# The HEALTHCHECK assumes port 8080: change both together.
ENV TOLOV__SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080

# Liveness only; /readyz (database reachable) is the readiness probe for orchestrators.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]

# tolov drains in-flight requests on SIGTERM for server.shutdown_grace_secs (20 s by default):
# give the container longer than that to stop (docker stop -t 30, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tolov"]
CMD ["serve"]

LABEL org.opencontainers.image.title="tolov" \
      org.opencontainers.image.description="One payment gateway for Payme, Click, ATMOS and Halyk ePay" \
      org.opencontainers.image.licenses="MIT"
