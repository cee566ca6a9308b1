//! A client of the standard x402 facilitator HTTP API.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use x402_types::{FacilitatorRequest, SettleResponse, SupportedResponse, VerifyResponse};

use crate::{Facilitator, FacilitatorError, TransportError};

/// Largest facilitator answer read (bytes).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A client of the standard x402 facilitator HTTP API.
#[derive(Clone)]
pub struct HttpFacilitator {
    base: String,
    client: reqwest::Client,
    bearer: Option<String>,
}

impl std::fmt::Debug for HttpFacilitator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

fn transport(e: reqwest::Error) -> FacilitatorError {
    // The URL may carry credentials: neither the text nor the cause keeps it.
    let e = e.without_url();
    FacilitatorError::Transport(TransportError::with_source(crate::with_causes(&e), e))
}

impl HttpFacilitator {
    /// With bounded connect and request timeouts.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, FacilitatorError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            // A facilitator that redirects is misconfigured or hostile: the
            // payment must not travel anywhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(transport)?;
        Ok(HttpFacilitator {
            base: base_url.trim_end_matches('/').to_string(),
            client,
            bearer: None,
        })
    }

    /// Sends `Authorization: Bearer <key>` with every call.
    pub fn with_bearer(mut self, key: impl Into<String>) -> Self {
        self.bearer = Some(key.into());
        self
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.bearer {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        req: &FacilitatorRequest,
    ) -> Result<T, FacilitatorError> {
        let request = self
            .auth(self.client.post(format!("{}{path}", self.base)))
            .json(req);
        let (status, body) = Self::exchange(request).await?;
        // Refusals come as 200 with isValid/success false (reference) or as 4xx with the same body (others).
        match serde_json::from_slice::<T>(&body) {
            Ok(v) if status < 500 => Ok(v),
            Ok(_) => Err(FacilitatorError::BadAnswer {
                status,
                message: "server error".into(),
                source: None,
            }),
            Err(e) => Err(FacilitatorError::BadAnswer {
                status,
                message: format!(
                    "{e}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
                source: Some(Arc::new(e)),
            }),
        }
    }

    /// Sends a request and reads its status and body; no answer is a transport error.
    async fn exchange(
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), FacilitatorError> {
        let mut resp = request.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        // Read at most MAX_ANSWER_BYTES, chunk by chunk: an endless body is refused early.
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(FacilitatorError::BadAnswer {
                    status,
                    message: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
                    source: None,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }
}

#[async_trait]
impl Facilitator for HttpFacilitator {
    async fn verify(&self, req: &FacilitatorRequest) -> Result<VerifyResponse, FacilitatorError> {
        self.post("/verify", req).await
    }

    async fn settle(&self, req: &FacilitatorRequest) -> Result<SettleResponse, FacilitatorError> {
        self.post("/settle", req).await
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let (status, body) =
            Self::exchange(self.auth(self.client.get(format!("{}/supported", self.base)))).await?;
        serde_json::from_slice(&body).map_err(|e| FacilitatorError::BadAnswer {
            status,
            message: e.to_string(),
            source: Some(Arc::new(e)),
        })
    }

    fn describe(&self) -> String {
        // The URL may carry credentials: only its host is shown.
        let authority = self.base.split_once("://").map_or("", |(_, rest)| {
            rest.split(['/', '?', '#']).next().unwrap_or("")
        });
        let host = authority.rsplit('@').next().unwrap_or("?");
        format!("remote x402 facilitator ({host})")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_description_never_shows_credentials() {
        let f = HttpFacilitator::new(
            "https://user:secret@facilitator.example/x402?key=k",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            f.describe(),
            "remote x402 facilitator (facilitator.example)"
        );
        assert!(!format!("{f:?}").contains("secret"));
    }

    #[tokio::test]
    async fn a_dead_facilitator_is_a_transport_error_with_its_cause() {
        // Port 9 (discard) on loopback: nothing listens there in the test environment.
        let f = HttpFacilitator::new("http://127.0.0.1:9", Duration::from_secs(2)).unwrap();
        let e = f.supported().await.unwrap_err();
        let FacilitatorError::Transport(t) = &e else {
            panic!("{e:?}")
        };
        assert!(std::error::Error::source(t).is_some(), "{e}");
        assert!(!e.to_string().contains("127.0.0.1:9"), "no URL: {e}");
    }
}
