//! A stream sold over `batch-settlement` on the embedded facilitator (no chain):
//! per-second billing when the socket closes, and the per-address payment limit on
//! in-band vouchers. The same paths run on anvil in `x402-chain`'s tests.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use x402_payer::{EvmChannelPayer, LocalSigner};
use x402_server::ChannelOffer;
use x402_types::batch::BATCH_SETTLEMENT;
use x402_types::{
    Amount, ClientMessage, ErrorCode, Offer, PathVersion, PaymentRequiredV2, ServerMessage,
};

use crate::harness::{T, next_msg, start_cfg, stream};

/// One 60-second slice of stream `c` costs 0.06 USDC: 60,000 atomic units.
const SLICE: u128 = 60_000;

async fn channel_server(payments_per_minute: u32) -> T {
    start_cfg(|cfg| {
        let mut c = stream("c", 60, 60);
        c.channel = Some(ChannelOffer::default());
        cfg.streams = vec![stream("s", 60, 60), c];
        cfg.limits.payments_per_ip_per_minute = payments_per_minute;
    })
    .await
}

/// The stream's `batch-settlement` offer and its socket URL.
async fn channel_offer(t: &T) -> (Offer, String) {
    let r = t
        .client
        .get(format!("{}/v2/schema/c", t.http))
        .send()
        .await
        .unwrap();
    let header = r.headers()["PAYMENT-REQUIRED"]
        .to_str()
        .unwrap()
        .to_string();
    let schema = x402_types::Schema::from_json(&r.bytes().await.unwrap()).unwrap();
    let pr = PaymentRequiredV2::from_header(&header).unwrap();
    let accepted = pr
        .accepts
        .iter()
        .find(|a| a.get().scheme == BATCH_SETTLEMENT)
        .expect("the 402 lists batch-settlement")
        .clone();
    let offer = Offer::V2 {
        accepted,
        resource: pr.resource.clone(),
    };
    (offer, schema.websocket_endpoint)
}

fn buyer() -> EvmChannelPayer<LocalSigner> {
    EvmChannelPayer::new(
        LocalSigner::random().unwrap(),
        Amount::from_u128(100 * SLICE),
    )
}

