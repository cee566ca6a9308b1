//! Row 9b: N paid sessions bought over `batch-settlement` channels (one deposit, then one
//! voucher per slice, through the renew URL) beside the same N sessions bought with
//! `exact` (one EIP-3009 payment per slice), each side against its own fresh
//! `atomicstream serve` process with the embedded facilitator.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use x402_payer::{EvmChannelPayer, LocalSigner, Payer};
use x402_types::batch::BATCH_SETTLEMENT;
use x402_types::x402::{decode_header, headers};
use x402_types::{Amount, Offer, PaymentRequiredV2, Schema, SettleResponse};

use crate::fixture::signer_payer;
use crate::process::{ServerProcess, cpu_secs};
use crate::report::{Report, Row};

/// Sessions opened at a time, as row 4c opens its sockets.
const PARALLEL: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Exact,
    Channel,
}

/// One side's run: wall time, sessions paid in full, and the server's CPU.
struct Side {
    secs: f64,
    paid: usize,
    /// The first failure, for the report.
    error: Option<String>,
    /// Server CPU seconds (user, system) over the run.
    cpu: (f64, f64),
}

impl Side {
    fn per_sec(&self) -> f64 {
        self.paid as f64 / self.secs
    }

    /// Server CPU per paid session, microseconds (user, system).
    fn cpu_us(&self) -> (f64, f64) {
        let n = self.paid.max(1) as f64;
        (self.cpu.0 * 1e6 / n, self.cpu.1 * 1e6 / n)
    }
}

/// The schema and the whole `PAYMENT-REQUIRED` of stream `id`.
async fn quote(
    http: &reqwest::Client,
    base: &str,
    id: &str,
) -> Result<(Schema, PaymentRequiredV2), String> {
    let r = http
        .get(format!("{base}/v2/schema/{id}"))
        .send()
        .await
        .map_err(|e| format!("schema: {e}"))?;
    let pr = r
        .headers()
        .get(headers::PAYMENT_REQUIRED)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| PaymentRequiredV2::from_header(h).ok())
        .ok_or("no PAYMENT-REQUIRED")?;
    let body = r.bytes().await.map_err(|e| format!("schema: {e}"))?;
    let schema = Schema::from_json(&body).map_err(|e| format!("schema: {e}"))?;
    Ok((schema, pr))
}

