//! Can this machine run the netns backend? Checks root, the tools, and that a namespace with a veth pair,
//! iptables (nat table) and conntrack actually works — by building a throw-away probe namespace with our
//! prefix and removing it. The harness's `--backend auto` uses the reason string to SKIP loudly.
//! It touches nothing outside the probe namespace.

use std::time::Duration;

use super::{
    cleanup::{cleanup_prefix_blocking, new_run_prefix},
    cmd::run_blocking,
};

const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join(program);
            std::fs::metadata(&candidate).is_ok_and(|meta| {
                use std::os::unix::fs::PermissionsExt;
                meta.is_file() && meta.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// `Ok(())` when the netns backend can run here; otherwise the reason (for `SKIP: <reason>`).
pub fn netns_supported() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("network namespaces need Linux".into());
    }
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(format!(
            "not root (euid {euid}); network namespaces, iptables and conntrack need root"
        ));
    }
    let missing: Vec<&str> = [
        "ip",
        "iptables",
        "iptables-save",
        "iptables-restore",
        "conntrack",
    ]
    .into_iter()
    .filter(|tool| !on_path(tool))
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing tools: {} (apt-get install -y iproute2 iptables conntrack)",
            missing.join(", ")
        ));
    }
    // The probe carries our PID like any run prefix: a concurrent `sweep_stale` leaves it alone while we
    // live, and a later one removes it should we crash before the cleanup below.
    let probe = format!("{}-probe", new_run_prefix());
    let result = probe_namespace(&probe);
    let cleanup = cleanup_prefix_blocking(&probe);
    result?;
    cleanup.map_err(|err| format!("cannot remove the probe namespace: {err}"))
}

fn probe_namespace(probe: &str) -> Result<(), String> {
    let run = |what: &str, args: &[&str]| -> Result<(), String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        run_blocking("ip", &args, None, PROBE_TIMEOUT)
            .map(drop)
            .map_err(|err| format!("{what}: {err}"))
    };
    run("ip netns add", &["netns", "add", probe])?;
    run(
        "veth pair inside a namespace",
        &[
            "-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0",
        ],
    )?;
    run(
        "iptables (nat) inside a namespace",
        &["netns", "exec", probe, "iptables", "-t", "nat", "-S"],
    )?;
    run(
        "conntrack inside a namespace",
        &["netns", "exec", probe, "conntrack", "-L"],
    )?;
    Ok(())
}
