//! [`Ctx`]: what a case body gets. The case API, documented here for catalogue authors.
//!
//! Owns request tagging, journal look-ups, pod roles, and the bookkeeping that lets the runner restore the
//! cluster after a case changed it. It reaches the world only through [`Backend`].
//!
//! Writing a case (see `catalog/header.rs` for complete examples):
//! - pick pods by role: [`Ctx::identity_pod`] (non-host pod with an Assigned identity),
//!   [`Ctx::plain_pod`] (non-host pod with no identity), [`Ctx::host_pod`] (host network);
//!   a missing role is a SKIP (`let Some(p) = ctx.plain_pod() else { return Outcome::skip(..) }`).
//! - send: [`Ctx::send`] as a pod to `Target::Imds` (what the pod sees at 169.254.169.254:80); every request
//!   gets a unique `x-ms-client-request-id` tag, returned in [`Sent::tag`], so the journal of the VM's mock
//!   ([`Ctx::journal_since`], [`Ctx::tagged`]) tells whether *that* request reached IMDS.
//! - change the cluster: [`Ctx::apply`] / [`Ctx::delete`] (the runner restores the scenario's baseline after
//!   the case), [`Ctx::set_api_available`], [`Ctx::set_api_hung`], [`Ctx::set_api_partitioned`],
//!   [`Ctx::api_load`] and [`Ctx::api_list`] for the API server.
//! - drive the interceptor: `ctx.backend.stop_interceptor(node, true)`, `start_interceptor(node)`;
//!   kernel tables: `ctx.backend.exec(node, argv)` (netns only; loopback returns Unsupported).
//! - conclude: `Outcome::Pass`, `Outcome::fail(expected, observed)`, `Outcome::skip(reason)`,
//!   `Outcome::info(note)`. The runner prefixes FAIL messages with the case id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::backend::JournalEntryExt as _;
use crate::backend::{
    ApiLoad, Backend, ClusterApi, JournalEntry, ObjectRef, PodView, Target, World,
};
use crate::case::Feature;
use crate::cluster;
use crate::http::{Conn, Request, Response, SendError};
use crate::scenario::{IdentityDef, Scenario};

/// Header carrying the harness's per-request tag (cloud-init and the SDKs send it; IMDS journals keep it).
pub const TAG_HEADER: &str = "x-ms-client-request-id";

/// Resource used in token requests.
pub const RESOURCE: &str = "https://management.azure.com/";

/// Default per-request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A token request target for `resource` with extra query (`&client_id=...`).
pub fn token_target(extra: &str) -> String {
    format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F{extra}"
    )
}

/// The instance metadata target.
pub const INSTANCE: &str = "/metadata/instance?api-version=2021-02-01";

/// A request that was sent: its tag and what came back.
#[derive(Debug)]
pub struct Sent {
    /// The `x-ms-client-request-id` it carried.
    pub tag: String,
    /// The response, or why there was none.
    pub result: Result<Response, SendError>,
}

impl Sent {
    /// `"<status> <body>"` or the error, for FAIL messages.
    pub fn summary(&self) -> String {
        match &self.result {
            Ok(r) => r.summary(),
            Err(e) => format!("no response ({e})"),
        }
    }

    /// The status, if there was a response.
    pub fn status(&self) -> Option<u16> {
        self.result.as_ref().ok().map(|r| r.status)
    }

    /// The response, if any.
    pub fn response(&self) -> Option<&Response> {
        self.result.as_ref().ok()
    }
}

/// The context of one run, lent to each case in turn.
pub struct Ctx {
    /// The environment.
    pub backend: Arc<dyn Backend>,
    /// The scenario being run.
    pub scenario: Scenario,
    /// Features the interceptor claims.
    pub claimed: BTreeSet<Feature>,
    /// Real IMDS base URL for the IMDS fidelity cases (`--imds-url`); `None` = the node's mock.
    pub imds_url: Option<String>,
    /// The SDK area's clients (`--sdk-clients`, `--sdk-timeout`); `None`: the SDK cases SKIP.
    pub sdk: Option<crate::catalog::sdk::SdkClients>,
    run_id: String,
    counter: u64,
    dirty: bool,
    created: Vec<Value>,
    touched_interceptor: bool,
    /// A case hung the API server or cut the nodes off from it: the runner waits for recovery afterwards.
    api_outage: bool,
}

