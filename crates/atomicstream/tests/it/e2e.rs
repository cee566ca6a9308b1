//! The facade against the real server on loopback, v1 and v2.

use std::sync::Arc;
use std::time::Duration;

use atomicstream::transport::faults::Blip;
use atomicstream::{
    Amount, Client, ClientEvent, EndReason, EvmExactPayer, LocalSigner, PathVersion, SpendPolicy,
};
use futures::StreamExt;
use x402_server::{
    Config, DEV_PAY_TO, EmbeddedFacilitator, ServerBuilder, SourceConfig, StreamConfig,
};

const KEY: &str = atomicstream_testkit::DEV_KEY;

struct Env {
    base: String,
    ledger: Arc<EmbeddedFacilitator>,
    state: Arc<x402_server::AppState>,
}

async fn server(slice: u64) -> Env {
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some("facade-test-secret-facade-test-secret".into());
    cfg.streams = vec![StreamConfig {
        id: "s".into(),
        title: "S".into(),
        description: "test".into(),
        price_per_minute: "0.06".into(), // 0.002 USDC per 2-second slice
        slice_seconds: slice,
        network: "base-sepolia".into(),
        asset: None,
        pay_to: DEV_PAY_TO.into(),
        max_timeout_seconds: 60,
        source: SourceConfig::Synthetic {
            rate: 50.0,
            symbol: "T".into(),
            pad: 0,
        },
        channel: None,
    }];
    let ledger = Arc::new(EmbeddedFacilitator::default());
    let s = ServerBuilder::new(cfg)
        .facilitator(ledger.clone())
        .bind()
        .await
        .unwrap();
    let base = s.http_base().to_string();
    let state = s.state().clone();
    s.spawn();
    Env {
        base,
        ledger,
        state,
    }
}

fn client(base: &str, v: PathVersion, cap: &str, budget: &str) -> atomicstream::ClientBuilder {
    Client::builder()
        .base_url(base)
        .version(v)
        .payer(Arc::new(EvmExactPayer::new(
            LocalSigner::from_hex(KEY).unwrap(),
        )))
        .policy(
            SpendPolicy::new(Amount::from_display(cap, 6).unwrap())
                .with_lifetime_budget(Amount::from_display(budget, 6).unwrap()),
        )
}

async fn collect(
    mut s: atomicstream::StreamSession,
    limit: Duration,
) -> (Vec<ClientEvent>, atomicstream::Progress) {
    let mut evs = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(e)) => {
                let end = matches!(e, ClientEvent::Ended(_));
                evs.push(e);
                if end {
                    break;
                }
            }
            Ok(None) => break,
            Err(_) => {
                s.stop();
            }
        }
    }
    (evs, s.progress())
}

fn seqs(evs: &[ClientEvent]) -> Vec<u64> {
    evs.iter()
        .filter_map(|e| {
            if let ClientEvent::Data(d) = e {
                Some(d.seq)
            } else {
                None
            }
        })
        .collect()
}

async fn streams_renews_and_resumes(v: PathVersion) {
    let env = server(2).await;
    let blip = Blip::new();
    let c = client(&env.base, v, "0.01", "1")
        .max_slices(3)
        .http_transport(Arc::new(blip.http(Arc::new(
            atomicstream::ReqwestTransport::standard().unwrap(),
        ))))
        .ws_transport(Arc::new(
            blip.ws(Arc::new(atomicstream::TungsteniteConnector::default())),
        ))
        .build()
        .unwrap();
    let info = c.schema("s").await.unwrap();
    assert_eq!(info.price_per_slice, "0.002");
    assert_eq!(info.price_per_minute, "0.06");
    let s = c.open("s").await.unwrap();
    let (evs, p) = collect(s, Duration::from_secs(20)).await;
    assert!(
        matches!(evs.last(), Some(ClientEvent::Ended(EndReason::SliceLimit))),
        "{:?}",
        evs.last()
    );
    assert_eq!(p.slices, 3);
    assert_eq!(p.paid, Amount::from(3 * 2_000));
    assert!(p.reconnects >= 1, "the socket was cut");
    assert!(p.renew_retries >= 1, "the renewal answer was lost");
    assert!(evs.iter().any(|e| matches!(e, ClientEvent::Resumed { .. })));
    // In order, no duplicates, no unexplained gap.
    let s = seqs(&evs);
    assert!(s.len() > 100, "{} events", s.len());
    assert!(
        s.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or duplicate in {s:?}"
    );
    // The server was paid exactly three times.
    assert_eq!(env.ledger.ledger().len(), 3);
}

#[tokio::test]
async fn v1_streams_renews_and_resumes() {
    streams_renews_and_resumes(PathVersion::V1).await;
}

#[tokio::test]
async fn v2_streams_renews_and_resumes() {
    streams_renews_and_resumes(PathVersion::V2).await;
}

