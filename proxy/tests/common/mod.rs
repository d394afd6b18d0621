//! Shared fixture of the loopback integration tests: one mock IMDS (rate limits off), one test API server,
//! and the proxy in-process with its Kubernetes view pointed at that API server. "Pods" are distinct
//! 127.0.0.x source addresses; the host is 127.0.0.1. Every test builds its own fixture on random ports.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use imds_proxy::{Proxy, ProxyHandle, Settings};
use kube_test_apiserver::ApiServer;
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
        eventually(
            &format!("pod with IP {ip} reaching the proxy's view"),
            || !self.proxy.view().pods_with_ip(ip).is_empty(),
        )
        .await
    }

    /// Polls until the proxy sees `n` AAIs for pod `default/pod`.
    pub async fn wait_for_aais(&self, pod: &str, n: usize, status: &str) -> TestResult {
        eventually(&format!("AAIs of {pod} reaching {n} in {status}"), || {
            let aais = self.proxy.view().assigned_identities_for("default", pod);
            aais.len() == n && aais.iter().all(|a| a.status == status)
        })
        .await
    }

    /// A token request (`token_path(extra)`) from `c` with `Metadata: true`.
    pub async fn token(
        &self,
        c: &reqwest::Client,
        extra: &str,
    ) -> reqwest::Result<reqwest::Response> {
        get_md(c, self.url(&token_path(extra))).await
    }

    /// [`raw_get`] of `target` from `from` to the proxy with `Metadata: true`.
    pub async fn raw_md(
        &self,
        from: &str,
        target: &str,
    ) -> Result<(u16, String), Box<dyn std::error::Error + Send + Sync>> {
        raw_get(from, self.proxy.addr(), target, "Metadata: true\r\n").await
    }

    /// Repeats `token(c, "")` (at most `tries` times, `interval` apart) until it gets 200; returns the
    /// last status. For state the proxy reaches asynchronously (watch events, recovery after an outage).
    pub async fn token_status_until_ok(
        &self,
        c: &reqwest::Client,
        tries: u32,
        interval: Duration,
    ) -> Result<u16, reqwest::Error> {
        let mut status = 0;
        for _ in 0..tries {
            status = self.token(c, "").await?.status().as_u16();
            if status == 200 {
                break;
            }
            tokio::time::sleep(interval).await;
        }
        Ok(status)
    }
}

/// Polls `done` (100 times, 50 ms apart); an error naming `what` if it never holds.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) -> TestResult {
    for _ in 0..100 {
        if done() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no {what} within 5 s").into())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The token path for [`RESOURCE`] with `extra` (`&client_id=...`) appended.
pub fn token_path(extra: &str) -> String {
    format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}{extra}",
        urlencode(RESOURCE)
    )
}

/// The `&client_id=` parameter naming `id`.
pub fn client_id(id: &UserAssignedIdentity) -> String {
    format!("&client_id={}", id.client_id)
}

/// `GET url` from `c` with `headers`.
pub async fn get_with(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    headers: &[(&str, &str)],
) -> reqwest::Result<reqwest::Response> {
    headers
        .iter()
        .fold(c.get(url), |rb, (k, v)| rb.header(*k, *v))
        .send()
        .await
}

/// `GET url` from `c` with `Metadata: true`.
pub async fn get_md(
    c: &reqwest::Client,
    url: impl reqwest::IntoUrl,
) -> reqwest::Result<reqwest::Response> {
    get_with(c, url, &[("Metadata", "true")]).await
}

/// Header `name` of `resp` as text (None when absent or not visible ASCII).
pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
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
