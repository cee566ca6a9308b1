//! The API's guard: cross-site and rebinding requests refused, proper ones served.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt as _;
use x402_types::PathVersion;

use super::*;
use crate::EmbeddedFacilitator;
use crate::embedded::tests::request;

const LISTEN: &str = "127.0.0.1:4022";
const KEY: &str = "test-key-test-key-test-key-test-key";

fn settle_body() -> String {
    serde_json::to_string(&request(PathVersion::V2)).unwrap()
}

/// A `POST /settle` as a browser or a script would send it.
fn post(host: &str, content_type: Option<&str>, origin: Option<&str>) -> Request<Body> {
    let mut b = Request::builder()
        .method("POST")
        .uri("/settle")
        .header("host", host);
    if let Some(t) = content_type {
        b = b.header("content-type", t);
    }
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    b.body(Body::from(settle_body())).unwrap()
}

async fn status(router: &Router, req: Request<Body>) -> StatusCode {
    router.clone().oneshot(req).await.unwrap().status()
}

fn open(f: &Arc<EmbeddedFacilitator>) -> Router {
    facilitator_router(f.clone(), LISTEN.parse().unwrap())
}

#[tokio::test]
async fn a_text_plain_post_is_refused_before_the_facilitator_sees_it() {
    let f = Arc::new(EmbeddedFacilitator::default());
    let r = open(&f);
    for t in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        assert_eq!(
            status(&r, post("127.0.0.1:4022", t, None)).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{t:?}"
        );
    }
    assert!(f.ledger().is_empty(), "nothing settled");
}