/// POSTs one payment to the renew URL; the `PAYMENT-RESPONSE` of a 200.
async fn renew(http: &reqwest::Client, url: &str, payment: &str) -> Result<SettleResponse, String> {
    let r = http
        .post(url)
        .header(headers::PAYMENT_SIGNATURE, payment)
        .send()
        .await
        .map_err(|e| format!("renew: {e}"))?;
    let status = r.status();
    let receipt = r
        .headers()
        .get(headers::PAYMENT_RESPONSE)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| decode_header::<SettleResponse>(headers::PAYMENT_RESPONSE, h).ok());
    let body = r.bytes().await.unwrap_or_default();
    match receipt {
        Some(s) if status == 200 => Ok(s),
        _ => Err(format!(
            "renew: {status} {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )),
    }
}

/// One session of `slices` slices: a quote, then one payment per slice on the renew URL.
async fn session(
    http: &reqwest::Client,
    exact: &x402_payer::EvmExactPayer,
    base: &str,
    scheme: Scheme,
    slices: u64,
) -> Result<(), String> {
    let (schema, pr) = quote(http, base, "c").await?;
    let url = schema
        .websocket_endpoint
        .replace("ws://", "http://")
        .replace("/stream/", "/renew/");
    match scheme {
        Scheme::Exact => {
            let offer = pr.into_offer_of("exact").ok_or("no exact offer")?;
            for _ in 0..slices {
                let pay = exact.sign(&offer).map_err(|e| e.to_string())?;
                renew(http, &url, &pay.to_header()).await?;
            }
        }
        Scheme::Channel => {
            let offer: Offer = pr
                .into_offer_of(BATCH_SETTLEMENT)
                .ok_or("no batch-settlement offer")?;
            // A payer of its own: its channel is new, so its first payment deposits.
            let signer = LocalSigner::random().map_err(|e| e.to_string())?;
            let payer = EvmChannelPayer::new(signer, Amount::from_u128(u128::MAX / 2))
                .deposit_slices(slices);
            for k in 0..slices {
                let pay = payer.pay(&offer).await.map_err(|e| e.to_string())?;
                let receipt = renew(http, &url, &pay.to_header()).await?;
                // The first answer names the deposit; the others are vouchers.
                if (k == 0) == receipt.amount.is_none() {
                    return Err(format!("slice {k}: unexpected receipt {receipt:?}"));
                }
                payer.accepted(Some(&receipt));
            }
            let ch = payer.channels();
            let price = offer.requirement().amount.atomic().to_u128().unwrap_or(0);
            if ch.len() != 1 || ch[0].charged != price * u128::from(slices) {
                return Err(format!(
                    "the channel is not charged {slices} slices: {:?}",
                    ch.first().map(|c| (c.charged, c.balance, c.config.payer))
                ));
            }
        }
    }
    Ok(())
}

async fn run_side(scheme: Scheme, n: usize, slices: u64) -> Result<Side, String> {
    // Slices bought ahead up to the session's whole length; the channel manager is kept
    // out of the window (its claims run off the request path, every 60 s by default).
    let limits = format!("horizon_slices = {}\n", slices + 1);
    let stream =
        "[streams.channel]\nwithdraw_delay = 900\n[channel_manager]\ninterval_secs = 86400\n";
    let server = ServerProcess::start_with("c", "{ kind = \"api\" }", &limits, stream).await?;
    let http = reqwest::Client::new();
    let exact = Arc::new(signer_payer());
    let pid = server.pid().to_string();
    let (cpu0, t) = (cpu_secs(&pid), Instant::now());
    let results: Vec<Result<(), String>> = futures::stream::iter(0..n)
        .map(|_| {
            let (http, exact, base) = (http.clone(), exact.clone(), server.base.clone());
            async move { session(&http, &exact, &base, scheme, slices).await }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let secs = t.elapsed().as_secs_f64();
    let cpu1 = cpu_secs(&pid);
    drop(server);
    Ok(Side {
        secs,
        paid: results.iter().filter(|r| r.is_ok()).count(),
        error: results.into_iter().find_map(Result::err),
        cpu: (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1),
    })
}

/// `n` sessions of `slices` slices each way; sessions per second and the server's CPU
/// per session (user + system), channel against exact.
pub(crate) async fn bench_channel_sessions(r: &mut Report, n: usize, slices: u64) {
    let slices = slices.max(1);
    let (exact, channel) = match (
        run_side(Scheme::Exact, n, slices).await,
        run_side(Scheme::Channel, n, slices).await,
    ) {
        (Ok(e), Ok(c)) => (e, c),
        (Err(e), _) | (_, Err(e)) => {
            r.plain(
                &format!("9b. channel sessions: {e}"),
                f64::NAN,
                "",
                "server",
                Some(false),
            );
            return;
        }
    };
    let all = exact.paid == n && channel.paid == n;
    let failures = [("exact", &exact.error), ("channel", &channel.error)]
        .iter()
        .filter_map(|(s, e)| e.as_ref().map(|e| format!("; first {s} failure: {e}")))
        .collect::<String>();
    let what = format!("{n} sessions x {slices} slices via the renew URL");
    r.rows.push(Row {
        name: format!("9b. {what}: channel (1 deposit + {} vouchers)", slices - 1),
        value: channel.per_sec(),
        unit: "sessions/s",
        baseline: Some((
            format!(
                "exact, {slices} EIP-3009 payments per session (same run; {:.1} s against {:.1} s)",
                exact.secs, channel.secs
            ),
            exact.per_sec(),
        )),
        ratio: Some(channel.per_sec() / exact.per_sec()),
        target: format!(
            "report; all paid ({}/{n} channel, {}/{n} exact){failures}",
            channel.paid, exact.paid
        ),
        met: Some(all),
    });
    let (cu, cs) = channel.cpu_us();
    let (eu, es) = exact.cpu_us();
    r.rows.push(Row {
        name: format!("9b. {what}: server CPU per channel session"),
        value: cu + cs,
        unit: "us",
        baseline: Some((
            format!("per exact session (user {eu:.0} + system {es:.0})"),
            eu + es,
        )),
        ratio: Some((cu + cs) / (eu + es)),
        target: format!("report (channel: user {cu:.0} + system {cs:.0})"),
        met: None,
    });
}
