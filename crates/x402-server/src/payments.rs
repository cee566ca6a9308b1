//! Payments at the HTTP edge: tokens read as quotes, payment headers read
//! as payments, the endpoint's refusals as x402 answers (402 with fresh
//! requirements, 202 pending, 409, 503), and the per-address payment rate.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use x402_session::{Credit, PaymentDecision, PaymentIn, Quote, Refusal};
use x402_types::x402::{PaymentRequiredV2, ResourceInfo};
use x402_types::{
    ErrorCode, FacilitatorRequest, PathVersion, PaymentPayload, PaymentRequirements,
    PaymentRequirementsV1, PreservedRequirement,
};

use crate::error::{ApiError, bad_request, not_found};
use crate::state::{AppState, StreamEntry, now};

/// A stream for sale as one request sees it: the entry, and the public
/// addresses to advertise to that request.
pub(crate) struct Sold<'a> {
    entry: &'a StreamEntry,
    /// Public HTTP base for this request.
    pub http: String,
    /// Public WebSocket base for this request.
    pub ws: String,
}

impl Sold<'_> {
    /// Whether the stream may be quoted now: not while its source is down
    /// (new payments are refused in the coordinator, known ones answered).
    pub(crate) fn on_sale(&self) -> Result<(), ApiError> {
        match self.hub.not_sold(&self.cfg.id) {
            None => Ok(()),
            Some(reason) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::SourceUnavailable,
                reason,
            )),
        }
    }
}

impl std::ops::Deref for Sold<'_> {
    type Target = StreamEntry;
    fn deref(&self) -> &StreamEntry {
        self.entry
    }
}

/// A `Host` header fit to be echoed into URLs: a name or address and an
/// optional port, nothing else.
fn plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 262
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}
use crate::token::{Claims, TokenError, redact};

fn retry_after_or(s: u64) -> u64 {
    s.max(1)
}

impl AppState {
    /// The stream a request names, with the addresses to advertise to it.
    pub(crate) fn entry(
        &self,
        ver: &str,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<(PathVersion, Sold<'_>), ApiError> {
        let v = match ver {
            "v1" => PathVersion::V1,
            "v2" => PathVersion::V2,
            _ => return Err(not_found("version")),
        };
        let entry = self.streams.get(id).ok_or_else(|| not_found("stream"))?;
        // Unset public addresses: the host the client used, so `localhost`,
        // `127.0.0.1` and a LAN name all work with the client's host pinning.
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| plausible_host(h));
        let base = |configured: bool, fallback: &str, scheme: &str| match host {
            Some(h) if !configured => format!("{scheme}://{h}"),
            _ => fallback.to_string(),
        };
        Ok((
            v,
            Sold {
                entry,
                http: base(self.cfg.public_http.is_some(), &self.http_base, "http"),
                ws: base(self.cfg.public_ws.is_some(), &self.ws_base, "ws"),
            },
        ))
    }

    fn resource(&self, v: PathVersion, e: &Sold<'_>) -> String {
        format!("{}/{}/stream/{}", e.ws, v.segment(), e.cfg.id)
    }

    pub(crate) fn v1_requirement(&self, v: PathVersion, e: &Sold<'_>) -> PaymentRequirementsV1 {
        e.requirement()
            .to_v1(&self.resource(v, e), &e.cfg.description)
    }

    pub(crate) fn requirements(&self, v: PathVersion, e: &Sold<'_>) -> PaymentRequirements {
        match v {
            PathVersion::V1 => PaymentRequirements::V1(self.v1_requirement(v, e)),
            PathVersion::V2 => PaymentRequirements::V2(e.requirement().to_v2()),
        }
    }

    pub(crate) fn payment_required_v2(
        &self,
        v: PathVersion,
        e: &Sold<'_>,
        error: &str,
    ) -> PaymentRequiredV2 {
        PaymentRequiredV2 {
            x402_version: 2,
            error: Some(error.into()),
            resource: Some(ResourceInfo {
                url: self.resource(v, e),
                description: Some(e.cfg.description.clone()),
                mime_type: Some("application/json".into()),
            }),
            accepts: std::iter::once(e.requirement())
                .chain(e.channel_requirement())
                .map(|r| PreservedRequirement::new(r.to_v2()))
                .collect(),
            extensions: Some(payment_identifier_declaration()),
        }
    }

