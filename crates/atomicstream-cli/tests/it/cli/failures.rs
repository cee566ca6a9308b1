//! Fast, specific failures: a server that cannot be reached ends `stream`
//! at once (nothing was paid, nothing to retry), naming the URL and the
//! cause (refused, name not resolved, TLS), with exit 5.

use std::time::{Duration, Instant};

use super::{KEY, bin, run, server};

/// Runs `stream btc-usd --base-url BASE` and returns (exit code, stderr, seconds taken).
async fn stream_at(base: &str) -> (Option<i32>, String, Duration) {
    let mut c = bin();
    c.args([
        "stream",
        "btc-usd",
        "--base-url",
        base,
        "--quiet",
        "--duration",
        "30",
    ])
    .env("X402_PRIVATE_KEY", KEY);
    let started = Instant::now();
    let out = run(c).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.stdout.is_empty(), "no events: {err}");
    (out.status.code(), err, started.elapsed())
}

fn assert_fast_failure(
    (code, err, took): (Option<i32>, String, Duration),
    url: &str,
    cause: &str,
    hint: &str,
) {
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains(&format!("cannot reach {url}: {cause}")),
        "expected the URL and `{cause}`: {err}"
    );
    assert!(err.contains(hint), "expected `{hint}`: {err}");
    // Ten retries with backoff took 33 s; one attempt is well under 15 s
    // even where the resolver is slow to say a name does not exist.
    assert!(
        took < Duration::from_secs(15),
        "no retries before the first payment: {took:?}"
    );
}

#[tokio::test]
async fn a_refused_port_ends_at_once_naming_the_url() {
    // A port bound, then released: nothing listens there.
    let port = atomicstream_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    assert_fast_failure(
        stream_at(&base).await,
        &format!("{base}/v2/schema/btc-usd"),
        "connection refused",
        "is the server running? check --base-url",
    );
}

#[tokio::test]
async fn a_name_that_does_not_resolve_ends_at_once() {
    assert_fast_failure(
        stream_at("http://nonexistent.invalid").await,
        "http://nonexistent.invalid/v2/schema/btc-usd",
        "name not resolved",
        "check the host name in --base-url",
    );
}

#[tokio::test]
async fn https_against_a_plain_server_is_a_tls_failure() {
    let base = server().await.replacen("http://", "https://", 1);
    assert_fast_failure(
        stream_at(&base).await,
        &format!("{base}/v2/schema/btc-usd"),
        "TLS handshake failed",
        "a plain server needs http://",
    );
}

/// A stream the server does not sell now (its source failed): the first
/// purchase ends at once with the server's reason, nothing paid, no retries.
#[tokio::test]
async fn a_stream_not_sold_now_ends_at_once_with_the_reason() {
    let mut cfg = x402_server::Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some("failures-test-secret-failures-test-secret".into());
    // No source of its own that would publish and so revive the stream.
    cfg.streams[0].source = x402_server::SourceConfig::Api;
    let s = x402_server::ServerBuilder::new(cfg).bind().await.unwrap();
    let base = s.http_base().to_string();
    s.state().streams["btc-usd"]
        .hub
        .source_down("the exchange feed is down");
    s.spawn();
    let (code, err, took) = stream_at(&base).await;
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains("cannot sell this stream now")
            && err.contains("source_unavailable")
            && err.contains("the exchange feed is down"),
        "{err}"
    );
    assert!(took < Duration::from_secs(15), "no retries: {took:?}");
}
