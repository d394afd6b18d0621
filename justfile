# imds-conformance tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Cargo features the test suite compiles in (the testcontainers modules of mock-imds and mock-arm).
test_features := "--features mock-imds/testcontainers,mock-arm/testcontainers"

# Run the default conformance scenario against the built-in interceptor on the best available backend.
conformance *ARGS: build
    target/debug/imds-conformance run --scenario scenarios/nmi-default.yaml --interceptor builtin --backend auto {{ARGS}}

# The hardened profile: header + instance block + conntrack deletion + isolation.
conformance-hardened *ARGS: build
    target/debug/imds-conformance run --scenario scenarios/hardened.yaml --backend auto {{ARGS}}

# AKS IMDS restriction: AgentBaker's FORWARD DROP rule instead of an interceptor.
conformance-aks *ARGS: build
    target/debug/imds-conformance run --scenario scenarios/aks-restriction.yaml --interceptor aks-rule --backend auto {{ARGS}}

# The CI matrix (ci/matrix.yaml): imds-proxy (NMI defaults, all features, hardened), the AKS rule, no
# interceptor and the example vendor side by side; writes target/matrix/matrix.{md,html,json}.
matrix *ARGS: build
    target/debug/imds-conformance matrix --matrix ci/matrix.yaml --backend auto --out target/matrix {{ARGS}}

# The catalogue on a kind cluster (needs docker, kind, kubectl and `just images`): creates a cluster from
# ci/kind/two-workers.yaml unless --kind-cluster names an existing one; `--kind-dry-run` prints the commands.
kind-conformance *ARGS: build
    target/debug/imds-conformance run --backend kind --scenario scenarios/nmi-default.yaml {{ARGS}}

# Python azure-identity and Node @azure/identity into DIR/{python,node}; also builds the Rust imds-sdk-client.
# Install the SDK area's real Azure SDK clients, for `imds-conformance run --sdk-clients DIR`.
sdk-clients DIR="target/sdk-clients":
    scripts/sdk-clients.sh {{DIR}}

# imds-proxy with NMI's defaults, then with the opt-ins beyond NMI; writes target/sdk-experience-{nmi,opt-in}.md.
# The SDK area at NMI's real timing (root, netns; about 6 minutes): the README's SDK table.
sdk-experience SCENARIO="scenarios/nmi-real-timing.yaml" *ARGS: build (sdk-clients "target/sdk-clients")
    #!/usr/bin/env bash
    set -uo pipefail
    run() { # exit 1 is expected: the area has no MUST case, so no run of it alone is CONFORMANT
        target/debug/imds-conformance run --backend netns --scenario {{SCENARIO}} \
            --focus '^SDK-' --sdk-clients target/sdk-clients --sdk-timeout 90 "$@" {{ARGS}}
        [ $? -le 1 ]
    }
    rm -f target/sdk-experience-nmi.md target/sdk-experience-opt-in.md
    run --report md=target/sdk-experience-nmi.md &&
    run --proxy-flag=--sdk-friendly-errors --proxy-flag=--identity-wait-bound-sec=10 \
        --report md=target/sdk-experience-opt-in.md

# Build every binary of the workspace (the harness starts imds-proxy from target/debug).
build:
    cargo build --workspace --bins

# The whole test suite, as CI runs it: lint, then every test. Tests needing root, network namespaces or a
# Docker engine run here when the machine allows it and print a loud SKIP with the reason otherwise;
# --show-output prints those lines (and every passing test's output) at the end of each test binary.
test: lint
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --workspace --bins {{test_features}}
    just mutants-build
    # The probe statically linked, for the probe-image test (std only: seconds).
    RUSTFLAGS='-C target-feature=+crt-static' cargo build -p imds-probe --target x86_64-unknown-linux-gnu
    # A Docker engine for the testcontainers tests: the one that answers, else our own dockerd under a
    # temporary directory (ci/dockerd.sh), always stopped again on exit.
    if engine="$(ci/dockerd.sh start)"; then
        eval "$engine"
        trap 'ci/dockerd.sh stop' EXIT
    else
        echo "SKIP: no Docker engine could be started (see ci/dockerd.sh output above); testcontainers tests will SKIP" >&2
    fi
    cargo test --workspace --no-fail-fast {{test_features}} -- --show-output

# Formatting, clippy with warnings as errors, Kubernetes manifests and GitHub workflow checks.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets {{test_features}} -- -D warnings
    ci/check-manifests.sh
    ci/lint-workflows.sh

# Container images (FROM scratch, static binaries): imds-conformance/{mock-imds,imds-proxy,imds-probe,mock-arm}:<version>.
images:
    ci/build-images.sh

# Run the mock IMDS on 127.0.0.1:8080 (never on 169.254.169.254 outside a namespace we own).
mock *ARGS:
    cargo run -p mock-imds -- {{ARGS}}

# Run mock-arm (ARM's VM/VMSS identity surface) on 127.0.0.1:8090; `just mock-arm --help` for its flags.
mock-arm *ARGS:
    cargo run -p mock-arm -- {{ARGS}}

# Run imds-controller (the MIC drop-in); `just controller --help` for its flags.
controller *ARGS:
    cargo run -p imds-controller -- {{ARGS}}

# Benchmarks: ratios measured side by side in one run (root for the netns part); writes docs/BENCHMARKS.md.
# `just bench --quick` takes about 80 s (6 interleaved rounds of 0.5 s per HTTP target).
bench *ARGS:
    # One cargo invocation for all three (they share most dependencies: one build graph, both cores busy).
    cargo build --release -p imds-proxy -p imds-conformance -p imds-bench --bins
    cargo run --release -p imds-bench -- {{ARGS}}

# Conformance power: imds-proxy built with its deliberate single defects (cargo feature `mutants`, own target
# directory, never shipped) judged by the catalogue on netns (root); writes docs/CONFORMANCE-POWER.md, exits 1
# when a defect survives its aimed case or the correct proxy fails one. `--aimed-only` is the fast subset,
# `--only a,b` picks defects, `--baseline-runs N` counts false failures of the correct proxy over N runs.
mutants *ARGS: build mutants-build
    target/debug/imds-mutants {{ARGS}}

# imds-proxy with its deliberate defects as target/debug/imds-proxy-mutants, then the shipped build back in
# place (one target directory: only imds-proxy itself is compiled twice).
mutants-build:
    cargo build -p imds-proxy --features mutants
    cp target/debug/imds-proxy target/debug/imds-proxy-mutants
    cargo build -p imds-proxy

# Fuzzing (issue 10): the control API with the IMDS routes (the real router, in process) and the query parser,
# INPUTS inputs per target (default 1,000,000), no panic allowed; prints inputs and time per target. Both
# targets run in parallel (two test threads); 1 M each took 9 min 13 s on a loaded 2-core machine (query parser
# 295 s, router 534 s; debug build). `cargo test` runs a short pass of each (seconds).
fuzz INPUTS="1000000":
    MOCK_IMDS_FUZZ_INPUTS={{INPUTS}} cargo test -p mock-imds --test fuzz -- --ignored --nocapture --test-threads 2

# Reliability soak, bounded (default 120 s of load; loopback, or `--backend netns` as root): hostile corpus,
# fixed-rate load with error counts and RSS samples, API server down/up and mock latency faults. Writes
# docs/RELIABILITY-figures-<backend>.md (linked from docs/RELIABILITY.md). `just soak --secs 60 --rate 100`.
soak *ARGS:
    cargo build -p imds-proxy -p imds-bench --bins
    target/debug/imds-soak {{ARGS}}
