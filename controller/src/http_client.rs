//! The one HTTP client the controller uses outside Kubernetes: to ARM, to Azure AD and to the node's IMDS.
//! https with the platform's roots plus an optional CA file (mock-arm's), http for IMDS. Every call has a
//! deadline and a bounded answer; the client knows nothing about what it sends.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Deadline of one call (connect, send, read the whole answer).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Why a call failed before an HTTP answer was read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("reading CA file {path}: {source}")]
    CaFile {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA file {path}: {source}")]
    CaCert { path: String, source: rustls::Error },
    #[error("no trusted CA certificates (neither the platform's nor --arm-ca-file)")]
    NoRoots,
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
    #[error("{method} {uri}: no complete answer within {CALL_TIMEOUT:?}")]
    Timeout { method: Method, uri: String },
}

/// An answer: status, headers, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A cheap-to-clone http/1.1 client (https or http).
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// Trusts the platform's roots and the PEM certificates in `extra_ca`.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, HttpError> {
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable platform certificates are skipped (as every rustls-native-certs user does).
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = extra_ca {
            let shown = path.display().to_string();
            for cert in CertificateDer::pem_file_iter(path).map_err(|source| HttpError::CaFile {
                path: shown.clone(),
                source,
            })? {
                let cert = cert.map_err(|source| HttpError::CaFile {
                    path: shown.clone(),
                    source,
                })?;
                roots.add(cert).map_err(|source| HttpError::CaCert {
                    path: shown.clone(),
                    source,
                })?;
            }
        }
        if roots.is_empty() {
            return Err(HttpError::NoRoots);
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|source| HttpError::CaCert {
            path: "(TLS configuration)".into(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(HttpClient {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        })
    }

    /// Sends `method uri` with `headers` and an optional body.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, HttpError> {
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, v);
        }
        let req = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|source| HttpError::Request {
                uri: uri.to_owned(),
                source,
            })?;
        let call = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|source| HttpError::Send {
                    method: method.clone(),
                    uri: uri.to_owned(),
                    source,
                })?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| HttpError::Read {
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
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| HttpError::Timeout {
                method: method.clone(),
                uri: uri.to_owned(),
            })?
    }
}
