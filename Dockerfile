# syntax=docker/dockerfile:1
# freshet: one small image with every function and the CLI; the container's command picks one:
#   docker run IMAGE featurize | train | drift | predict | freshet <subcommand>
# Configuration is all FRESHET_* environment variables (see README.md, "Configuration").
#
#   docker build -t freshet .

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole workspace: cargo needs every member's manifest (tests/ included) to resolve the
# lockfile, and shared/core embeds infra/topology.toml. .dockerignore keeps target/, .tools/ and .git out.
COPY . .
# Cache mounts keep the crate registry and compiled dependencies between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p freshet-featurize -p freshet-train -p freshet-drift -p freshet-predict -p freshet-cli \
 && mkdir -p /out \
 && cp target/release/freshet-featurize target/release/freshet-train target/release/freshet-drift \
       target/release/freshet-predict target/release/freshet /out/

# glibc and libgcc only (the binaries link them dynamically; TLS is rustls, no OpenSSL), no shell,
# no package manager; runs as an unprivileged user (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/ /usr/local/bin/
# The built-in topology is infra/topology.toml (one server); the cluster one is here for
# FRESHET_TOPOLOGY=/etc/freshet/topology-cluster.toml.
COPY infra/topology.toml infra/topology-cluster.toml /etc/freshet/
# file:// artifact stores resolve relative to here; mount a volume for anything that must last.
WORKDIR /home/nonroot
ENV FRESHET_HTTP_ADDR=0.0.0.0 \
    FRESHET_HTTP_PORT=8080 \
    FRESHET_LOG_FORMAT=json
# /healthz, /readyz, /metrics (and predict's inference API; POST /events on the others).
EXPOSE 8080
# Numeric, so Kubernetes can check runAsNonRoot (distroless "nonroot" is uid 65532).
USER 65532:65532
CMD ["freshet", "--help"]