impl Ctx {
    /// A context over a started backend.
    pub fn new(
        backend: Arc<dyn Backend>,
        scenario: Scenario,
        claimed: BTreeSet<Feature>,
        run_id: impl Into<String>,
    ) -> Self {
        Ctx {
            backend,
            scenario,
            claimed,
            imds_url: None,
            sdk: None,
            run_id: run_id.into(),
            counter: 0,
            dirty: false,
            created: Vec::new(),
            touched_interceptor: false,
            api_outage: false,
        }
    }

    /// Nodes and pods.
    pub fn world(&self) -> &World {
        self.backend.world()
    }

    /// The cluster's API server.
    pub fn api(&self) -> &dyn ClusterApi {
        self.backend.api()
    }

    /// Whether the interceptor claims `f`.
    pub fn claims(&self, f: Feature) -> bool {
        self.claimed.contains(&f)
    }

    /// A fresh request tag.
    pub fn next_tag(&mut self) -> String {
        self.counter += 1;
        format!("{}-{:04}", self.run_id, self.counter)
    }

    /// Sends `req` from `from` (pod or node name) to `to` on a fresh connection, tagged.
    pub async fn send(&mut self, from: &str, to: Target, req: Request) -> Sent {
        self.send_timeout(from, to, req, Duration::from_secs(5), REQUEST_TIMEOUT)
            .await
    }

    /// [`Ctx::send`] with explicit connect and response timeouts.
    pub async fn send_timeout(
        &mut self,
        from: &str,
        to: Target,
        mut req: Request,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Sent {
        let tag = self.next_tag();
        if !req
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(TAG_HEADER))
        {
            req.headers.push((TAG_HEADER.into(), tag.clone()));
        }
        let result = match self.backend.connect(from, to, connect_timeout).await {
            Ok(stream) => {
                let mut conn = Conn::new(stream, self.backend.host_header(to));
                conn.send(&req, false, timeout).await
            }
            Err(e) => Err(e),
        };
        Sent { tag, result }
    }

    /// Opens a keep-alive connection (conntrack cases send several requests over it).
    pub async fn open(&mut self, from: &str, to: Target) -> Result<Conn, SendError> {
        let stream = self
            .backend
            .connect(from, to, Duration::from_secs(5))
            .await?;
        Ok(Conn::new(stream, self.backend.host_header(to)))
    }

    /// Sends a tagged request over an open connection, keeping it alive.
    pub async fn send_on(&mut self, conn: &mut Conn, mut req: Request) -> Sent {
        let tag = self.next_tag();
        req.headers.push((TAG_HEADER.into(), tag.clone()));
        let result = conn.send(&req, true, REQUEST_TIMEOUT).await;
        Sent { tag, result }
    }

