//! Typed wrappers for the three tools the kind backend drives: [`Kind`], [`Kubectl`] and [`Docker`].
//!
//! Owns the exact command lines (flags, timeouts, stdin) and the parsing of their output. Every method
//! goes through a [`Runner`], so the same code runs for real ([`crate::process::SystemRunner`]) or against
//! a [`crate::process::Recorder`] in the snapshot tests. It knows nothing about cases or scenarios.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::process::{Runner, ToolCmd, ToolError, ToolOutput};

/// Timeout for quick queries (`get`, `label`, `exec` of a short command).
pub const QUICK: Duration = Duration::from_secs(60);
/// Timeout for `kind create cluster`.
pub const CREATE: Duration = Duration::from_secs(900);
/// Timeout for `kind load` and `kind delete`.
pub const SLOW: Duration = Duration::from_secs(300);

fn json_of(cmd: &ToolCmd, out: &ToolOutput) -> Result<Value, ToolError> {
    serde_json::from_slice(&out.stdout).map_err(|e| ToolError::Output {
        cmd: cmd.display(),
        message: format!("not JSON: {e}"),
    })
}

/// The `kubectl` resource argument for objects of `kind` in `obj_api_version` (`kind.group`, or `kind` for
/// the core group).
pub fn resource_arg(obj_api_version: &str, kind: &str) -> String {
    let kind = kind.to_ascii_lowercase();
    match obj_api_version.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}"),
        None => kind,
    }
}

/// `kind`.
#[derive(Clone)]
pub struct Kind {
    runner: Arc<dyn Runner>,
    bin: String,
}

impl Kind {
    /// The `kind` binary `bin` run by `runner`.
    pub fn new(runner: Arc<dyn Runner>, bin: impl Into<String>) -> Self {
        Kind {
            runner,
            bin: bin.into(),
        }
    }

    fn cmd(&self) -> ToolCmd {
        ToolCmd::new(&self.bin).timeout(QUICK)
    }

    /// `kind get clusters`.
    pub fn clusters(&self) -> Result<Vec<String>, ToolError> {
        let out = self.runner.check(&self.cmd().args(["get", "clusters"]))?;
        Ok(lines(&out))
    }

    /// `kind create cluster --name N --config C [--image I] --wait 180s`.
    pub fn create_cluster(
        &self,
        name: &str,
        config: &Path,
        node_image: Option<&str>,
    ) -> Result<(), ToolError> {
        let mut c = self
            .cmd()
            .args(["create", "cluster", "--name", name, "--config"])
            .arg(config.display().to_string())
            .args(["--wait", "180s"])
            .timeout(CREATE);
        if let Some(i) = node_image {
            c = c.args(["--image", i]);
        }
        self.runner.check(&c).map(|_| ())
    }

    /// `kind delete cluster --name N`.
    pub fn delete_cluster(&self, name: &str) -> Result<(), ToolError> {
        let c = self
            .cmd()
            .args(["delete", "cluster", "--name", name])
            .timeout(SLOW);
        self.runner.check(&c).map(|_| ())
    }

    /// `kind get nodes --name N` (container names = node names).
    pub fn nodes(&self, name: &str) -> Result<Vec<String>, ToolError> {
        let out = self
            .runner
            .check(&self.cmd().args(["get", "nodes", "--name", name]))?;
        let mut v = lines(&out);
        v.sort();
        Ok(v)
    }

    /// `kind load image-archive TAR --name N`.
    pub fn load_archive(&self, name: &str, tar: &Path) -> Result<(), ToolError> {
        let c = self
            .cmd()
            .args(["load", "image-archive"])
            .arg(tar.display().to_string())
            .args(["--name", name])
            .timeout(SLOW);
        self.runner.check(&c).map(|_| ())
    }

    /// `kind load docker-image IMAGE --name N`.
    pub fn load_image(&self, name: &str, image: &str) -> Result<(), ToolError> {
        let c = self
            .cmd()
            .args(["load", "docker-image", image, "--name", name])
            .timeout(SLOW);
        self.runner.check(&c).map(|_| ())
    }
}

fn lines(out: &ToolOutput) -> Vec<String> {
    out.stdout_text()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("No kind clusters"))
        .map(String::from)
        .collect()
}

/// `kubectl --context C`.
#[derive(Clone)]
pub struct Kubectl {
    runner: Arc<dyn Runner>,
    bin: String,
    context: String,
}

impl Kubectl {
    /// `kubectl` binary `bin` against kubeconfig context `context`.
    pub fn new(
        runner: Arc<dyn Runner>,
        bin: impl Into<String>,
        context: impl Into<String>,
    ) -> Self {
        Kubectl {
            runner,
            bin: bin.into(),
            context: context.into(),
        }
    }

    fn cmd(&self) -> ToolCmd {
        ToolCmd::new(&self.bin)
            .args(["--context", &self.context])
            .timeout(QUICK)
    }

