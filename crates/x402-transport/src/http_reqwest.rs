//! The default HTTP transport: reqwest with rustls.

use std::time::Duration;

use async_trait::async_trait;

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
            .map_err(|e| TransportError::Connection(e.to_string()))?;
        Ok(ReqwestTransport { client })
    }
}

impl Default for ReqwestTransport {
    fn default() -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        ReqwestTransport { client }
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
        let map = |e: reqwest::Error| {
            if e.is_timeout() {
                TransportError::Timeout(e.to_string())
            } else {
                TransportError::Connection(e.to_string())
            }
        };
        let resp = req.send().await.map_err(map)?;
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
            return Err(TransportError::Frame("response body too large".into()));
        }
        let body = resp.bytes().await.map_err(map)?;
        if body.len() > MAX_BODY {
            return Err(TransportError::Frame("response body too large".into()));
        }
        Ok(HttpResponse {
            status,
            headers,
            body: body.to_vec(),
        })
    }
}
