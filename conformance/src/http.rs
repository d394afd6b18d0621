//! A deliberately raw HTTP/1.1 client for pods.
//!
//! Owns the bytes the harness puts on the wire and the parsing of what comes back. Conformance needs to
//! send requests no well-behaved client library would send unchanged (`//metadata/instance`,
//! `/metadata/%69nstance`, duplicate headers, header names in any case), and to tell a connect timeout from
//! a reset from a refusal (AKS restriction and conntrack cases). So the request line and headers are written
//! exactly as given, and the response is parsed with `httparse` (the parser hyper uses). It does not know
//! which namespace or source address a connection comes from: backends hand it a connected stream.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound on a response we are willing to buffer (IMDS documents are a few KiB).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// A request as bytes-to-be: method, raw target (path + query, sent verbatim) and ordered headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Request target exactly as it goes on the wire, e.g. `/metadata/instance?api-version=2021-02-01`.
    pub target: String,
    /// Headers in order; names are sent with the case given.
    pub headers: Vec<(String, String)>,
    /// Body (a `Content-Length` header is added when non-empty).
    pub body: Vec<u8>,
}

impl Request {
    /// A GET with no headers.
    pub fn get(target: impl Into<String>) -> Self {
        Request {
            method: "GET".into(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A request with another method.
    pub fn method(method: &str, target: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            ..Request::get(target)
        }
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds `Metadata: true`.
    pub fn metadata(self) -> Self {
        self.header("Metadata", "true")
    }

    /// Sets a JSON body.
    pub fn json_body(mut self, body: &serde_json::Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.headers
            .push(("Content-Type".into(), "application/json".into()));
        self
    }

    /// The bytes written to the socket.
    pub fn to_bytes(&self, host: &str, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\n",
            self.method, self.target
        );
        for (k, v) in &self.headers {
            out.push_str(k);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        if !self.body.is_empty() || self.method == "POST" || self.method == "PUT" {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in arrival order.
    pub headers: Vec<(String, String)>,
    /// Body after de-chunking.
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `"<status> <first 160 chars of body>"`, for FAIL messages.
    pub fn summary(&self) -> String {
        let text = self.text();
        let short: String = text.trim_end().chars().take(160).collect();
        if short.is_empty() {
            format!("{}", self.status)
        } else {
            format!("{} {short:?}", self.status)
        }
    }
}

/// Why no response was obtained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// TCP connect did not complete in time (a DROP rule).
    #[error("connect timed out")]
    ConnectTimeout,
    /// Connection refused (RST on SYN).
    #[error("connection refused")]
    Refused,
    /// Connection reset or closed before a full response.
    #[error("connection reset: {0}")]
    Reset(String),
    /// The response did not arrive in time.
    #[error("response timed out")]
    ResponseTimeout,
    /// The response could not be parsed.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// Anything else (namespace entry, socket creation...).
    #[error("{0}")]
    Other(String),
}

impl SendError {
    /// Classifies a connect error.
    pub fn from_connect(err: &std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::ConnectionRefused => SendError::Refused,
            std::io::ErrorKind::TimedOut => SendError::ConnectTimeout,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                SendError::Reset(err.to_string())
            }
            _ => SendError::Other(err.to_string()),
        }
    }
}

/// One client connection (keep-alive capable).
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Conn {
    /// Wraps a connected stream; `host` is the Host header to send (e.g. `169.254.169.254`).
    pub fn new(stream: TcpStream, host: impl Into<String>) -> Self {
        Conn {
            stream,
            host: host.into(),
            buf: Vec::new(),
        }
    }

    /// Sends one request and reads one response. `keep_alive = false` adds `Connection: close`.
    pub async fn send(
        &mut self,
        req: &Request,
        keep_alive: bool,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        let bytes = req.to_bytes(&self.host, keep_alive);
        match tokio::time::timeout(timeout, self.exchange(&bytes, req.method == "HEAD")).await {
            Ok(r) => r,
            Err(_) => Err(SendError::ResponseTimeout),
        }
    }

    async fn exchange(&mut self, bytes: &[u8], head: bool) -> Result<Response, SendError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| SendError::Reset(e.to_string()))?;
        loop {
            if let Some((resp, used)) = parse_response(&self.buf, head)? {
                self.buf.drain(..used);
                return Ok(resp);
            }
            if self.buf.len() > MAX_RESPONSE {
                return Err(SendError::Malformed("response larger than 4 MiB".into()));
            }
            let mut chunk = [0u8; 8192];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| SendError::Reset(e.to_string()))?;
            if n == 0 {
                // EOF: a body delimited by connection close is complete now.
                return match parse_response_eof(&self.buf)? {
                    Some(resp) => {
                        self.buf.clear();
                        Ok(resp)
                    }
                    None => Err(SendError::Reset(
                        "connection closed before a complete response".into(),
                    )),
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Header block parsed: status, headers, header length.
type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(buf: &[u8]) -> Result<Option<Head>, SendError> {
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.unwrap_or(0);
            let hs = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Ok(Some((status, hs, len)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(SendError::Malformed(e.to_string())),
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Parses a complete response out of `buf`, returning it and the bytes consumed; `None` if incomplete.
fn parse_response(buf: &[u8], head_only: bool) -> Result<Option<(Response, usize)>, SendError> {
    let Some((status, headers, hlen)) = parse_head(buf)? else {
        return Ok(None);
    };
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        return Ok(Some((
            Response {
                status,
                headers,
                body: Vec::new(),
            },
            hlen,
        )));
    }
    let chunked = header_of(&headers, "transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    if chunked {
        return match dechunk(&buf[hlen..])? {
            Some((body, used)) => Ok(Some((
                Response {
                    status,
                    headers,
                    body,
                },
                hlen + used,
            ))),
            None => Ok(None),
        };
    }
    if let Some(cl) = header_of(&headers, "content-length") {
        let len: usize = cl
            .trim()
            .parse()
            .map_err(|_| SendError::Malformed(format!("bad content-length {cl:?}")))?;
        if buf.len() >= hlen + len {
            let body = buf[hlen..hlen + len].to_vec();
            return Ok(Some((
                Response {
                    status,
                    headers,
                    body,
                },
                hlen + len,
            )));
        }
        return Ok(None);
    }
    // Delimited by close: only complete at EOF.
    Ok(None)
}

fn parse_response_eof(buf: &[u8]) -> Result<Option<Response>, SendError> {
    let Some((status, headers, hlen)) = parse_head(buf)? else {
        return Ok(None);
    };
    if header_of(&headers, "content-length").is_some()
        || header_of(&headers, "transfer-encoding").is_some()
    {
        // Framed but truncated.
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        headers,
        body: buf[hlen..].to_vec(),
    }))
}

/// Decodes a chunked body; `None` when more bytes are needed.
fn dechunk(mut buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, SendError> {
    let start_len = buf.len();
    let mut body = Vec::new();
    loop {
        let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_str = String::from_utf8_lossy(&buf[..line_end]);
        let size_hex = size_str.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| SendError::Malformed(format!("bad chunk size {size_hex:?}")))?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            // Skip trailers up to the empty line.
            loop {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                buf = &buf[end + 2..];
                if end == 0 {
                    return Ok(Some((body, start_len - buf.len())));
                }
            }
        }
        if buf.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

/// Returns the payload (claims) of a JWT without verifying it: the harness only reads which identity a
/// token belongs to; signature verification is mock-imds's own test suite's business.
pub fn jwt_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (r1, used) = parse_response(raw, false).unwrap().unwrap();
        assert_eq!((r1.status, r1.body.as_slice()), (200, &b"hi"[..]));
        let (r2, used2) = parse_response(&raw[used..], false).unwrap().unwrap();
        assert_eq!((r2.status, r2.body.as_slice()), (404, &b"abcde"[..]));
        assert_eq!(used + used2, raw.len());
    }

    #[test]
    fn incomplete_is_none() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi";
        assert!(parse_response(raw, false).unwrap().is_none());
        assert!(parse_response_eof(raw).unwrap().is_none());
    }

    #[test]
    fn request_bytes_are_verbatim() {
        let r = Request::get("//metadata/./instance?a=1").header("metadata", "True");
        let s = String::from_utf8(r.to_bytes("169.254.169.254", false)).unwrap();
        assert!(s.starts_with("GET //metadata/./instance?a=1 HTTP/1.1\r\n"));
        assert!(s.contains("\r\nmetadata: True\r\n"));
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = parse_response(&bytes, false);
            let _ = parse_response_eof(&bytes);
        }

        #[test]
        fn framed_bodies_round_trip(status in proptest::sample::select(vec![200u16, 201, 400, 403, 404, 405, 500, 503]), body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), chunk in 1usize..64) {
            let mut cl = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            cl.extend_from_slice(&body);
            let (r, used) = parse_response(&cl, false).unwrap().unwrap();
            proptest::prop_assert_eq!(used, cl.len());
            proptest::prop_assert_eq!(&r.body, &body);
            let mut ch = format!("HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
            for part in body.chunks(chunk) {
                ch.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                ch.extend_from_slice(part);
                ch.extend_from_slice(b"\r\n");
            }
            ch.extend_from_slice(b"0\r\n\r\n");
            let (r, used) = parse_response(&ch, false).unwrap().unwrap();
            proptest::prop_assert_eq!(used, ch.len());
            proptest::prop_assert_eq!(r.body, body);
            // Every strict prefix is incomplete, never an error or a wrong answer.
            for cut in [1, ch.len() / 2, ch.len() - 1] {
                proptest::prop_assert!(parse_response(&ch[..cut], false).unwrap().is_none());
            }
        }
    }

    #[test]
    fn jwt_payload() {
        // {"alg":"none"}.{"appid":"x"}.
        let t = "eyJhbGciOiJub25lIn0.eyJhcHBpZCI6IngifQ.";
        assert_eq!(jwt_claims(t).unwrap()["appid"], "x");
    }
}
