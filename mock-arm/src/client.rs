//! The small plain-http client mock-arm uses to reach other mocks: mock-imds's JWKS and its `/_mock/identities`
//! control API. Every call has a deadline and a bounded answer. It knows nothing about what it sends.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Deadline of one call (connect, send, read).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
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
    #[error("{method} {uri}: no answer within {CALL_TIMEOUT:?}")]
    Timeout { method: Method, uri: String },
}

/// A cheap-to-clone http/1.1 client.
#[derive(Debug, Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        connector.set_nodelay(true);
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// Sends `method uri` with an optional JSON body; the status and the body.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        json: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        if json.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let req = builder
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|source| ClientError::Request {
                uri: uri.to_string(),
                source,
            })?;
        let call = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|source| ClientError::Send {
                    method: method.clone(),
                    uri: uri.to_string(),
                    source,
                })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| ClientError::Read {
                    method: method.clone(),
                    uri: uri.to_string(),
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| ClientError::Timeout {
                method: method.clone(),
                uri: uri.to_string(),
            })?
    }
}