/// The source fails mid-slice: the session reports it (typed) and goes on.
#[tokio::test]
async fn a_failed_source_is_reported_to_the_buyer() {
    let env = server(30).await;
    let client = client(&env.base, PathVersion::V2, "0.05", "0.05")
        .build()
        .unwrap();
    let mut s = client.open("s").await.unwrap();
    while !matches!(s.next().await, Some(ClientEvent::Data(_))) {}
    env.state.streams["s"].hub.source_down("the feed is gone");
    let said = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.next().await {
                Some(ClientEvent::SourceUnavailable { message }) => break message,
                Some(ClientEvent::Ended(r)) => {
                    panic!("ended: {r:?}")
                }
                Some(_) => {}
                None => panic!("session ended"),
            }
        }
    })
    .await
    .expect("the buyer is told");
    assert!(said.contains("the feed is gone"), "{said}");
    s.stop();
}

#[tokio::test]
async fn budget_exhaustion_ends_with_a_reason() {
    let env = server(2).await;
    // Two slices of budget.
    let c = client(&env.base, PathVersion::V2, "0.01", "0.004")
        .build()
        .unwrap();
    let (evs, p) = collect(c.open("s").await.unwrap(), Duration::from_secs(20)).await;
    match evs.last() {
        Some(ClientEvent::Ended(EndReason::PaymentDeclined {
            policy: true,
            message,
        })) => assert!(message.contains("budget"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.slices, 2);
    assert_eq!(env.ledger.ledger().len(), 2);
}

#[tokio::test]
async fn refusals_are_typed_errors() {
    let env = server(60).await;
    // Policy: the slice costs more than the cap.
    let e = client(&env.base, PathVersion::V2, "0.001", "1")
        .build()
        .unwrap()
        .open("s")
        .await
        .err()
        .unwrap();
    assert!(e.is_policy() && !e.is_retryable(), "{e}");
    // Said in USDC for a person, and typed: the cap and the excess.
    assert!(e.to_string().contains("0.001 USDC"), "{e}");
    assert!(
        matches!(
            &e,
            atomicstream::Error::Declined {
                policy: true,
                source: Some(atomicstream::payer::Error::Policy(
                    atomicstream::PolicyError::PerPaymentCap { limit, .. }
                )),
                ..
            } if *limit == Amount::from_display("0.001", 6).unwrap()
        ),
        "{e:?}"
    );
    // Unknown stream.
    let e = client(&env.base, PathVersion::V2, "0.01", "1")
        .build()
        .unwrap()
        .open("nope")
        .await
        .err()
        .unwrap();
    assert!(matches!(e, atomicstream::Error::UnknownStream(_)), "{e}");
    // Nothing listening: a retryable transport error.
    let e = client("http://127.0.0.1:9", PathVersion::V2, "0.01", "1")
        .build()
        .unwrap()
        .schema("s")
        .await
        .err()
        .unwrap();
    assert!(e.is_retryable(), "{e}");
    // A payer whose payments the server refuses (it signs for another chain's domain).
    struct WrongChain(EvmExactPayer);
    #[async_trait::async_trait]
    impl atomicstream::Payer for WrongChain {
        fn supports(&self, s: &str, n: &x402_types::Network) -> bool {
            self.0.supports(s, n)
        }
        async fn pay(
            &self,
            offer: &x402_types::Offer,
        ) -> Result<x402_types::PaymentPayload, x402_payer::Error> {
            let mut p = self.0.pay(offer).await?;
            if let x402_types::PaymentPayload::V2(v) = &mut p
                && let x402_types::SchemePayload::ExactEvm(e) = &mut v.payload
            {
                e.authorization.value = Amount::from(1);
            }
            Ok(p)
        }
    }
    let c = client(&env.base, PathVersion::V2, "0.1", "1")
        .payer(Arc::new(WrongChain(EvmExactPayer::new(
            LocalSigner::from_hex(KEY).unwrap(),
        ))))
        .build()
        .unwrap();
    let e = c.open("s").await.err().unwrap();
    assert!(e.is_payment_refused(), "{e}");
    assert!(env.ledger.ledger().is_empty());
}

#[tokio::test]
async fn host_mismatch_is_refused_before_paying() {
    // A server that advertises another host in its websocketEndpoint.
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.public_ws = Some("ws://evil.example:1".into());
    let ledger = Arc::new(EmbeddedFacilitator::default());
    let s = ServerBuilder::new(cfg)
        .facilitator(ledger.clone())
        .bind()
        .await
        .unwrap();
    let base = s.http_base().to_string();
    s.spawn();
    let e = client(&base, PathVersion::V2, "0.01", "1")
        .build()
        .unwrap()
        .open("btc-usd")
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("host mismatch"), "{e}");
    assert!(ledger.ledger().is_empty());
}