    /// Sends to the IMDS under fidelity test: `--imds-url` when given, else the first node's mock directly.
    pub async fn send_imds(&mut self, req: Request) -> Sent {
        let Some(url) = self.imds_url.clone() else {
            let node = self.world().nodes[0].name.clone();
            return self.send(&node, Target::DirectImds, req).await;
        };
        let mut req = req;
        let tag = self.next_tag();
        req.headers.push((TAG_HEADER.into(), tag.clone()));
        let mut hostport = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        if !hostport.contains(':') {
            hostport.push_str(":80");
        }
        let result = match tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(hostport.as_str()),
        )
        .await
        {
            Ok(Ok(s)) => {
                let host = hostport.split(':').next().unwrap_or_default().to_string();
                Conn::new(s, host).send(&req, false, REQUEST_TIMEOUT).await
            }
            Ok(Err(e)) => Err(SendError::from_connect(&e)),
            Err(_) => Err(SendError::ConnectTimeout),
        };
        Sent { tag, result }
    }

    /// The journal of `node`'s mock (empty on error: the case then sees "not found", and the error is
    /// visible in the FAIL message through [`Ctx::journal_error`]).
    pub async fn journal(&self, node: &str) -> Vec<JournalEntry> {
        self.backend.journal(node).await.unwrap_or_default()
    }

    /// The sequence number the next journal entry of `node` will carry (a mark for [`Ctx::journal_since`]).
    /// Sequence numbers start at 0, so an empty journal's mark is 0 and its first entry is after it.
    pub async fn journal_mark(&self, node: &str) -> u64 {
        self.journal(node)
            .await
            .iter()
            .map(|e| e.seq + 1)
            .max()
            .unwrap_or(0)
    }

    /// Journal entries of `node` recorded at or after `mark`.
    pub async fn journal_since(&self, node: &str, mark: u64) -> Vec<JournalEntry> {
        self.journal(node)
            .await
            .into_iter()
            .filter(|e| e.seq >= mark)
            .collect()
    }

    /// Journal entries of `node` carrying `tag`.
    pub async fn tagged(&self, node: &str, tag: &str) -> Vec<JournalEntry> {
        self.journal(node)
            .await
            .into_iter()
            .filter(|e| e.header(TAG_HEADER) == Some(tag))
            .collect()
    }

    /// Journal read error of `node`, if any (for messages).
    pub async fn journal_error(&self, node: &str) -> Option<String> {
        self.backend
            .journal(node)
            .await
            .err()
            .map(|e| e.to_string())
    }

    /// Applies an object (create or replace) and remembers to restore the baseline after the case.
    pub async fn apply(&mut self, obj: Value) -> Result<(), String> {
        self.dirty = true;
        self.created.push(obj.clone());
        self.api().apply(obj).await.map_err(|e| e.to_string())
    }

    /// Deletes an object and remembers to restore the baseline after the case.
    pub async fn delete(&mut self, obj: &Value) -> Result<(), String> {
        self.dirty = true;
        self.api().delete(obj).await.map_err(|e| e.to_string())
    }

    /// Takes the API server down or back up (restored to up after the case).
    pub async fn set_api_available(&mut self, available: bool) -> Result<(), String> {
        self.dirty = true;
        self.api()
            .set_available(available)
            .await
            .map_err(|e| e.to_string())
    }

    /// Hangs the API server (connections accepted, nothing answered, watches silent) or resumes it
    /// (resumed after the case).
    pub async fn set_api_hung(&mut self, hung: bool) -> Result<(), String> {
        self.dirty = true;
        self.api_outage |= hung;
        self.api().set_hung(hung).await.map_err(|e| e.to_string())
    }

    /// Cuts every node off from the API server (packets dropped both ways) or heals the cut (healed after
    /// the case).
    pub async fn set_api_partitioned(&mut self, partitioned: bool) -> Result<(), String> {
        self.dirty = true;
        self.api_outage |= partitioned;
        self.backend
            .set_api_partitioned(partitioned)
            .await
            .map_err(|e| e.to_string())
    }

    /// The API server's load figures.
    pub async fn api_load(&self) -> Result<ApiLoad, String> {
        self.api().load().await.map_err(|e| e.to_string())
    }

    /// Objects of a kind in the cluster (every namespace); empty when the list fails.
    pub async fn api_list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        self.api().list(api_version, kind).await.unwrap_or_default()
    }

    /// Notes that the case stopped, restarted or tampered with an interceptor.
    pub fn touched_interceptor(&mut self) {
        self.touched_interceptor = true;
    }

    /// Restores the scenario's baseline objects (runner, after a case changed the cluster) and brings
    /// every interceptor back if a case stopped one.
    pub async fn restore(&mut self) -> Result<(), String> {
        if self.dirty {
            // Not every backend can take its API server down; then there is nothing to bring back.
            let _ = self.api().set_available(true).await;
            let _ = self.api().set_hung(false).await;
            let _ = self.backend.set_api_partitioned(false).await;
            let baseline = cluster::baseline_objects(&self.scenario, self.world());
            let keys: BTreeSet<_> = baseline.iter().map(ObjectRef::of).collect();
            for obj in std::mem::take(&mut self.created) {
                let key = ObjectRef::of(&obj);
                if !keys.contains(&key) {
                    // Already deleted by the case is fine.
                    let _ = self.api().delete(&obj).await;
                }
            }
            for obj in baseline {
                self.api().apply(obj).await.map_err(|e| e.to_string())?;
            }
            self.dirty = false;
            // Give watchers a moment to see the restored objects before the next case.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if std::mem::take(&mut self.api_outage) {
                self.await_recovery().await;
            }
        }
        if self.touched_interceptor {
            self.touched_interceptor = false;
            let nodes: Vec<String> = self.world().nodes.iter().map(|n| n.name.clone()).collect();
            for n in nodes {
                if !self.backend.interceptor_running(&n).await {
                    self.backend
                        .start_interceptor(&n)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// After a hang or partition an interceptor that failed closed needs a moment to re-sync: wait (at most
    /// 30 s) until the identity pod is served again, so the next case does not see the outage's refusals.
    /// Without an identity pod there is nothing to observe; then wait a fixed 5 s.
    async fn await_recovery(&mut self) {
        match self.identity_pod() {
            Some(pod) => {
                let _ = self
                    .poll_token(&pod.name, "", Duration::from_secs(30))
                    .await;
            }
            None => tokio::time::sleep(Duration::from_secs(5)).await,
        }
    }

    /// Identities assigned to `pod` in a serving state (`Assigned` or legacy `""`) and known to the VM.
    pub fn identities_of(&self, pod: &str) -> Vec<&IdentityDef> {
        self.scenario
            .identities
            .iter()
            .filter(|id| {
                id.on_vm
                    && id.assigned_to.iter().any(|a| {
                        a.pod == pod
                            && (a.state == "Assigned" || a.state.is_empty())
                            && !a.unlabeled
                    })
            })
            .collect()
    }

    fn has_any_assignment(&self, pod: &str) -> bool {
        self.scenario
            .identities
            .iter()
            .any(|id| id.assigned_to.iter().any(|a| a.pod == pod))
    }

    /// A non-host pod on the first node with at least one served identity.
    pub fn identity_pod(&self) -> Option<PodView> {
        let first = &self.world().nodes.first()?.name;
        self.world()
            .pods
            .iter()
            .find(|p| {
                &p.node == first && !p.host_network && !self.identities_of(&p.name).is_empty()
            })
            .cloned()
    }

    /// Non-host pods on the first node with no AzureAssignedIdentity at all.
    pub fn plain_pods(&self) -> Vec<PodView> {
        let Some(first) = self.world().nodes.first().map(|n| n.name.clone()) else {
            return Vec::new();
        };
        self.world()
            .pods
            .iter()
            .filter(|p| p.node == first && !p.host_network && !self.has_any_assignment(&p.name))
            .cloned()
            .collect()
    }

    /// The first non-host pod on the first node with no identity.
    pub fn plain_pod(&self) -> Option<PodView> {
        self.plain_pods().into_iter().next()
    }

    /// A host-network pod on `node` (or the node itself, as a node process).
    pub fn host_pod(&self, node: &str) -> String {
        self.world()
            .pods
            .iter()
            .find(|p| p.node == node && p.host_network)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| node.to_string())
    }

    /// The first node's name.
    pub fn first_node(&self) -> String {
        self.world()
            .nodes
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_default()
    }

    /// Value of a built-in interceptor flag in the scenario (`--name=value` or `--name value`).
    pub fn flag(&self, name: &str) -> Option<String> {
        let flags = &self.scenario.interceptor.flags;
        let long = format!("--{name}");
        for (i, f) in flags.iter().enumerate() {
            if let Some(v) = f.strip_prefix(&format!("{long}=")) {
                return Some(v.to_string());
            }
            if f == &long {
                return flags
                    .get(i + 1)
                    .filter(|v| !v.starts_with("--"))
                    .cloned()
                    .or(Some("true".into()));
            }
        }
        None
    }

    /// Sends a token request (with `extra` query, e.g. `&client_id=...`) as `pod` to IMDS.
    pub async fn send_token(&mut self, pod: &str, extra: &str) -> Sent {
        self.send(
            pod,
            Target::Imds,
            Request::get(token_target(extra)).metadata(),
        )
        .await
    }

    /// Polls `pod`'s token request (with `extra` query) until it is answered 200 or `timeout` passes;
    /// returns the last attempt.
    pub async fn poll_token(&mut self, pod: &str, extra: &str, timeout: Duration) -> Sent {
        let req = Request::get(token_target(extra)).metadata();
        self.poll(pod, &req, timeout, |s| s.status() == Some(200))
            .await
    }

    /// A numeric built-in interceptor flag of the scenario, or `default` when absent or not a number.
    pub fn flag_u64(&self, name: &str, default: u64) -> u64 {
        self.flag(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Sends `req` as `pod` until `done(response)` holds or `timeout` passes; returns the last attempt.
    /// For waiting on watch propagation (an applied AAI reaches the interceptor within ~1 s).
    pub async fn poll<F>(&mut self, pod: &str, req: &Request, timeout: Duration, done: F) -> Sent
    where
        F: Fn(&Sent) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.send(pod, Target::Imds, req.clone()).await;
            if done(&s) || tokio::time::Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The client id a token was issued for, read from its claims (`appid`, else `oid`-independent `xms_mirid`).
pub fn token_client_id(resp: &Response) -> Option<String> {
    let body = resp.json()?;
    let tok = match &body {
        Value::Array(a) => a.first()?.get("access_token")?.as_str()?.to_string(),
        Value::Object(o) => o
            .get("access_token")
            .or_else(|| o.get("token").and_then(|t| t.get("access_token")))?
            .as_str()?
            .to_string(),
        _ => return None,
    };
    let claims = crate::http::jwt_claims(&tok)?;
    claims
        .get("appid")
        .or_else(|| claims.get("azp"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}
