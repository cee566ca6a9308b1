//! The CLI's integration tests, one binary: the built `atomicstream` against
//! real servers on loopback (`cli`, with its browser, client-recipe,
//! failure, resume and terminal modules), several instances on one Redis
//! (`cluster`), and the facilitator command on anvil (`facilitator`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod cluster;
mod facilitator;

/// Payments credited by the server at `base`, from its `/metrics`
/// (`atomicstream_payments_credited_total`), for one stream or all.
async fn credited(base: &str, stream: Option<&str>) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = stream.map_or(String::new(), |s| format!("stream=\"{s}\""));
    let sum =
        atomicstream_testkit::metric_sum(&text, "atomicstream_payments_credited_total{", &labels);
    u64::try_from(sum).expect("a count of payments")
}