    /// `kubectl apply --server-side --force-conflicts -f -` with `objects` as a JSON `List`.
    pub fn apply(&self, objects: &[Value]) -> Result<(), ToolError> {
        let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects });
        let c = self
            .cmd()
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=imds-conformance",
                "-f",
                "-",
            ])
            .stdin(list.to_string());
        self.runner.check(&c).map(|_| ())
    }

    /// `kubectl delete KIND NAME [-n NS] --ignore-not-found [--grace-period G --force] --wait=W`.
    pub fn delete(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        grace: Option<u32>,
        wait: bool,
    ) -> Result<(), ToolError> {
        let mut c = self.cmd().arg("delete");
        if let Some(ns) = namespace {
            c = c.args(["-n", ns]);
        }
        c = c.args([kind, name, "--ignore-not-found"]);
        if let Some(g) = grace {
            c = c.arg(format!("--grace-period={g}"));
            if g == 0 {
                c = c.arg("--force");
            }
        }
        c = c
            .arg(format!("--wait={wait}"))
            .timeout(Duration::from_secs(120));
        self.runner.check(&c).map(|_| ())
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<Value, ToolError> {
        let c = self
            .cmd()
            .arg("get")
            .args(args.iter().copied())
            .args(["-o", "json"]);
        let out = self.runner.check(&c)?;
        json_of(&c, &out)
    }

    /// `kubectl get --raw PATH` (API-server paths, pod proxies, `/metrics`).
    pub fn get_raw(&self, path: &str) -> Result<Vec<u8>, ToolError> {
        let c = self.cmd().args(["get", "--raw", path]);
        Ok(self.runner.check(&c)?.stdout)
    }

    /// `kubectl wait ARGS --timeout Ns`.
    pub fn wait(&self, args: &[&str], timeout: Duration) -> Result<(), ToolError> {
        let c = self
            .cmd()
            .arg("wait")
            .args(args.iter().copied())
            .arg(format!("--timeout={}s", timeout.as_secs()))
            .timeout(timeout + Duration::from_secs(15));
        self.runner.check(&c).map(|_| ())
    }

    /// `kubectl -n NS rollout status KIND/NAME --timeout Ns`.
    pub fn rollout_status(
        &self,
        namespace: &str,
        what: &str,
        timeout: Duration,
    ) -> Result<(), ToolError> {
        let c = self
            .cmd()
            .args(["-n", namespace, "rollout", "status", what])
            .arg(format!("--timeout={}s", timeout.as_secs()))
            .timeout(timeout + Duration::from_secs(15));
        self.runner.check(&c).map(|_| ())
    }

    /// `kubectl label node NODE KEY=VALUE --overwrite`, or `KEY-` to remove it (`value = None`).
    pub fn label_node(&self, node: &str, key: &str, value: Option<&str>) -> Result<(), ToolError> {
        let l = match value {
            Some(v) => format!("{key}={v}"),
            None => format!("{key}-"),
        };
        let c = self.cmd().args(["label", "node", node, &l, "--overwrite"]);
        self.runner.check(&c).map(|_| ())
    }

    /// `kubectl -n NS logs POD --tail N` (errors become the text).
    pub fn logs_tail(&self, namespace: &str, pod: &str, lines: u32) -> String {
        let c = self
            .cmd()
            .args(["-n", namespace, "logs", pod])
            .arg(format!("--tail={lines}"));
        match self.runner.run(&c) {
            Ok(o) if o.success() => o.stdout_text(),
            Ok(o) => format!("(kubectl logs failed: {})", o.stderr_text()),
            Err(e) => format!("(kubectl logs failed: {e})"),
        }
    }

    /// The command line of `kubectl exec [-i] -n NS POD [-c C] -- ARGV` (for streaming relays).
    pub fn exec_cmd(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        interactive: bool,
        argv: &[String],
    ) -> ToolCmd {
        let mut c = self.cmd().arg("exec");
        if interactive {
            c = c.arg("-i");
        }
        c = c.args(["-n", namespace, pod]);
        if let Some(ct) = container {
            c = c.args(["-c", ct]);
        }
        c.arg("--").args(argv.iter().cloned())
    }
}

/// `docker` (kind nodes are containers: node-level commands run with `docker exec`).
#[derive(Clone)]
pub struct Docker {
    runner: Arc<dyn Runner>,
    bin: String,
}

impl Docker {
    /// The `docker` binary `bin` run by `runner`.
    pub fn new(runner: Arc<dyn Runner>, bin: impl Into<String>) -> Self {
        Docker {
            runner,
            bin: bin.into(),
        }
    }

    /// The command line of `docker exec [-i] CONTAINER ARGV`.
    pub fn exec_cmd(&self, container: &str, interactive: bool, argv: &[String]) -> ToolCmd {
        let mut c = ToolCmd::new(&self.bin).arg("exec").timeout(QUICK);
        if interactive {
            c = c.arg("-i");
        }
        c.arg(container).args(argv.iter().cloned())
    }

    /// `docker exec CONTAINER ARGV`, whatever its exit code.
    pub fn exec(&self, container: &str, argv: &[String]) -> Result<ToolOutput, ToolError> {
        self.runner.run(&self.exec_cmd(container, false, argv))
    }

    /// `docker exec CONTAINER ARGV`, requiring exit 0.
    pub fn exec_check(&self, container: &str, argv: &[String]) -> Result<ToolOutput, ToolError> {
        self.runner.check(&self.exec_cmd(container, false, argv))
    }
}
