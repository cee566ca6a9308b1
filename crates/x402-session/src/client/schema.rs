//! The schema: the one reader of the 402 answer, and the session's handling of it.

use std::time::Instant;

use x402_types::x402::headers;
use x402_types::{
    EndpointKind, ErrorBody, Offer, PathVersion, PaymentRequiredV2, ResourceInfo, Schema,
    UrlContext,
};

use super::payment::Purpose;
use super::{ClientSession, EndReason, HttpResponse, Method, Phase, Transmit};

impl ClientSession {
    /// The one schema request: at [`open`](Self::open), and again after a
    /// failed one ([`Timer::Reconnect`](super::timer::Timer::Reconnect)).
    pub(super) fn request_schema(&mut self) {
        let id = self.request_id();
        self.set_phase(Phase::FetchingSchema(id));
        self.transmits.push_back(Transmit::Http {
            id,
            method: Method::Get,
            url: self.schema_url.clone(),
            headers: Vec::new(),
        });
    }

    pub(super) fn on_schema(&mut self, now: Instant, resp: HttpResponse) {
        if resp.status == 404 {
            let body = ErrorBody::from_json(&resp.body).ok();
            self.end(
                EndReason::UnknownStream {
                    message: body.map(|b| b.message).unwrap_or_default(),
                },
                None,
            );
            return;
        }
        if resp.status >= 500 || resp.status == 429 {
            // A first purchase the server refuses with a reason (its source
            // failed, its store is down, it is full): nothing was paid, so
            // nothing to protect by retrying; say why at once. A resumed
            // session (paid time on its token), or an answer without a
            // reason (a proxy's page), takes the reconnect escalation.
            if self.slices == 0
                && self.resume.is_none()
                && let Ok(body) = ErrorBody::from_json(&resp.body)
            {
                self.end(
                    EndReason::Unavailable {
                        status: resp.status,
                        code: body.error,
                        message: body.message,
                    },
                    None,
                );
                return;
            }
            self.connection_lost(now);
            return;
        }
        if resp.status != 402 && resp.status != 200 {
            self.protocol_violation(format!("schema request answered {}", resp.status));
            return;
        }
        match self.read_schema(&resp) {
            Ok((ws, offer)) => {
                self.reconnect_attempt = 0;
                self.offer = Some(offer);
                if let Some(saved) = self.resume.take() {
                    // A resumed session keeps its own token (and its paid time).
                    self.connect_resumed(saved);
                    return;
                }
                self.ws_url = Some(ws);
                self.set_phase(Phase::Paying);
                self.need_payment(now, Purpose::Upgrade);
            }
            Err(msg) => self.protocol_violation(msg),
        }
    }

    pub(super) fn read_schema(
        &self,
        resp: &HttpResponse,
    ) -> Result<(x402_types::Url, Offer), String> {
        let ctx = self.ctx.as_ref().ok_or("no URL context")?;
        read_schema_of(ctx, self.cfg.version, resp, &self.cfg.scheme)
            .map(|r| (r.websocket, r.offer))
            .map_err(|e| e.to_string())
    }
}

/// A schema answer that passed every check a client makes before paying.
#[derive(Debug, Clone)]
pub struct CheckedSchema {
    /// The document.
    pub schema: Schema,
    /// `websocketEndpoint`, pinned to the schema request (scheme, host, port,
    /// path prefix, version, stream) and carrying a token.
    pub websocket: x402_types::Url,
    /// What to sign: the x402 requirement, agreeing with `paymentDetails`.
    pub offer: Offer,
}

/// [`read_schema_of`] for the `exact` scheme.
pub fn read_schema(
    ctx: &UrlContext,
    version: PathVersion,
    resp: &HttpResponse,
) -> Result<CheckedSchema, x402_types::Error> {
    read_schema_of(ctx, version, resp, "exact")
}

/// The one schema reader (session, facade and command line): parses the 402
/// answer, checks its version and its `websocketEndpoint` against the schema
/// request (`ctx`), reads the x402 offer of `scheme` (v1 `accepts`, v2
/// `PAYMENT-REQUIRED`; `batch-settlement` is offered on v2 only) and refuses an
/// offer that disagrees with `paymentDetails` (network, asset, payTo, price).
pub fn read_schema_of(
    ctx: &UrlContext,
    version: PathVersion,
    resp: &HttpResponse,
    scheme: &str,
) -> Result<CheckedSchema, x402_types::Error> {
    let bad = |m: &str| x402_types::Error::Protocol(m.to_string());
    let schema = Schema::from_json(&resp.body)?;
    schema.check_version(version)?;
    let (ws, token) = ctx.check(&schema.websocket_endpoint, EndpointKind::Stream)?;
    if token.is_none() {
        return Err(bad("websocketEndpoint has no token"));
    }
    let req = schema.payment_details.requirement();
    let resource = {
        let mut u = ws.clone();
        u.set_query(None);
        u.to_string()
    };
    let offer = match version {
        PathVersion::V1 => match schema.accepts.as_ref().and_then(|a| a.first()) {
            Some(r) => Offer::V1(r.clone()),
            None => Offer::from_requirement(
                PathVersion::V1,
                &req,
                &resource,
                &schema.stream.description,
            ),
        },
        PathVersion::V2 => match resp.header(headers::PAYMENT_REQUIRED) {
            Some(h) => {
                let pr = PaymentRequiredV2::from_header(h)?;
                match pr.into_offer_of(scheme).ok_or_else(|| {
                    x402_types::Error::Protocol(format!(
                        "the server does not offer the {scheme} scheme for this stream"
                    ))
                })? {
                    Offer::V2 {
                        accepted,
                        resource: None,
                    } => Offer::V2 {
                        accepted,
                        resource: Some(ResourceInfo {
                            url: resource,
                            description: None,
                            mime_type: None,
                        }),
                    },
                    offer => offer,
                }
            }
            None if scheme == req.scheme => Offer::from_requirement(
                PathVersion::V2,
                &req,
                &resource,
                &schema.stream.description,
            ),
            None => {
                return Err(bad(
                    "no PAYMENT-REQUIRED header: only paymentDetails' scheme is offered",
                ));
            }
        },
    };
    if version == PathVersion::V1 && scheme != req.scheme {
        return Err(x402_types::Error::Protocol(format!(
            "the {scheme} scheme is offered on /v2 only"
        )));
    }
    // The x402 part must agree with paymentDetails: no bait and switch.
    let r = offer.requirement();
    if r.amount != req.amount
        || r.network != req.network
        || !r.pay_to.eq_ignore_ascii_case(&req.pay_to)
        || !r.asset.eq_ignore_ascii_case(&req.asset)
        || r.scheme != scheme
    {
        return Err(bad("x402 requirement disagrees with paymentDetails"));
    }
    Ok(CheckedSchema {
        schema,
        websocket: ws,
        offer,
    })
}