/// The sum of metric `name`'s lines whose labels contain `labels` (`""`: any).
async fn metric_where(t: &T, name: &str, labels: &str) -> u128 {
    let text = t
        .client
        .get(format!("{}/metrics", t.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    atomicstream_testkit::metric_sum(&text, name, labels)
}

/// Metric `name` of stream `c`.
async fn metric(t: &T, name: &str) -> u128 {
    metric_where(t, name, "stream=\"c\"").await
}

/// Opens the socket paying with a deposit and its first voucher; the socket, the
/// session's socket URL and the offer.
async fn open_paid(
    t: &T,
    payer: &EvmChannelPayer<LocalSigner>,
) -> (crate::harness::Ws, String, Offer) {
    let (offer, ws_url) = channel_offer(t).await;
    let payment = payer.sign_channel(&offer).unwrap().to_header();
    let v = PathVersion::V2;
    let (mut ws, _) = t
        .connect(&ws_url, Some((v.payment_header(), &payment)))
        .await
        .unwrap();
    assert!(matches!(next_msg(&mut ws).await, ServerMessage::Hello(_)));
    (ws, ws_url, offer)
}

#[tokio::test(start_paused = true)]
async fn a_socket_closed_early_gives_the_unused_charge_back() {
    let t = channel_server(1_000).await;
    let payer = buyer();
    let (mut ws, ws_url, _) = open_paid(&t, &payer).await;
    assert_eq!(
        metric(&t, "atomicstream_channel_charged_atomic_total").await,
        SLICE
    );
    let opened = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // A clean close: the server gives the charge back before it answers.
    ws.send(Message::Close(None)).await.unwrap();
    while let Some(Ok(m)) = ws.next().await {
        if matches!(m, Message::Close(_)) {
            break;
        }
    }
    let open_for = opened.elapsed();
    let returned = metric(&t, "atomicstream_channel_returned_atomic_total").await;
    let charged = SLICE - returned;
    // 1,000 a second, per started second of the time the socket was open.
    assert_eq!(charged % 1_000, 0, "whole seconds: {charged}");
    assert!(
        (2_000..=u128::from(open_for.as_secs() as u32 + 3) * 1_000).contains(&charged),
        "charged {charged} for a socket open {open_for:?}"
    );
    // The time that went back is not kept: the session needs a new payment.
    let (status, body) = crate::harness::error_of(t.connect(&ws_url, None).await.unwrap_err());
    assert_eq!((status, body.error), (402, ErrorCode::PaymentRequired));
}

#[tokio::test]
async fn in_band_vouchers_count_against_the_address_payment_limit() {
    let t = channel_server(1).await;
    let payer = buyer();
    let (mut ws, _, offer) = open_paid(&t, &payer).await;
    let payment = payer.sign_channel(&offer).unwrap().to_header();
    ws.send(Message::text(ClientMessage::Voucher { payment }.to_json()))
        .await
        .unwrap();
    loop {
        match next_msg(&mut ws).await {
            ServerMessage::VoucherRefused { status, code, .. } => {
                assert_eq!((status, code), (429, ErrorCode::RateLimited));
                break;
            }
            ServerMessage::VoucherAccepted { .. } => panic!("the limit was skipped"),
            _ => {}
        }
    }
    assert_eq!(
        metric(&t, "atomicstream_channel_charged_atomic_total").await,
        SLICE,
        "the refused voucher charged nothing"
    );
}

/// The embedded facilitator, whose first `claim` is executed but answered
/// `settlement_pending` (the receipt wait failed after the broadcast).
struct PendingClaim {
    inner: std::sync::Arc<x402_server::EmbeddedFacilitator>,
    pending: std::sync::atomic::AtomicBool,
    claims: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

#[async_trait::async_trait]
impl x402_server::Facilitator for PendingClaim {
    async fn verify(
        &self,
        req: &x402_types::FacilitatorRequest,
    ) -> Result<x402_types::VerifyResponse, x402_server::FacilitatorError> {
        self.inner.verify(req).await
    }

    async fn settle(
        &self,
        req: &x402_types::FacilitatorRequest,
    ) -> Result<x402_types::SettleResponse, x402_server::FacilitatorError> {
        let answer = self.inner.settle(req).await?;
        let claim = matches!(req.payment_payload.scheme_payload(),
            x402_types::SchemePayload::Other(m) if m.get("type").and_then(|t| t.as_str()) == Some("claim"));
        if claim {
            self.claims
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        if claim
            && self
                .pending
                .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(x402_types::SettleResponse {
                success: false,
                error_reason: Some("settlement_pending".into()),
                ..answer
            });
        }
        Ok(answer)
    }

    async fn supported(
        &self,
    ) -> Result<x402_types::SupportedResponse, x402_server::FacilitatorError> {
        self.inner.supported().await
    }

    fn describe(&self) -> String {
        "embedded, first claim pending".into()
    }
}

/// A claim answered `settlement_pending` is neither lost nor made twice: the manager
/// reads the channel again at its next round and finds it claimed.
#[tokio::test(start_paused = true)]
async fn a_claim_answered_pending_is_found_claimed_and_not_sent_again() {
    let claims = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = claims.clone();
    let t = crate::harness::start_wrapped(
        |cfg| {
            let mut c = stream("c", 60, 60);
            c.channel = Some(ChannelOffer::default());
            cfg.streams = vec![stream("s", 60, 60), c];
            cfg.channel_manager.interval_secs = 1;
            cfg.channel_manager.claim_threshold_slices = 1;
        },
        move |inner| {
            std::sync::Arc::new(PendingClaim {
                inner,
                pending: true.into(),
                claims: counted,
            })
        },
    )
    .await;
    let payer = buyer();
    let (_ws, _, _) = open_paid(&t, &payer).await;
    let unclaimed = || metric_where(&t, "atomicstream_channel_unclaimed_atomic ", "");
    // The first claim is executed but answered pending; a later round reads the
    // channel, finds the charge claimed and owes nothing more.
    let mut seen = None;
    for _ in 0..40 {
        seen = Some(unclaimed().await);
        if seen == Some(0) && claims.load(std::sync::atomic::Ordering::SeqCst) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(seen, Some(0), "the pending claim was found on the ledger");
    let sent = claims.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        claims.load(std::sync::atomic::Ordering::SeqCst),
        sent,
        "no claim is sent once the channel is found claimed"
    );
    assert_eq!(sent, 1, "one claim in all");
}
