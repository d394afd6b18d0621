//! The workspace's one outbound HTTP client, for programs that call a service they do not trust to answer
//! promptly: mock-arm (to mock-imds's JWKS and control API) and imds-controller (to ARM, Azure AD and the
//! node's IMDS). Every call has a deadline covering connect, send and reading the whole answer, and the answer
//! is read up to a bound; the client knows nothing about what it sends.
//!
//! [`Client::http`] speaks plain http only; [`Client::https`] speaks https (the platform's roots plus the PEM
//! certificates of an optional CA file, e.g. mock-arm's) and http. Both are http/1.1, cheap to clone and share
//! one connection pool per client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// How long a call may take and how much of an answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deadline of one call: connect, send, read the whole answer.
    pub call_timeout: Duration,
    /// Deadline of the TCP connect alone (at most `call_timeout` in effect).
    pub connect_timeout: Duration,
    /// Largest answer body read; a longer one is an error, not a truncated answer.
    pub max_answer_bytes: usize,
}

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Why a client could not be built (https only).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading CA file {path}: {source}")]
    CaFile {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA file {path}: {source}")]
    CaCert { path: String, source: rustls::Error },
    #[error("the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    #[error("no trusted CA certificates (neither the platform's nor a CA file)")]
    NoRoots,
}

/// Why a call failed before a whole HTTP answer was read.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("invalid request to {uri}: {source}")]
    Request { uri: String, source: http::Error },
    #[error("{method} {uri}: {source}")]
    Send {
        method: Method,
        uri: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("{method} {uri}: reading the answer: {message}")]
    Read {
        method: Method,
        uri: String,
        message: String,
    },
    #[error("{method} {uri}: no complete answer within {limit:?}")]
    Timeout {
        method: Method,
        uri: String,
        limit: Duration,
    },
}

/// An answer: status, headers, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A client that speaks https (and http); see [`Client::https`].
pub type HttpsClient = Client<HttpsConnector<HttpConnector>>;

/// A cheap-to-clone http/1.1 client over connector `C`.
#[derive(Debug, Clone)]
pub struct Client<C = HttpConnector> {
    inner: HyperClient<C, Full<Bytes>>,
    limits: Limits,
}

fn tcp(limits: &Limits) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(limits.connect_timeout.min(limits.call_timeout)));
    http.set_nodelay(true);
    http
}

fn pooled<C: Connect + Clone + Send + Sync + 'static>(connector: C, limits: Limits) -> Client<C> {
    Client {
        inner: HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector),
        limits,
    }
}

impl Client<HttpConnector> {
    /// A plain-http client.
    pub fn http(limits: Limits) -> Self {
        let mut connector = tcp(&limits);
        connector.enforce_http(true);
        pooled(connector, limits)
    }
}

impl Client<HttpsConnector<HttpConnector>> {
    /// An https-or-http client trusting the platform's roots and the PEM certificates in `extra_ca`.
    /// Unreadable platform certificates are skipped (as every rustls-native-certs user does); an unreadable
    /// or invalid `extra_ca` is an error.
    pub fn https(limits: Limits, extra_ca: Option<&Path>) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            let shown = path.display().to_string();
            let file_error = |source| TlsError::CaFile {
                path: shown.clone(),
                source,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(file_error)? {
                roots
                    .add(cert.map_err(file_error)?)
                    .map_err(|source| TlsError::CaCert {
                        path: shown.clone(),
                        source,
                    })?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp(&limits));
        Ok(pooled(connector, limits))
    }
}

impl<C: Connect + Clone + Send + Sync + 'static> Client<C> {
    /// This client's limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Sends `method uri` with `headers` and an optional body; the whole answer within the limits.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, CallError> {
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| CallError::Request {
                uri: uri.to_owned(),
                source,
            })?;
        let call = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|source| CallError::Send {
                    method: method.clone(),
                    uri: uri.to_owned(),
                    source,
                })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, self.limits.max_answer_bytes)
                .collect()
                .await
                .map_err(|e| CallError::Read {
                    method: method.clone(),
                    uri: uri.to_owned(),
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.limits.call_timeout, call)
            .await
            .map_err(|_| CallError::Timeout {
                method: method.clone(),
                uri: uri.to_owned(),
                limit: self.limits.call_timeout,
            })?
    }
}

#[cfg(test)]
mod tests;
