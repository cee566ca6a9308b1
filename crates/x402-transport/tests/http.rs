//! The reqwest adapter over loopback: bodies are capped while they are read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x402_transport::{HttpTransport, Method, ReqwestTransport};

#[tokio::test]
async fn an_endless_chunked_body_is_cut_off_not_buffered() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        s.write_all(b"HTTP/1.1 402 Payment Required\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
        // 64 MiB without a length, unless the client stops reading.
        for _ in 0..1024 {
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let t = ReqwestTransport::standard().unwrap();
    let r = t
        .request(Method::Get, &format!("http://{addr}/v2/schema/s"), &[])
        .await;
    assert!(
        matches!(&r, Err(e) if e.is_frame() && e.to_string().contains("too large")),
        "{r:?}"
    );
}

/// A port nothing listens on: bound, then closed.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A plain TCP server that answers anything with a plain-HTTP 400 (as a
/// plain HTTP server answers a TLS hello), or never answers.
async fn plain_server(answer: bool) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if answer {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                } else {
                    tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                }
            });
        }
    });
    port
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = format!("{e}");
    let mut c = e.source();
    while let Some(x) = c {
        out.push_str(&format!(" <- {x} [{x:?}]"));
        c = x.source();
    }
    out
}

async fn http_error(url: &str) -> x402_transport::TransportError {
    let t = ReqwestTransport::new(
        std::time::Duration::from_secs(3),
        std::time::Duration::from_millis(500),
    )
    .unwrap();
    t.request(Method::Get, url, &[]).await.unwrap_err()
}

async fn ws_error(url: &str) -> x402_transport::TransportError {
    use x402_transport::{ConnectError, WsConnector};
    let c = x402_transport::TungsteniteConnector::new(std::time::Duration::from_secs(3));
    match c.connect(url, &[]).await {
        Err(ConnectError::Failed(e)) => e,
        Err(ConnectError::Refused(r)) => panic!("{url}: answered {}", r.status),
        Ok(_) => panic!("{url}: connected"),
    }
}

#[tokio::test]
async fn failures_are_classified_refused_dns_tls_timeout() {
    use x402_transport::TransportErrorKind as K;
    let closed = closed_port().await;
    let plain = plain_server(true).await;
    let silent = plain_server(false).await;
    let cases: [(&str, String, K); 7] = [
        (
            "http",
            format!("http://127.0.0.1:{closed}/v2/schema/s"),
            K::Refused,
        ),
        (
            "ws",
            format!("ws://127.0.0.1:{closed}/v2/stream/s"),
            K::Refused,
        ),
        (
            "http",
            "http://nonexistent.invalid/v2/schema/s".into(),
            K::Dns,
        ),
        ("ws", "ws://nonexistent.invalid/v2/stream/s".into(), K::Dns),
        (
            "http",
            format!("https://127.0.0.1:{plain}/v2/schema/s"),
            K::Tls,
        ),
        ("ws", format!("wss://127.0.0.1:{plain}/v2/stream/s"), K::Tls),
        (
            "http",
            format!("http://127.0.0.1:{silent}/v2/schema/s"),
            K::Timeout,
        ),
    ];
    for (t, url, want) in cases {
        let e = if t == "http" {
            http_error(&url).await
        } else {
            ws_error(&url).await
        };
        assert_eq!(e.kind(), want, "{url}: {}", chain(&e));
        // Connect failures sent nothing; a timeout after connecting may have.
        assert_eq!(e.is_connect(), want != K::Timeout, "{url}: {e}");
        assert_eq!(e.is_timeout(), want == K::Timeout, "{url}: {e}");
        // The text never holds the URL (a token may be in it).
        assert!(!e.to_string().contains("127.0.0.1"), "{e}");
    }
}
