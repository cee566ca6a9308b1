//! The server's edge on real sockets: CORS for browsers, readiness, a failed
//! source, trusted proxies (X-Forwarded-For and the PROXY protocol), and the
//! metrics endpoint's families, labels, key and own listener.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use x402_server::SourceConfig;
use x402_types::{ErrorBody, ErrorCode, PathVersion, ServerMessage};

use crate::harness::{T, error_of, next_msg, start, start_cfg, stream};

#[tokio::test]
async fn cors_lets_browser_pages_pay_and_read_the_x402_headers() {
    let t = start().await;
    // The preflight of a paying POST from another origin.
    let r = t
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v2/renew/s?t=x", t.http),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            // What `@x402/fetch` sends on its paid retry.
            "content-type,payment-signature,access-control-expose-headers",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "preflight answered");
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed.contains("payment-signature") && allowed.contains("access-control-expose-headers"),
        "{allowed}"
    );
    // The 402 itself exposes PAYMENT-REQUIRED to the page's script.
    let r = t
        .client
        .get(format!("{}/v2/schema/s", t.http))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("payment-required") && exposed.contains("payment-response"),
        "{exposed}"
    );
}

#[tokio::test]
async fn cors_origins_can_be_narrowed() {
    let t = start_cfg(|c| c.http.cors_origins = vec!["https://mine.example".into()]).await;
    let origin_of = |o: &'static str| {
        let url = format!("{}/streams", t.http);
        let client = t.client.clone();
        async move {
            let r = client.get(url).header("origin", o).send().await.unwrap();
            r.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_string())
        }
    };
    assert_eq!(
        origin_of("https://mine.example").await.as_deref(),
        Some("https://mine.example")
    );
    assert_eq!(origin_of("https://evil.example").await, None);
}

#[tokio::test]
async fn paying_the_schema_url_says_where_payments_go() {
    let t = start().await;
    let q = t.schema(PathVersion::V2, "s").await;
    let r = t
        .client
        .get(format!("{}/v2/schema/s", t.http))
        .header("PAYMENT-SIGNATURE", t.pay(&q))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let required = x402_types::PaymentRequiredV2::from_header(
        r.headers()["payment-required"].to_str().unwrap(),
    )
    .unwrap();
    let said = required.error.unwrap_or_default();
    assert!(
        said.contains("only quotes") && said.contains("/v2/renew/s"),
        "{said}"
    );
    assert_eq!(t.credited(), 0, "nothing was settled");
}

