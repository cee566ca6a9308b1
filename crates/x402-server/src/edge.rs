//! The server's edge towards proxies and browsers: the PROXY protocol
//! header from trusted load balancers, the client address behind
//! `X-Forwarded-For`, and CORS. Rules live in [`crate::config::HttpConfig`];
//! this file does the I/O.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::net::TcpStream;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{HttpConfig, canonical};

/// The largest PROXY header read: v1 is at most 107 bytes; v2 carries TLVs,
/// which proxies keep short. Longer is refused.
const MAX_PROXY_HEADER: usize = 1024;

/// Why a trusted proxy's connection was dropped before HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The peer closed or the socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The header did not arrive in time.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// Not a PROXY header, or a malformed one.
    #[error("not a valid PROXY protocol header: {0}")]
    Invalid(String),
}

/// Reads the PROXY protocol header (v1 or v2) that a trusted proxy sends
/// first, consuming exactly its bytes, and returns the client address it
/// names (`None` for `UNKNOWN` / `LOCAL`: the proxy's own health check).
pub async fn read_proxy_header(
    tcp: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(timeout, read_header(tcp))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(timeout))?
}

async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; MAX_PROXY_HEADER];
    loop {
        // Peek, not read: only the header's own bytes are consumed; what
        // follows is the HTTP request, left for hyper.
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        match parse(&buf[..n]) {
            Parsed::Incomplete if n < MAX_PROXY_HEADER => {
                // More bytes are on their way; wait for them without spinning.
                tcp.readable().await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Parsed::Incomplete => {
                return Err(ProxyHeaderError::Invalid(format!(
                    "longer than {MAX_PROXY_HEADER} bytes"
                )));
            }
            Parsed::Invalid(e) => return Err(ProxyHeaderError::Invalid(e)),
            Parsed::Header { len, source } => {
                let mut skip = vec![0u8; len];
                tcp.read_exact(&mut skip).await?;
                return Ok(source);
            }
        }
    }
}

/// One parse of the bytes seen so far.
#[derive(Debug, PartialEq)]
enum Parsed {
    Incomplete,
    Invalid(String),
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
}

fn parse(bytes: &[u8]) -> Parsed {
    use ppp::{HeaderResult, PartialResult};
    let result = HeaderResult::parse(bytes);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((
                    IpAddr::V4(a.source_address),
                    a.source_port,
                ))),
                ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((
                    IpAddr::V6(a.source_address),
                    a.source_port,
                ))),
                ppp::v1::Addresses::Unknown => None,
            };
            Parsed::Header {
                len: h.header.len(),
                source,
            }
        }
        HeaderResult::V2(Ok(h)) => {
            let local = matches!(h.command, ppp::v2::Command::Local);
            let source = match h.addresses {
                _ if local => None,
                ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((
                    IpAddr::V4(a.source_address),
                    a.source_port,
                ))),
                ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((
                    IpAddr::V6(a.source_address),
                    a.source_port,
                ))),
                ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
            };
            Parsed::Header {
                len: h.len(),
                source,
            }
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(e.to_string()),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(e.to_string()),
    }
}

/// The client's address for limits and logs: the connection's peer (after
/// any PROXY header), or, from a trusted proxy, what `X-Forwarded-For` says.
pub fn client_ip(cfg: &HttpConfig, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let peer = canonical(peer.ip());
    if cfg.trusted_proxies.is_empty() {
        return peer;
    }
    cfg.client_ip(
        peer,
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// The x402 headers a browser page must be able to send and read. The
/// official SDKs (`@x402/fetch`, the Python client) also send an
/// `Access-Control-Expose-Headers` request header on their paid retry, so
/// a browser asks for it in the preflight.
const SENT: [&str; 5] = [
    "content-type",
    "payment-signature",
    "x-payment",
    "payment-identifier",
    "access-control-expose-headers",
];
const EXPOSED: [&str; 3] = ["payment-required", "payment-response", "x-payment-response"];

/// CORS for the catalog, schema, renew and stream endpoints; `None` when
/// `cors_origins` is empty (no CORS headers at all).
pub fn cors(cfg: &HttpConfig) -> Option<CorsLayer> {
    if cfg.cors_origins.is_empty() {
        return None;
    }
    let origin = if cfg.cors_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            cfg.cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(SENT.map(HeaderName::from_static))
            .expose_headers(EXPOSED.map(HeaderName::from_static))
            .max_age(Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn v1_and_v2_headers_name_the_client() {
        let v1 = b"PROXY TCP4 198.51.100.7 10.0.0.1 51234 4021\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(v1),
            Parsed::Header {
                len: 45,
                source: Some("198.51.100.7:51234".parse().unwrap())
            }
        );
        assert_eq!(parse(b"PROXY TCP4 198.51"), Parsed::Incomplete);
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(_)
        ));
        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:443".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:4021".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = v2.clone();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&bytes),
            Parsed::Header {
                len: v2.len(),
                source: Some("[2001:db8::7]:443".parse().unwrap())
            }
        );
        assert_eq!(parse(&v2[..10]), Parsed::Incomplete);
    }

    #[test]
    fn parse_never_panics_on_junk() {
        // A cheap sweep of prefixes and single-byte corruptions of valid headers.
        let v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 443 4021\r\n".to_vec();
        for i in 0..v1.len() {
            let _ = parse(&v1[..i]);
            for b in [0u8, b' ', b'\r', 0xff] {
                let mut x = v1.clone();
                x[i] = b;
                let _ = parse(&x);
            }
        }
    }
}