    /// A 402 carrying fresh requirements in the version's form.
    pub(crate) fn payment_error(
        &self,
        v: PathVersion,
        e: &Sold<'_>,
        code: ErrorCode,
        message: String,
    ) -> ApiError {
        let mut err = ApiError::new(StatusCode::PAYMENT_REQUIRED, code, message.clone());
        match v {
            PathVersion::V1 => {
                err.accepts = Some(vec![
                    serde_json::to_value(self.v1_requirement(v, e)).unwrap_or(Value::Null),
                ]);
                err.x402_version = Some(1);
            }
            PathVersion::V2 => {
                err.accepts = Some(
                    std::iter::once(e.requirement())
                        .chain(e.channel_requirement())
                        .map(|r| serde_json::to_value(r.to_v2()).unwrap_or(Value::Null))
                        .collect(),
                );
                err.x402_version = Some(2);
                let error = crate::channels::x402_reason(&message).unwrap_or(&message);
                err.payment_required = Some(self.payment_required_v2(v, e, error).to_header());
            }
        }
        err
    }

    /// A refusal from the endpoint as an HTTP answer.
    pub(crate) fn refusal(&self, v: PathVersion, e: &Sold<'_>, r: Refusal) -> ApiError {
        match r.code {
            ErrorCode::PaymentRequired | ErrorCode::PaymentInvalid | ErrorCode::ValidityTooLong => {
                self.payment_error(v, e, r.code, r.message)
            }
            ErrorCode::PaymentPending => pending(1),
            code => {
                let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
                ApiError::new(status, code, r.message)
            }
        }
    }

