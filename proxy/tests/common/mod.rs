//! Shared fixture of the loopback integration tests: one mock IMDS (rate limits off), one test API server,
//! and the proxy in-process with its Kubernetes view pointed at that API server. "Pods" are distinct
//! 127.0.0.x source addresses; the host is 127.0.0.1. Every test builds its own fixture on random ports.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use imds_conformance::apiserver::ApiServer;
use imds_proxy::{Proxy, ProxyHandle, Settings};
use mock_imds::MockImds;
use mock_imds::config::UserAssignedIdentity;
use serde_json::{Value, json};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub const NODE: &str = "node-1";
pub const RESOURCE: &str = "https://management.azure.com/";
pub const AAI_API: &str = "aadpodidentity.k8s.io/v1";

pub struct Fixture {
    pub mock: MockImds,
    pub api: ApiServer,
    pub proxy: ProxyHandle,
    pub kubeconfig: tempfile::TempPath,
    /// The accounting key of the proxy's API client.
    pub client_key: String,
}

pub async fn mock() -> Result<MockImds, Box<dyn std::error::Error + Send + Sync>> {
    Ok(MockImds::builder()
        .seed(7)
        .rate_limits(false)
        .start()
        .await?)
}

/// A user-assigned identity on the mock VM, named `name`.
pub fn uami(n: u8, name: &str) -> UserAssignedIdentity {
    UserAssignedIdentity {
        client_id: format!("{n:02x}{n:02x}{n:02x}{n:02x}-1111-2222-3333-4444555566{n:02x}"),
        object_id: format!("{n:02x}{n:02x}{n:02x}{n:02x}-aaaa-bbbb-cccc-dddddddddd{n:02x}"),
        resource_id: format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        ),
        name: name.to_string(),
    }
}

impl Fixture {
    /// Starts mock, API server and proxy; `tweak` adjusts the proxy settings. Waits until the proxy is Active.
    pub async fn start(
        tweak: impl FnOnce(&mut Settings),
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mock = mock().await?;
        let api = ApiServer::start("127.0.0.1:0".parse()?).await?;
        Self::start_with(mock, api, tweak).await
    }

    pub async fn start_with(
        mock: MockImds,
        api: ApiServer,
        tweak: impl FnOnce(&mut Settings),
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let client_key = format!("proxy-{}", std::process::id());
        let file = tempfile::NamedTempFile::new()?;
        let kubeconfig = file.into_temp_path();
        api.write_kubeconfig(&kubeconfig, &client_key)?;
        let mut settings = Settings::for_tests(mock.addr(), NODE);
        settings.kubeconfig = Some(kubeconfig.to_path_buf());
        tweak(&mut settings);
        let proxy = Proxy::start(settings).await?;
        tokio::time::timeout(Duration::from_secs(20), proxy.ready()).await??;
        Ok(Self {
            mock,
            api,
            proxy,
            kubeconfig,
            client_key,
        })
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.proxy.addr(), path_and_query)
    }

    /// Creates a running pod on `node` with `ip`.
    pub fn pod(&self, name: &str, ip: &str, node: &str, labels: Value) -> TestResult {
        self.api
            .apply(pod_json(name, "default", ip, node, labels))?;
        Ok(())
    }

    /// Creates an AzureAssignedIdentity of `identity` for pod `default/pod` on `node` in `status`.
    pub fn aai(
        &self,
        pod: &str,
        identity: &UserAssignedIdentity,
        node: &str,
        status: &str,
    ) -> TestResult {
        self.api
            .apply(aai_json(pod, "default", identity, node, status, true))?;
        Ok(())
    }

    /// Polls until the proxy's view has the pod (bounded): the API server's watch delivers asynchronously.
    pub async fn wait_for_pod(&self, ip: &str) -> TestResult {
        let ip: IpAddr = ip.parse()?;
        for _ in 0..100 {
            if !self.proxy.view().pods_with_ip(ip).is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("pod with IP {ip} never reached the proxy's view").into())
    }

    /// Polls until the proxy sees `n` AAIs for pod `default/pod`.
    pub async fn wait_for_aais(&self, pod: &str, n: usize, status: &str) -> TestResult {
        for _ in 0..100 {
            let aais = self.proxy.view().assigned_identities_for("default", pod);
            if aais.len() == n && aais.iter().all(|a| a.status == status) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("AAIs of {pod} never reached {n} in {status}").into())
    }
}

pub fn pod_json(name: &str, ns: &str, ip: &str, node: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

pub fn aai_json(
    pod: &str,
    ns: &str,
    id: &UserAssignedIdentity,
    node: &str,
    status: &str,
    labelled: bool,
) -> Value {
    let labels = if labelled {
        json!({"nodename": node})
    } else {
        json!({})
    };
    json!({
        "apiVersion": AAI_API,
        "kind": "AzureAssignedIdentity",
        "metadata": {"name": format!("{pod}-{ns}-{}", id.name), "namespace": "default", "labels": labels},
        "spec": {
            "azureIdentityRef": {
                "metadata": {"name": id.name, "namespace": ns},
                "spec": {"type": 0, "resourceID": id.resource_id, "clientID": id.client_id}
            },
            "azureBindingRef": {"metadata": {"name": format!("{}-binding", id.name), "namespace": ns},
                                "spec": {"azureIdentity": id.name, "selector": id.name}},
            "pod": pod, "podNamespace": ns, "nodename": node, "replicas": 1
        },
        "status": {"status": status, "availableReplicas": 1}
    })
}

/// An HTTP client whose connections come from `ip` (a "pod").
pub fn client_from(ip: &str) -> Result<reqwest::Client, Box<dyn std::error::Error + Send + Sync>> {
    Ok(reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>()?)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// Sends a raw HTTP/1.1 request line (for paths reqwest would normalise, e.g. with `\`) from `from`.
pub async fn raw_get(
    from: &str,
    to: SocketAddr,
    target: &str,
    extra_headers: &str,
) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from.parse()?, 0))?;
    let mut stream = sock.connect(to).await?;
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n{extra_headers}\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Journal entries of the mock for `path` (exact).
pub fn journal_paths(mock: &MockImds) -> Vec<String> {
    mock.journal().into_iter().map(|e| e.path).collect()
}
