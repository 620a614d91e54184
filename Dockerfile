# syntax=docker/dockerfile:1
# The operator image: a static-enough Rust binary on distroless (glibc, CA certificates, no shell),
# running as the numeric non-root user 65532. Build from the repository root:
#   docker build -t ghcr.io/dbt-cloud-operator/dbt-cloud-operator:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
# The same binary is installed as `kubectl-dbtcloud`, so `kubectl dbtcloud ...` works where the
# image's /usr/local/bin is on the PATH (or copy it out: docker cp).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# 1. Dependencies only, cached until a manifest or Cargo.lock changes: the workspace manifests
#    with stub sources (every workspace member's manifest must be here for Cargo to load the
#    workspace; tests/deploy_manifests.rs checks this list against Cargo.toml).
COPY Cargo.toml Cargo.lock ./
COPY crates/dbt-cloud-simulator/Cargo.toml crates/dbt-cloud-simulator/Cargo.toml
COPY crates/fake-kube-api/Cargo.toml crates/fake-kube-api/Cargo.toml
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    set -eux; \
    mkdir -p src benches crates/dbt-cloud-simulator/src crates/fake-kube-api/src; \
    echo 'fn main() {}' > src/main.rs; \
    touch src/lib.rs crates/dbt-cloud-simulator/src/lib.rs crates/fake-kube-api/src/lib.rs; \
    for bench in $(sed -n '/^\[\[bench\]\]/,/^$/s/^name *= *"\(.*\)"/\1/p' Cargo.toml); do \
      echo 'fn main() {}' > "benches/$bench.rs"; \
    done; \
    cargo build --release --locked --bin dbt-cloud-operator; \
    rm -rf src benches crates/*/src

# 2. The operator itself.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    set -eux; \
    # The stubs above may be newer than the real sources: make Cargo rebuild this crate.
    touch src/main.rs src/lib.rs; \
    cargo build --release --locked --bin dbt-cloud-operator; \
    mkdir -p /out; \
    cp target/release/dbt-cloud-operator /out/dbt-cloud-operator; \
    ln -s dbt-cloud-operator /out/kubectl-dbtcloud; \
    /out/dbt-cloud-operator --help >/dev/null

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="dbt-cloud-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs dbt Cloud jobs exactly once and reports them in status" \
      org.opencontainers.image.source="https://github.com/dbt-cloud-operator/dbt-cloud-operator" \
      org.opencontainers.image.url="https://github.com/dbt-cloud-operator/dbt-cloud-operator" \
      org.opencontainers.image.documentation="https://github.com/dbt-cloud-operator/dbt-cloud-operator/blob/main/deploy/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
# A directory copy keeps the kubectl-dbtcloud symlink a symlink.
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dbt-cloud-operator"]
CMD ["run"]
