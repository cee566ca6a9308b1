//! The reqwest adapter over loopback: bodies are capped while they are read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x402_transport::{HttpTransport, Method, ReqwestTransport, TransportError};

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
        matches!(&r, Err(TransportError::Frame(m)) if m.contains("too large")),
        "{r:?}"
    );
}
