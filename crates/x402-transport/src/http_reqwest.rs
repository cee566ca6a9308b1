//! The default HTTP transport: reqwest with rustls.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Kind;
use crate::{HttpResponse, HttpTransport, Method, TransportError};

/// Largest body read (bodies of this protocol are small).
const MAX_BODY: usize = 1024 * 1024;

/// reqwest with connect and request timeouts.
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// With a connect timeout and a whole-request timeout.
    pub fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TransportError::from_cause(Kind::Connection, e))?;
        Ok(ReqwestTransport { client })
    }
}

impl ReqwestTransport {
    /// The standard transport: 5 s to connect, 10 s per request, no redirects.
    /// (There is no `Default`: a client that failed to build must not silently
    /// fall back to one without timeouts or redirect policy.)
    pub fn standard() -> Result<Self, TransportError> {
        Self::new(Duration::from_secs(5), Duration::from_secs(10))
    }
}

#[async_trait]
impl HttpTransport for ReqwestTransport {
    async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<HttpResponse, TransportError> {
        let mut req = match method {
            Method::Get => self.client.get(url),
            Method::Post => self.client.post(url),
        };
        for (k, v) in headers {
            req = req.header(k, v);
        }
        // Never echo the URL: it carries the session token. The kind comes
        // from the source chain (refused, DNS, TLS, timeout).
        let map = |e: reqwest::Error| TransportError::from_cause(Kind::Connection, e.without_url());
        let mut resp = req.send().await.map_err(map)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), v.to_string()))
            })
            .collect();
        if resp.content_length().is_some_and(|l| l > MAX_BODY as u64) {
            return Err(TransportError::frame("response body too large"));
        }
        // Capped while reading: a chunked body without a length is cut off at
        // MAX_BODY, never buffered whole first.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(map)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(TransportError::frame("response body too large"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}