async fn get_json(t: &T, path: &str) -> (u16, serde_json::Value) {
    let r = t
        .client
        .get(format!("{}{path}", t.http))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// A replay that ends (looping = false) takes its stream off sale: /readyz
/// says why, the schema answers 503 `source_unavailable`, a paid socket is
/// told, and the stream is sold again once events flow.
#[tokio::test(start_paused = true)]
async fn a_failed_source_is_not_sold_and_its_buyers_are_told() {
    let dir = atomicstream_testkit::scratch("edge-replay");
    let file = dir.join("events.jsonl");
    std::fs::write(&file, "{\"n\":1}\n{\"n\":2}\n").unwrap();
    let t = start_cfg(|c| {
        let mut r = stream("r", 60, 60);
        r.source = SourceConfig::Replay {
            file: file.clone(),
            rate: 1000.0,
            looping: false,
        };
        c.streams.push(r);
    })
    .await;
    let (status, body) = get_json(&t, "/readyz").await;
    // A paid socket on `s` before its source fails.
    let q = t.schema(PathVersion::V2, "s").await;
    let (mut ws, _) = t.open(&q).await;
    // The replay of two events at 1000/s is over within moments.
    let mut ready = (status, body);
    // (/readyz reuses its answer for a second.)
    for _ in 0..250 {
        if ready.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = get_json(&t, "/readyz").await;
    }
    assert_eq!(ready.0, 503, "{}", ready.1);
    let problems = ready.1["problems"].to_string();
    assert!(
        problems.contains("stream r") && problems.contains("ended"),
        "{problems}"
    );
    let r = t
        .client
        .get(format!("{}/v2/schema/r", t.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body = ErrorBody::from_json(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body.error, ErrorCode::SourceUnavailable);
    assert!(body.message.contains("not sold"), "{}", body.message);
    // A second slice bought while the source is live.
    let renew_url = q
        .schema
        .websocket_endpoint
        .replace("ws://", "http://")
        .replace("/stream/", "/renew/");
    let bought = t.pay(&q);
    let r = t.renew(&renew_url, PathVersion::V2, Some(&bought)).await;
    assert_eq!(r.status(), 200);
    // Another buyer's quote, taken while the stream was on sale.
    let q2 = t.schema(PathVersion::V2, "s").await;
    // `s` fails now, mid-slice: its buyer is told on the socket.
    t.state.streams["s"]
        .hub
        .source_down("the upstream feed disconnected");
    loop {
        match next_msg(&mut ws).await {
            ServerMessage::Error { code, message, .. } => {
                assert_eq!(code, ErrorCode::SourceUnavailable);
                assert!(message.contains("upstream feed"), "{message}");
                break;
            }
            ServerMessage::Event(_) | ServerMessage::Renewed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // A payment already made is answered as before (a resend after 202 must
    // learn its fate, never "nothing moved")...
    let again = t.renew(&renew_url, PathVersion::V2, Some(&bought)).await;
    assert_eq!(
        again.status(),
        200,
        "the same payload is answered as credited"
    );
    // ...a new one is refused before anything is claimed.
    let renew_url2 = q2
        .schema
        .websocket_endpoint
        .replace("ws://", "http://")
        .replace("/stream/", "/renew/");
    let renew = t
        .renew(&renew_url2, PathVersion::V2, Some(&t.pay(&q2)))
        .await;
    assert_eq!(renew.status(), 503);
    let body = ErrorBody::from_json(&renew.bytes().await.unwrap()).unwrap();
    assert_eq!(body.error, ErrorCode::SourceUnavailable);
    assert_eq!(t.credited(), 2, "nothing settled for the refused one");
    // ...and the stream is for sale again once its source publishes.
    t.publish(1);
    let r = t
        .client
        .get(format!("{}/v2/schema/s", t.http))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
}

#[tokio::test]
async fn readyz_is_ready_and_healthz_is_liveness() {
    let t = start().await;
    let (status, body) = get_json(&t, "/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let (status, _) = get_json(&t, "/healthz").await;
    assert_eq!(status, 200);
    // Health, readiness and metrics are not for other origins' pages.
    for path in ["/readyz", "/healthz", "/metrics"] {
        let r = t
            .client
            .get(format!("{}{path}", t.http))
            .header("origin", "https://app.example")
            .send()
            .await
            .unwrap();
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{path} answers CORS"
        );
    }
}

/// The schema of `s` over a raw connection that first writes `prefix`:
/// the websocket endpoint and the signed payment for it.
async fn paid_quote_via(t: &T, prefix: &[u8]) -> (String, String) {
    let addr = t.http.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(prefix).await.unwrap();
    let req = format!("GET /v2/schema/s HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let header = head
        .lines()
        .find_map(|l| l.strip_prefix("payment-required: "))
        .unwrap();
    let offer = x402_types::PaymentRequiredV2::from_header(header)
        .unwrap()
        .into_offer()
        .unwrap();
    let schema = x402_types::Schema::from_json(body.as_bytes()).unwrap();
    let payment = t.payer.sign(&offer).unwrap().to_header();
    (schema.websocket_endpoint, payment)
}

/// Opens a paid socket on `s` through a raw TCP connection that first
/// writes `prefix` (a PROXY header, or nothing) and carries `xff`.
async fn socket_via(t: &T, prefix: &[u8], xff: Option<&str>) -> Result<(), (u16, ErrorCode)> {
    let (url, payment) = paid_quote_via(t, prefix).await;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("PAYMENT-SIGNATURE", payment.parse().unwrap());
    if let Some(x) = xff {
        req.headers_mut()
            .insert("x-forwarded-for", x.parse().unwrap());
    }
    let addr = t.http.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(prefix).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => {
            // Held open for the rest of the test.
            std::mem::forget(ws);
            Ok(())
        }
        Err(e) => {
            let (status, body) = error_of(e);
            Err((status, body.error))
        }
    }
}

#[tokio::test]
async fn forwarded_for_counts_clients_behind_a_trusted_proxy_only() {
    let one_per_ip = |c: &mut x402_server::Config| c.limits.max_connections_per_ip = 1;
    // Not trusted: the header is ignored, everyone is 127.0.0.1.
    let t = start_cfg(one_per_ip).await;
    socket_via(&t, b"", Some("198.51.100.1")).await.unwrap();
    let e = socket_via(&t, b"", Some("198.51.100.2")).await.unwrap_err();
    assert_eq!(e, (429, ErrorCode::TooManyConnections));
    // Trusted: each forwarded client has its own allowance.
    let t = start_cfg(|c| {
        one_per_ip(c);
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    socket_via(&t, b"", Some("198.51.100.1")).await.unwrap();
    socket_via(&t, b"", Some("6.6.6.6, 198.51.100.2"))
        .await
        .unwrap();
    let e = socket_via(&t, b"", Some("198.51.100.1")).await.unwrap_err();
    assert_eq!(e, (429, ErrorCode::TooManyConnections));
}

#[tokio::test]
async fn proxy_protocol_names_the_client_and_is_required_from_the_proxy() {
    let t = start_cfg(|c| {
        c.limits.max_connections_per_ip = 1;
        c.http.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.http.proxy_protocol = true;
    })
    .await;
    let v1 = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 4021\r\n").into_bytes();
    socket_via(&t, &v1("198.51.100.1"), None).await.unwrap();
    socket_via(&t, &v1("198.51.100.2"), None).await.unwrap();
    let e = socket_via(&t, &v1("198.51.100.1"), None).await.unwrap_err();
    assert_eq!(e, (429, ErrorCode::TooManyConnections));
    // From the proxy, a connection without the header is dropped before HTTP.
    let addr = t.http.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "no HTTP answer: {}", String::from_utf8_lossy(&buf));
}

async fn scrape(client: &reqwest::Client, url: &str, key: Option<&str>) -> (u16, String) {
    let mut r = client.get(url);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn metrics_show_every_family_from_the_start() {
    let t = start().await;
    let (status, text) = scrape(&t.client, &format!("{}/metrics", t.http), None).await;
    assert_eq!(status, 200);
    for needle in [
        "atomicstream_payments_refused_total{stream=\"s\",code=\"payment_invalid\"} 0",
        "atomicstream_payments_credited_total{stream=\"s\"} 0",
        "atomicstream_revenue_atomic_total{stream=\"s\",asset=\"0x036CbD53842c5426634e7929541eC2318f3dCF7e\",network=\"eip155:84532\"} 0",
        "atomicstream_events_dropped_total{outcome=\"unpaid\"} 0",
        "atomicstream_store_errors_total 0",
        "atomicstream_build_info{version=",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_start_time_seconds ",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[tokio::test]
async fn metrics_can_require_a_key_or_live_on_their_own_address() {
    let key = "a-scrape-key-of-some-length";
    let t = start_cfg(|c| c.http.metrics_key = Some(key.into())).await;
    let url = format!("{}/metrics", t.http);
    assert_eq!(scrape(&t.client, &url, None).await.0, 401);
    assert_eq!(
        scrape(&t.client, &url, Some("wrong-key-wrong-key")).await.0,
        401
    );
    let (status, text) = scrape(&t.client, &url, Some(key)).await;
    assert_eq!(status, 200);
    assert!(text.contains("atomicstream_sockets"), "{text}");

    let port = atomicstream_testkit::free_port();
    let t = start_cfg(|c| {
        c.http.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    })
    .await;
    assert_eq!(
        scrape(&t.client, &format!("{}/metrics", t.http), None)
            .await
            .0,
        404,
        "not on the public listener"
    );
    let (status, text) = scrape(&t.client, &format!("http://127.0.0.1:{port}/metrics"), None).await;
    assert_eq!(status, 200);
    assert!(text.contains("atomicstream_sockets"), "{text}");
}