#[tokio::test]
async fn a_request_with_an_origin_is_refused_unless_allowed() {
    let f = Arc::new(EmbeddedFacilitator::default());
    let r = open(&f);
    for o in ["https://evil.example", "null", "http://127.0.0.1:4022"] {
        let req = post("127.0.0.1:4022", Some("application/json"), Some(o));
        assert_eq!(status(&r, req).await, StatusCode::FORBIDDEN, "{o}");
    }
    let get = Request::builder()
        .uri("/supported")
        .header("host", "localhost:4022")
        .header("origin", "https://evil.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(status(&r, get).await, StatusCode::FORBIDDEN);
    assert!(f.ledger().is_empty());
    // An allowed origin (any case, trailing slash or not) is served.
    let allowed = FacilitatorApi::new()
        .allow_origin("https://App.example/")
        .router(f.clone(), LISTEN.parse().unwrap())
        .unwrap();
    let req = post(
        "127.0.0.1:4022",
        Some("application/json"),
        Some("https://app.example"),
    );
    assert_eq!(status(&allowed, req).await, StatusCode::OK);
    assert_eq!(f.ledger().len(), 1);
}

#[tokio::test]
async fn a_foreign_host_is_refused_as_dns_rebinding() {
    let f = Arc::new(EmbeddedFacilitator::default());
    let r = open(&f);
    for host in [
        "evil.example:4022",
        "evil.example",
        "localhost.evil.example",
        "10.0.0.1:4022",
        "",
    ] {
        let req = post(host, Some("application/json"), None);
        assert_eq!(
            status(&r, req).await,
            StatusCode::MISDIRECTED_REQUEST,
            "{host:?}"
        );
    }
    assert!(f.ledger().is_empty());
    // The listen address, another loopback literal and localhost are this server.
    for host in [
        "127.0.0.1:4022",
        "127.0.0.1",
        "LOCALHOST:4022",
        "[::1]:4022",
    ] {
        let req = post(host, Some("application/json"), None);
        assert_eq!(status(&r, req).await, StatusCode::OK, "{host}");
    }
    // A configured name, with any port or only its own.
    let named = FacilitatorApi::new()
        .allow_host("pay.example.com")
        .allow_host("other.example:8443")
        .router(f.clone(), "0.0.0.0:4022".parse().unwrap())
        .unwrap();
    for (host, ok) in [
        ("pay.example.com", true),
        ("Pay.Example.Com.:443", true),
        ("other.example:8443", true),
        ("other.example:8444", false),
        ("localhost", true),
        ("192.168.1.7:4022", true),
        ("evil.example", false),
    ] {
        let want = if ok {
            StatusCode::OK
        } else {
            StatusCode::MISDIRECTED_REQUEST
        };
        let req = post(host, Some("application/json"), None);
        assert_eq!(status(&named, req).await, want, "{host}");
    }
}

#[tokio::test]
async fn a_proper_json_request_is_served_and_refusals_stay_200() {
    let f = Arc::new(EmbeddedFacilitator::default());
    let r = open(&f);
    let body = settle_body();
    let settle = |body: String| {
        Request::builder()
            .method("POST")
            .uri("/settle")
            .header("host", "127.0.0.1:4022")
            .header("content-type", "application/json; charset=utf-8")
            .body(Body::from(body))
            .unwrap()
    };
    let resp = r.clone().oneshot(settle(body.clone())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let first: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(first["success"], true, "{first}");
    assert_eq!(first["network"], "eip155:84532");
    // The same payload again: refused as the official facilitator refuses it, still 200.
    let resp = r.clone().oneshot(settle(body)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(again["success"], false);
    assert_eq!(again["errorReason"], "invalid_exact_evm_nonce_already_used");
    // A bad body is 400.
    assert_eq!(
        status(&r, settle("{}".into())).await,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn the_key_and_the_rate_limit_guard_the_api() {
    let f: Arc<dyn Facilitator> = Arc::new(EmbeddedFacilitator::default());
    assert!(matches!(
        guarded_router(f.clone(), "short", 10, LISTEN.parse().unwrap()),
        Err(ServeError::KeyTooShort)
    ));
    let r = guarded_router(f, KEY, 2, LISTEN.parse().unwrap()).unwrap();
    let get = |key: Option<&str>| {
        let mut b = Request::builder()
            .uri("/supported")
            .header("host", "127.0.0.1:4022");
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        b.body(Body::empty()).unwrap()
    };
    assert_eq!(status(&r, get(None)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&r, get(Some("wrong-key-wrong-key-wrong-key-wrong"))).await,
        StatusCode::UNAUTHORIZED
    );
    // The cross-site checks come first: no key is compared for them.
    let mut cross = post("evil.example", Some("application/json"), None);
    cross
        .headers_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    assert_eq!(status(&r, cross).await, StatusCode::MISDIRECTED_REQUEST);
    // Two a second: the third in the same second waits (a boundary between
    // the calls can let one more through, never all of them).
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(status(&r, get(Some(KEY))).await);
    }
    assert!(statuses.contains(&StatusCode::OK));
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[test]
fn allowed_hosts_and_origins_are_checked_when_the_router_is_built() {
    let f: Arc<dyn Facilitator> = Arc::new(EmbeddedFacilitator::default());
    for api in [
        FacilitatorApi::new().allow_host("https://pay.example"),
        FacilitatorApi::new().allow_host(""),
        FacilitatorApi::new().allow_host("pay.example:port"),
        FacilitatorApi::new().allow_origin("pay.example"),
        FacilitatorApi::new().allow_origin("https://pay.example/path"),
    ] {
        assert!(
            matches!(
                api.router(f.clone(), LISTEN.parse().unwrap()),
                Err(ServeError::InvalidAllowed { .. })
            ),
            "{api:?}"
        );
    }
    assert!(!format!("{:?}", FacilitatorApi::new().bearer_key(KEY)).contains(KEY));
}

#[tokio::test]
async fn over_loopback_a_stock_json_client_is_served() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let f = Arc::new(EmbeddedFacilitator::default());
    tokio::spawn(serve_facilitator(l, f.clone()));
    let http = reqwest::Client::new();
    let req = request(PathVersion::V1);
    let s: serde_json::Value = http
        .post(format!("http://{addr}/settle"))
        .json(&req)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["success"], true, "{s}");
    assert_eq!(
        s["network"], "base-sepolia",
        "a v1 answer names the v1 network"
    );
    // Through `localhost` too; a text/plain copy is refused.
    let plain = http
        .post(format!("http://localhost:{}/settle", addr.port()))
        .header("content-type", "text/plain")
        .body(serde_json::to_string(&req).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(f.ledger().len(), 1);
}
