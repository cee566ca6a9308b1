//! `batch-settlement` vouchers in-band on the paid socket: a client's `voucher`
//! message is the same payment a renew request carries, handled by the same
//! pipeline (so retrying it over HTTP with the same payload is idempotent), and
//! answered on the socket with `voucher-accepted` or `voucher-refused`; the socket
//! asks for the next voucher (`voucher-needed`) when the session's paid time is about
//! to end, once it knows its channel.

use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use x402_session::{ConnId, Quote, ServerTransmit};
use x402_types::batch::BATCH_SETTLEMENT;
use x402_types::{B256, ErrorCode, PaymentPayload, SchemePayload, ServerMessage};

use crate::state::AppState;

/// What a paid socket knows of its channel, shared with its voucher tasks.
#[derive(Debug, Default)]
pub(crate) struct SocketChannel {
    /// The channel that paid this connection, once known.
    id: Mutex<Option<B256>>,
    /// A voucher of this connection is being handled (one at a time).
    busy: std::sync::atomic::AtomicBool,
}

impl SocketChannel {
    /// Known from the start (the upgrade was paid by a channel).
    pub(crate) fn new(id: Option<B256>) -> Arc<Self> {
        Arc::new(SocketChannel {
            id: Mutex::new(id),
            busy: Default::default(),
        })
    }

    fn id(&self) -> Option<B256> {
        *self.id.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The channel a `batch-settlement` payment names.
pub(crate) fn channel_of(p: &PaymentPayload) -> Option<B256> {
    if p.scheme() != BATCH_SETTLEMENT {
        return None;
    }
    let SchemePayload::Other(m) = p.scheme_payload() else {
        return None;
    };
    m.get("voucher")?.get("channelId")?.as_str()?.parse().ok()
}

fn send(state: &AppState, conn: ConnId, msg: ServerMessage) {
    let tx = state
        .mailboxes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&conn)
        .cloned();
    if let Some(tx) = tx {
        // A full or closed mailbox: the client's timer sends the payload over HTTP.
        let _ = tx.try_send(ServerTransmit::Message { conn, msg });
    }
}

/// Handles an in-band voucher in a task of its own (the socket keeps streaming).
pub(crate) fn spawn_voucher(
    state: Arc<AppState>,
    conn: ConnId,
    ip: std::net::IpAddr,
    quote: Quote,
    channel: Arc<SocketChannel>,
    payment: String,
) {
    use std::sync::atomic::Ordering;
    if channel.busy.swap(true, Ordering::AcqRel) {
        send(
            &state,
            conn,
            ServerMessage::VoucherRefused {
                status: 429,
                code: ErrorCode::RateLimited,
                message: "one in-band voucher at a time; send it to the renew URL".into(),
            },
        );
        return;
    }
    tokio::spawn(async move {
        // An in-band voucher is a payment like any other: the per-address limit holds.
        let answer = async {
            state.admit_payment(ip)?;
            voucher(&state, &quote, &payment, &channel).await
        };
        let msg = match answer.await {
            Ok(m) => m,
            Err(e) => ServerMessage::VoucherRefused {
                status: e.status.as_u16(),
                code: e.code,
                message: e.message,
            },
        };
        channel.busy.store(false, Ordering::Release);
        send(&state, conn, msg);
    });
}

async fn voucher(
    state: &Arc<AppState>,
    quote: &Quote,
    payment: &str,
    channel: &SocketChannel,
) -> Result<ServerMessage, crate::error::ApiError> {
    let v = quote.version;
    let (_, sold) = state.entry(v.segment(), &quote.stream_id, &HeaderMap::new())?;
    let payload = state.decode_payment(v, &sold, payment)?;
    if payload.scheme() != BATCH_SETTLEMENT {
        return Err(state.payment_error(
            v,
            &sold,
            ErrorCode::PaymentInvalid,
            "only batch-settlement vouchers are carried in-band; exact payments go to the renew URL"
                .into(),
        ));
    }
    let id = channel_of(&payload);
    let credit = state.pay(v, &sold, quote, payload).await?;
    if let Some(id) = id {
        *channel.id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }
    Ok(ServerMessage::VoucherAccepted {
        expires_at: credit.response.expires_at,
        slices: credit.response.slices,
        receipt: credit.settlement,
    })
}

/// `voucher-needed` for a session whose paid time is about to end, when the socket
/// knows its channel: the charged total and the voucher to sign next.
pub(crate) async fn voucher_needed(
    state: &AppState,
    quote: &Quote,
    channel: &SocketChannel,
    expires_at: u64,
) -> Option<ServerMessage> {
    let id = channel.id()?;
    let entry = state.streams.get(&quote.stream_id)?;
    let price = entry.channel_requirement()?.amount.atomic().to_u128()?;
    let (_, rec) = state.get_channel(&id.to_string()).await.ok()?;
    let rec = rec?;
    Some(ServerMessage::VoucherNeeded {
        channel_id: id.to_string(),
        charged_cumulative_amount: rec.charged.to_string(),
        max_claimable_amount: rec.charged.saturating_add(price).to_string(),
        expires_at,
    })
}
