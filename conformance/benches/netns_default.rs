//! Benchmark (not a test): wall time of the full default profile (nmi-default scenario, built-in
//! interceptor) on the netns backend, set-up and teardown included. Target: ≤ 30 s on 2 cores.
//! Run as root after `cargo build -p imds-proxy`: `cargo bench -p imds-conformance --bench netns_default`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn main() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_imds-conformance"));
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: netns_default benchmark needs root");
        return;
    }
    let proxy = bin.with_file_name("imds-proxy");
    if !proxy.is_file() {
        eprintln!("SKIP: imds-proxy not built next to {}", bin.display());
        return;
    }
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/nmi-default.yaml");
    let start = Instant::now();
    let out = Command::new(&bin)
        .args(["run", "--backend", "netns", "--quiet", "--scenario"])
        .arg(&scenario)
        .env("IMDS_PROXY_BIN", &proxy)
        .output()
        .expect("running imds-conformance");
    let took = start.elapsed();
    println!(
        "netns nmi-default full profile: {:.1} s wall (exit {:?}; set-up and teardown included)",
        took.as_secs_f64(),
        out.status.code()
    );
}
