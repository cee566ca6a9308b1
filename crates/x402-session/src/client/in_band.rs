//! `batch-settlement` vouchers carried in-band on the paid socket: the fast path of
//! a channel's renewal. The payload is the one a renew request would carry; when the
//! socket gives no verdict in time (or refuses), the same bytes go to the renew URL,
//! whose answer is the verdict (the server handles both through one pipeline, so the
//! second copy is idempotent). The server's `voucher-needed` is checked against what
//! this session bought before anything is signed.

use std::time::{Duration, Instant};

use x402_types::x402::{decode_header, headers};
use x402_types::{ClientMessage, SettleResponse};

use super::payment::{PaymentState, Step};
use super::timer::Timer;
use super::{ClientSession, EndReason, Phase, Transmit};
use x402_types::CloseCode;

/// How long an in-band voucher waits for its verdict before going to the renew URL.
pub const IN_BAND_WAIT: Duration = Duration::from_secs(3);

/// The scheme whose renewals go in-band.
const CHANNEL: &str = "batch-settlement";

impl ClientSession {
    /// Sends the unconfirmed payload in-band when this session pays by channel, its
    /// socket is live and this payload was not tried in-band yet. `false`: use HTTP.
    pub(super) fn send_in_band(&mut self, now: Instant) -> bool {
        if self.cfg.scheme != CHANNEL {
            return false;
        }
        let Phase::Live { conn, hello: true } = self.phase else {
            return false;
        };
        let PaymentState::Signed(s) = &mut self.payment else {
            return false;
        };
        if s.in_band {
            return false;
        }
        s.in_band = true;
        s.step = Step::InBand;
        let text = ClientMessage::Voucher {
            payment: s.header.clone(),
        }
        .to_json();
        self.stats.in_band_payments += 1;
        self.timers.set(Timer::RenewRetry, now + IN_BAND_WAIT);
        self.transmits.push_back(Transmit::WsSend { conn, text });
        true
    }

    /// `voucher-accepted`: the in-band payload was credited.
    pub(super) fn on_voucher_accepted(
        &mut self,
        now: Instant,
        expires_at: u64,
        slices: u64,
        receipt: Option<String>,
    ) {
        if let Some(slice) = self.payment.signed().map(|s| s.slice)
            && slices >= slice
        {
            let settlement = receipt
                .as_deref()
                .and_then(|r| decode_header::<SettleResponse>(headers::PAYMENT_RESPONSE, r).ok());
            self.accept_payment(slice, settlement);
        }
        self.on_renewed(now, expires_at, slices);
    }

    /// `voucher-refused`: the renew URL gives the verdict on the same payload.
    pub(super) fn on_voucher_refused(&mut self, now: Instant) {
        if self
            .payment
            .signed()
            .is_some_and(|s| s.step == Step::InBand)
        {
            self.send_renew(now);
        }
    }

    /// `voucher-needed`: the server asks for the next voucher. It may ask for at most
    /// one slice beyond its charged total (a server asking for more is refused and the
    /// stream stopped before anything is signed); the payer signs from its own confirmed
    /// total, never the server's numbers. It is answered only within the renew margin of
    /// this session's own paid time, as `expiring` is.
    pub(super) fn on_voucher_needed(&mut self, now: Instant, charged: &str, max: &str) {
        let price = self
            .offer
            .as_ref()
            .and_then(|o| o.requirement().amount.atomic().to_u128())
            .unwrap_or(0);
        match (charged.parse::<u128>(), max.parse::<u128>()) {
            (Ok(c), Ok(m)) if m >= c && m - c <= price => {
                let within_margin = self.paid_remaining(now) <= self.renew_margin();
                if within_margin && self.payment.is_idle() {
                    self.need_payment(now, super::payment::Purpose::Renew);
                }
            }
            _ => self.end(
                EndReason::ProtocolViolation(format!(
                    "the server asks for a voucher of {max} with {charged} charged: more than one slice ({price}) ahead; nothing more is signed"
                )),
                Some(CloseCode::Policy),
            ),
        }
    }
}
