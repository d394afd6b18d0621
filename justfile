# imds-conformance tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Run the default conformance scenario against the built-in interceptor on the best available backend.
conformance *ARGS: build
    target/debug/imds-conformance run --scenario scenarios/nmi-default.yaml --interceptor builtin --backend auto {{ARGS}}

# Build every binary of the workspace (the harness starts mock-imds and imds-proxy from target/debug).
build:
    cargo build --workspace --bins

# The whole test suite, as CI runs it: lint, then every test (root-only tests SKIP loudly elsewhere).
test: lint build
    cargo test --workspace --no-fail-fast

# Formatting and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Run the mock IMDS on 127.0.0.1:8080 (never on 169.254.169.254 outside a namespace we own).
mock *ARGS:
    cargo run -p mock-imds -- {{ARGS}}

# The hardened profile: header + instance block + conntrack deletion + isolation.
conformance-hardened *ARGS: build
    target/debug/imds-conformance run --scenario scenarios/hardened.yaml --backend auto {{ARGS}}

# AKS IMDS restriction: AgentBaker's FORWARD DROP rule instead of an interceptor.
conformance-aks *ARGS: build
    target/debug/imds-conformance run --scenario scenarios/aks-restriction.yaml --interceptor aks-rule --backend auto {{ARGS}}