    /// Checks a token (MAC, scope, bound requirement) and reads its quote.
    pub(crate) fn quote(
        &self,
        v: PathVersion,
        e: &Sold<'_>,
        token: Option<&str>,
    ) -> Result<Quote, ApiError> {
        let invalid =
            |m: String| ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::TokenInvalid, m);
        let token = token.ok_or_else(|| invalid("missing token `t`".into()))?;
        let claims: Claims = self.tokens.verify_for(token, v, &e.cfg.id).map_err(|err| {
            tracing::info!(token = %redact(token), %err, "token refused");
            invalid(err.to_string())
        })?;
        // The token binds the exact requirement: a changed price, payee, asset or
        // network invalidates old tokens.
        let req = e.requirement();
        if claims.amt != req.amount.to_string()
            || !claims.to.eq_ignore_ascii_case(&req.pay_to)
            || !claims.asset.eq_ignore_ascii_case(&req.asset)
            || claims.net != req.network.caip2()
        {
            return Err(invalid(TokenError::WrongScope.to_string()));
        }
        let renew_url = x402_types::version::renew_url(&e.http, v, &e.cfg.id, token)
            .map(|u| u.to_string())
            .map_err(|err| invalid(err.to_string()))?;
        Ok(Quote {
            id: claims.q,
            stream_id: e.cfg.id.clone(),
            version: v,
            expires: claims.exp,
            slice_seconds: e.cfg.slice_seconds,
            max_timeout_seconds: e.cfg.max_timeout_seconds,
            renew_url,
        })
    }

    /// Counts a request carrying a payment from `ip` against a token bucket of
    /// `payments_per_ip_per_minute` (refilled continuously); `Err` (429) when empty.
    pub(crate) fn admit_payment(&self, ip: IpAddr) -> Result<(), ApiError> {
        let per_minute = f64::from(self.cfg.limits.payments_per_ip_per_minute.max(1));
        let now = now();
        let mut m = self.payment_rate.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            // Full buckets carry no information: forget them.
            m.retain(|_, (t, tokens)| {
                *tokens + now.saturating_duration_since(*t).as_secs_f64() * per_minute / 60.0
                    < per_minute
            });
        }
        let (last, tokens) = m.entry(ip).or_insert((now, per_minute));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * per_minute / 60.0;
        *tokens = (*tokens + refill).min(per_minute);
        *last = now;
        if *tokens < 1.0 {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many payments from this address; retry the same payment shortly",
            );
            err.retry_after = Some(((1.0 - *tokens) * 60.0 / per_minute).ceil().max(1.0) as u64);
            return Err(err);
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// Decodes a payment header of the path's version.
    pub(crate) fn decode_payment(
        &self,
        v: PathVersion,
        e: &Sold<'_>,
        header: &str,
    ) -> Result<PaymentPayload, ApiError> {
        PaymentPayload::from_header(v, header).map_err(|err| {
            self.payment_error(
                v,
                e,
                ErrorCode::PaymentInvalid,
                format!("malformed {} header: {err}", v.payment_header()),
            )
        })
    }

    /// Buys one slice with a payment header. The decision, its commit and
    /// the settlement run in tasks of their own (they outlive this request);
    /// the answer waits at most `payment_wait_secs` before saying "pending".
    pub(crate) async fn pay(
        self: &Arc<Self>,
        v: PathVersion,
        e: &Sold<'_>,
        quote: &Quote,
        payload: PaymentPayload,
    ) -> Result<Credit, ApiError> {
        let payment = if payload.scheme() == x402_types::batch::BATCH_SETTLEMENT {
            let (payment, ours) = self.channel_payment(v, e, quote, &payload).await?;
            payment.with_request(FacilitatorRequest {
                payment_payload: payload,
                payment_requirements: PaymentRequirements::V2(ours.to_v2()),
            })
        } else {
            PaymentIn::from_payload(&payload)
                .map_err(|r| self.refusal(v, e, r))?
                .with_request(FacilitatorRequest {
                    payment_payload: payload,
                    payment_requirements: self.requirements(v, e),
                })
        };
        let id = match self.admit(quote, &payment).await? {
            PaymentDecision::Settle(id) | PaymentDecision::Pending { id, .. } => id,
            PaymentDecision::Credited(c) => return Ok(c),
            PaymentDecision::Refused(r) => return Err(self.refusal(v, e, r)),
        };
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(self.cfg.limits.payment_wait_secs);
        match self.wait_answer(quote, &payment, id, deadline).await {
            PaymentDecision::Credited(c) => Ok(c),
            PaymentDecision::Refused(r) => Err(self.refusal(v, e, r)),
            PaymentDecision::Pending { retry_after, .. } => {
                Err(pending(retry_after_or(retry_after)))
            }
            PaymentDecision::Settle(_) => Err(pending(1)),
        }
    }
}

/// The `payment-identifier` extension, declared optional in 402 answers.
pub(crate) fn payment_identifier_declaration() -> Value {
    serde_json::json!({
        x402_types::x402::PAYMENT_IDENTIFIER: {
            "info": {"required": false},
            "schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "required": {"type": "boolean"},
                    "id": {"type": "string", "minLength": 16, "maxLength": 128,
                           "pattern": "^[a-zA-Z0-9_-]+$"}
                },
                "required": ["required"]
            }
        }
    })
}

/// 503 `store_unavailable`: nothing was recorded, nothing will be settled.
/// (The failure itself is logged and counted by [`crate::metrics::Metrics::store_failed`].)
pub(crate) fn store_down() -> ApiError {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the server cannot record payments right now; nothing was settled; retry the same payment shortly",
    );
    err.retry_after = Some(1);
    err
}

pub(crate) fn pending(retry_after: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::ACCEPTED,
        ErrorCode::PaymentPending,
        format!(
            "the payment's settlement is under way; send the same payment again in {retry_after} s"
        ),
    );
    e.retry_after = Some(retry_after);
    e
}

pub(crate) fn payment_header(
    v: PathVersion,
    headers: &HeaderMap,
) -> Result<Option<&str>, ApiError> {
    match headers.get(v.payment_header()) {
        None => Ok(None),
        Some(h) => h
            .to_str()
            .map(Some)
            .map_err(|_| bad_request("payment header is not ASCII")),
    }
}
