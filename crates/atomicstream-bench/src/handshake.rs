//! Row family 3: schema to hello, and one renewal, against bare round trips.

use std::time::Instant;

use futures::StreamExt;
use x402_server::Limits;

use crate::fixture::{
    bare_connect, bench_client, local_server_on, quote, signer_payer, stream_cfg,
};
use crate::report::{Report, percentile};

pub(crate) async fn bench_handshake(r: &mut Report, redis: Option<&str>) {
    let local = local_server_on(vec![stream_cfg("h", 3600)], Limits::default(), redis).await;
    let tag = if redis.is_some() { " (Redis)" } else { "" };
    let http = reqwest::Client::new();
    let client = bench_client(&local);
    let rounds = 200;
    let (mut full, mut base_http, mut base_ws, mut renew, mut base_post) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut paid_ws = vec![];
    let payer = signer_payer();
    for _ in 0..rounds {
        // Full: schema -> policy -> sign -> upgrade with payment (verify + settle) -> hello.
        let t = Instant::now();
        let s = client.open("h").await.unwrap_or_else(|e| panic!("{e}"));
        full.push(t.elapsed().as_secs_f64() * 1e3);
        drop(s);
        // Baseline: the bare HTTP round trip and the bare upgrade it contains.
        let t = Instant::now();
        let (schema, offer) = quote(&http, &local.base, "h").await;
        base_http.push(t.elapsed().as_secs_f64() * 1e3);
        let pay = payer
            .sign(&offer)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_header();
        let renew_url = schema
            .websocket_endpoint
            .replace("ws://", "http://")
            .replace("/stream/", "/renew/");
        let rr = http
            .post(&renew_url)
            .header("PAYMENT-SIGNATURE", &pay)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rr.status(), 200);
        // Bare upgrade (token with paid time, no payment) up to the first frame.
        let t = Instant::now();
        let mut ws = bare_connect(&schema.websocket_endpoint, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = ws.next().await;
        base_ws.push(t.elapsed().as_secs_f64() * 1e3);
        drop(ws);
        // The same upgrade done by a bare client that pays: sign, upgrade with the
        // payment (the server verifies and settles), first frame. What is left of the
        // full handshake's overhead beyond this is the client's own structure.
        let (schema2, offer2) = quote(&http, &local.base, "h").await;
        let t = Instant::now();
        let pay2 = payer
            .sign(&offer2)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_header();
        let mut ws = bare_connect(&schema2.websocket_endpoint, Some(&pay2))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = ws.next().await;
        paid_ws.push(t.elapsed().as_secs_f64() * 1e3);
        drop(ws);
        // One renewal (sign + POST + verify + settle) against a bare POST round trip.
        let t = Instant::now();
        let pay = payer
            .sign(&offer)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_header();
        let rr = http
            .post(&renew_url)
            .header("PAYMENT-SIGNATURE", &pay)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = rr.bytes().await;
        renew.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let rr = http
            .post(format!("{}/facilitator/supported", local.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = rr.bytes().await;
        base_post.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let base: Vec<f64> = base_http.iter().zip(&base_ws).map(|(a, b)| a + b).collect();
    let paid: Vec<f64> = base_http.iter().zip(&paid_ws).map(|(a, b)| a + b).collect();
    r.plain(
        &format!("3. bare schema + paid upgrade{tag}, p50 (server's payment work included)"),
        percentile(&mut paid.clone(), 0.5),
        "ms",
        "report",
        None,
    );
    r.latency_pair(
        &format!("3. schema -> hello{tag}"),
        full,
        "bare HTTP round trip + bare upgrade",
        base,
        0.5,
    );
    r.latency_pair(
        &format!("3. one renewal{tag}"),
        renew,
        "bare HTTP POST round trip",
        base_post,
        1.0,
    );
}
