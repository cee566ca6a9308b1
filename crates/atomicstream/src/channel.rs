//! Closing a `batch-settlement` channel from the client: the cooperative refund.

use x402_session::Method;
use x402_types::{SettleResponse, x402::decode_header};

use crate::{Client, ConfigError, Error, Result, unreachable};

/// What a cooperative refund returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRefund {
    /// The refund's transaction.
    pub transaction: String,
    /// The amount returned to the payer (atomic units), as the server reports it.
    pub amount: Option<x402_types::Amount>,
    /// What the seller claimed from the channel in all, after the refund (its
    /// `channelState.totalClaimed`): what the payer paid. Metered sessions that
    /// stopped early make it less than the vouchers' total.
    pub claimed: Option<u128>,
    /// The server's receipt (`PAYMENT-RESPONSE`).
    pub receipt: SettleResponse,
}

impl Client {
    /// Closes this client's channel with the seller of stream `id` cooperatively:
    /// the seller claims what it charged and returns the rest of the deposit in one
    /// transaction. The client must be built with the `batch-settlement` scheme and a
    /// payer that holds the channel ([`crate::EvmChannelPayer`]); [`Error::Config`]
    /// otherwise.
    pub async fn refund_channel(&self, id: &str) -> Result<ChannelRefund> {
        let info = self.schema(id).await?;
        let b = &self.inner.b;
        let payer = b.payer.clone().ok_or(Error::Config(ConfigError::NoPayer))?;
        let mut offer = info.offer.clone();
        let mut corrected = false;
        let resp = loop {
            let payload = payer.refund(&offer)?.ok_or_else(|| {
                Error::Config(ConfigError::NoChannel {
                    stream: id.to_string(),
                    scheme: b.scheme.clone(),
                })
            })?;
            let headers = [(b.version.payment_header().to_string(), payload.to_header())];
            let resp = self
                .inner
                .http
                .request(Method::Post, &info.renew_url, &headers)
                .await
                .map_err(|e| unreachable(&info.renew_url, e))?;
            // The server's charged total differs from ours (a metered session gave
            // charge back): the payer checks its restated view, and signs once more.
            if resp.status == 402
                && !corrected
                && let Some(again) = info.offer.corrected(&resp.body)
            {
                corrected = true;
                offer = again;
                continue;
            }
            break resp;
        };
        if resp.status != 200 {
            let body = x402_types::ErrorBody::from_json(&resp.body).ok();
            return Err(Error::PaymentRefused {
                status: resp.status,
                code: body
                    .as_ref()
                    .map_or(x402_types::ErrorCode::Other("refund_refused".into()), |b| {
                        b.error.clone()
                    }),
                message: body.map(|b| b.message).unwrap_or_default(),
            });
        }
        let receipt: SettleResponse = resp
            .header(b.version.payment_response_header())
            .ok_or_else(|| Error::Protocol("the refund's answer has no receipt".into()))
            .and_then(|h| {
                decode_header(x402_types::x402::headers::PAYMENT_RESPONSE, h).map_err(Error::from)
            })?;
        if !receipt.success {
            return Err(Error::PaymentRefused {
                status: resp.status,
                code: x402_types::ErrorCode::Other(
                    receipt.error_reason.clone().unwrap_or_default(),
                ),
                message: "the refund failed".into(),
            });
        }
        payer.accepted(Some(&receipt));
        let claimed = receipt
            .extra
            .as_ref()
            .and_then(|x| x.get("channelState"))
            .and_then(|s| serde_json::from_value::<x402_types::batch::ChannelState>(s.clone()).ok())
            .map(|s| s.total_claimed);
        Ok(ChannelRefund {
            transaction: receipt.transaction.clone(),
            amount: receipt.amount,
            claimed,
            receipt,
        })
    }
}
