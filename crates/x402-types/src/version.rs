//! Path versions and the URLs of one session.

use std::fmt;
use std::str::FromStr;

use crate::url::Url;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, truncate};

/// The path version of every URL of a session: `v1` (x402 v1) or `v2` (x402 v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathVersion {
    /// `/v1/...`, x402 v1 wire format.
    V1,
    /// `/v2/...`, x402 v2 wire format.
    V2,
}

impl PathVersion {
    /// `"v1"` or `"v2"`.
    pub fn segment(self) -> &'static str {
        match self {
            PathVersion::V1 => "v1",
            PathVersion::V2 => "v2",
        }
    }

    /// The schema's `version` field: `"1"` or `"2"`.
    pub fn number_str(self) -> &'static str {
        match self {
            PathVersion::V1 => "1",
            PathVersion::V2 => "2",
        }
    }

    /// The x402 wire version (1 or 2).
    pub fn x402_version(self) -> u8 {
        match self {
            PathVersion::V1 => 1,
            PathVersion::V2 => 2,
        }
    }

    /// From an x402 version number.
    pub fn from_x402_version(v: u64) -> Result<Self, Error> {
        match v {
            1 => Ok(PathVersion::V1),
            2 => Ok(PathVersion::V2),
            other => Err(Error::UnsupportedVersion(other.to_string())),
        }
    }

    /// The request header carrying a payment (`X-PAYMENT` / `PAYMENT-SIGNATURE`).
    pub fn payment_header(self) -> &'static str {
        match self {
            PathVersion::V1 => crate::x402::headers::X_PAYMENT,
            PathVersion::V2 => crate::x402::headers::PAYMENT_SIGNATURE,
        }
    }

    /// The response header carrying the settlement (`X-PAYMENT-RESPONSE` / `PAYMENT-RESPONSE`).
    pub fn payment_response_header(self) -> &'static str {
        match self {
            PathVersion::V1 => crate::x402::headers::X_PAYMENT_RESPONSE,
            PathVersion::V2 => crate::x402::headers::PAYMENT_RESPONSE,
        }
    }
}

impl fmt::Display for PathVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.segment())
    }
}

impl FromStr for PathVersion {
    type Err = Error;
    /// Accepts `v1`, `v2`, `1`, `2`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "v1" | "1" => Ok(PathVersion::V1),
            "v2" | "2" => Ok(PathVersion::V2),
            other => Err(Error::UnsupportedVersion(truncate(other))),
        }
    }
}

impl Serialize for PathVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.number_str())
    }
}

impl<'de> Deserialize<'de> for PathVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The kind of a versioned endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// `/{ver}/schema/{id}`
    Schema,
    /// `/{ver}/stream/{id}`
    Stream,
    /// `/{ver}/renew/{id}`
    Renew,
}

impl EndpointKind {
    /// The path segment.
    pub fn segment(self) -> &'static str {
        match self {
            EndpointKind::Schema => "schema",
            EndpointKind::Stream => "stream",
            EndpointKind::Renew => "renew",
        }
    }
}

fn parse_url(s: &str) -> Result<Url, Error> {
    Url::parse(s)
}

fn versioned(base: &str, ver: PathVersion, kind: EndpointKind, id: &str) -> Result<Url, Error> {
    let mut url = parse_url(base)?;
    url.set_query(None);
    url.push_segments(&[ver.segment(), kind.segment(), id]);
    Ok(url)
}

/// `{http_base}/{ver}/schema/{id}`.
///
/// ```
/// use x402_types::{PathVersion, version::schema_url};
/// let u = schema_url("https://x402.atomicstream.net", PathVersion::V2, "btc-usd").unwrap();
/// assert_eq!(u.as_str(), "https://x402.atomicstream.net/v2/schema/btc-usd");
/// ```
pub fn schema_url(http_base: &str, ver: PathVersion, id: &str) -> Result<Url, Error> {
    versioned(http_base, ver, EndpointKind::Schema, id)
}

/// `{ws_base}/{ver}/stream/{id}?t={token}[&from={seq}]`.
pub fn stream_url(
    ws_base: &str,
    ver: PathVersion,
    id: &str,
    token: &str,
    from: Option<u64>,
) -> Result<Url, Error> {
    let mut u = versioned(ws_base, ver, EndpointKind::Stream, id)?;
    u.append_pair("t", token);
    if let Some(f) = from {
        u.append_pair("from", &f.to_string());
    }
    Ok(u)
}

/// `{http_base}/{ver}/renew/{id}?t={token}`.
pub fn renew_url(http_base: &str, ver: PathVersion, id: &str, token: &str) -> Result<Url, Error> {
    let mut u = versioned(http_base, ver, EndpointKind::Renew, id)?;
    u.append_pair("t", token);
    Ok(u)
}

/// What a client learnt from its schema request, against which it checks every
/// URL the server hands it (section 1: version and host consistency).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlContext {
    /// The path version of the schema request.
    pub version: PathVersion,
    /// The host of the schema request (lower case).
    pub host: String,
    /// The stream id requested.
    pub stream_id: String,
    /// Whether the schema was fetched over TLS (then every URL must be `https`/`wss`).
    pub secure: bool,
    /// The schema request's port (explicit or the scheme's default).
    pub port: u16,
    /// The path before `/{ver}/schema/{id}` (empty or `/api`, say).
    pub prefix: String,
}

impl UrlContext {
    /// From the schema request URL.
    pub fn from_schema_url(schema_url: &str) -> Result<Self, Error> {
        let u = parse_url(schema_url)?;
        let (ver, kind, id) = tail(&u).ok_or_else(|| Error::PathMismatch {
            url: truncate(schema_url),
            reason: "expected /{ver}/schema/{id}".into(),
        })?;
        if kind != "schema" {
            return Err(Error::PathMismatch {
                url: truncate(schema_url),
                reason: "not a schema URL".into(),
            });
        }
        let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
        let secure = match u.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(Error::PathMismatch {
                    url: truncate(schema_url),
                    reason: format!("unexpected scheme {other}"),
                });
            }
        };
        Ok(UrlContext {
            version: ver.parse()?,
            host,
            stream_id: id,
            secure,
            port: u.port_or_known_default().unwrap_or(0),
            prefix: prefix(&u),
        })
    }

    /// Checks a server-supplied URL (`websocketEndpoint`, `renewUrl`): same
    /// host, same version, expected endpoint kind and stream id. Returns the
    /// parsed URL and its token (`t` query parameter) on success.
    pub fn check(&self, url: &str, kind: EndpointKind) -> Result<(Url, Option<String>), Error> {
        let u = parse_url(url)?;
        // Scheme pinned to the schema request's: a TLS schema never leads to a
        // clear-text socket that would carry a bearer payment.
        let ok_scheme = match (kind, self.secure) {
            (EndpointKind::Stream, true) => u.scheme() == "wss",
            (EndpointKind::Stream, false) => u.scheme() == "ws",
            (_, true) => u.scheme() == "https",
            (_, false) => u.scheme() == "http",
        };
        if !ok_scheme {
            return Err(Error::PathMismatch {
                url: truncate(url),
                reason: format!("unexpected scheme {}", u.scheme()),
            });
        }
        let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
        if host != self.host {
            return Err(Error::HostMismatch {
                url: truncate(url),
                expected: self.host.clone(),
                found: host,
            });
        }
        let port = u.port_or_known_default().unwrap_or(0);
        if port != self.port {
            return Err(Error::HostMismatch {
                url: truncate(url),
                expected: format!("{}:{}", self.host, self.port),
                found: format!("{host}:{port}"),
            });
        }
        if prefix(&u) != self.prefix {
            return Err(Error::PathMismatch {
                url: truncate(url),
                reason: format!("path prefix differs from the schema's ({:?})", self.prefix),
            });
        }
        let (ver, k, id) = tail(&u).ok_or_else(|| Error::PathMismatch {
            url: truncate(url),
            reason: format!("expected /{{ver}}/{}/{{id}}", kind.segment()),
        })?;
        if ver != self.version.segment() {
            return Err(Error::VersionMismatch {
                url: truncate(url),
                expected: self.version,
                found: truncate(&ver),
            });
        }
        if k != kind.segment() {
            return Err(Error::PathMismatch {
                url: truncate(url),
                reason: format!("expected {} endpoint, found {k}", kind.segment()),
            });
        }
        if id != self.stream_id {
            return Err(Error::PathMismatch {
                url: truncate(url),
                reason: format!("expected stream {}, found {id}", self.stream_id),
            });
        }
        let token = u
            .query_pairs()
            .into_iter()
            .find(|(k, _)| k == "t")
            .map(|(_, v)| v);
        Ok((u, token))
    }
}

/// The last three path segments `(ver, kind, id)`, percent-decoded id.
fn tail(u: &Url) -> Option<(String, String, String)> {
    let segs: Vec<&str> = u.path_segments()?.collect();
    if segs.len() < 3 {
        return None;
    }
    let n = segs.len();
    let id = percent_decode(segs[n - 1]);
    Some((segs[n - 3].to_string(), segs[n - 2].to_string(), id))
}

/// The path segments before the last three, joined (`""` or `"/api"`).
fn prefix(u: &Url) -> String {
    let segs: Vec<&str> = u.path_segments().map(|s| s.collect()).unwrap_or_default();
    let n = segs.len().saturating_sub(3);
    segs[..n].iter().map(|s| format!("/{s}")).collect()
}

use crate::url::percent_decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders() {
        let s = stream_url(
            "wss://x402.atomicstream.net",
            PathVersion::V1,
            "btc",
            "abc",
            Some(7),
        )
        .unwrap();
        assert_eq!(
            s.as_str(),
            "wss://x402.atomicstream.net/v1/stream/btc?t=abc&from=7"
        );
        let r = renew_url(
            "https://x402.atomicstream.net/",
            PathVersion::V2,
            "btc",
            "a+b",
        )
        .unwrap();
        assert_eq!(
            r.as_str(),
            "https://x402.atomicstream.net/v2/renew/btc?t=a%2Bb"
        );
        let p = schema_url("http://127.0.0.1:4021/api", PathVersion::V2, "x").unwrap();
        assert_eq!(p.as_str(), "http://127.0.0.1:4021/api/v2/schema/x");
    }

    #[test]
    fn consistency() {
        let ctx =
            UrlContext::from_schema_url("https://x402.atomicstream.net/v2/schema/btc").unwrap();
        assert_eq!(ctx.version, PathVersion::V2);
        let (_, t) = ctx
            .check(
                "wss://x402.atomicstream.net/v2/stream/btc?t=tok",
                EndpointKind::Stream,
            )
            .unwrap();
        assert_eq!(t.as_deref(), Some("tok"));
        assert!(matches!(
            ctx.check(
                "wss://x402.atomicstream.net/v1/stream/btc?t=tok",
                EndpointKind::Stream
            ),
            Err(Error::VersionMismatch { .. })
        ));
        assert!(matches!(
            ctx.check(
                "wss://evil.example/v2/stream/btc?t=tok",
                EndpointKind::Stream
            ),
            Err(Error::HostMismatch { .. })
        ));
        assert!(matches!(
            ctx.check(
                "wss://x402.atomicstream.net/v2/stream/eth?t=tok",
                EndpointKind::Stream
            ),
            Err(Error::PathMismatch { .. })
        ));
        assert!(matches!(
            ctx.check(
                "https://x402.atomicstream.net/v2/stream/btc?t=tok",
                EndpointKind::Stream
            ),
            Err(Error::PathMismatch { .. })
        ));
        assert!(
            ctx.check(
                "https://x402.atomicstream.net/v2/renew/btc?t=tok",
                EndpointKind::Renew
            )
            .is_ok()
        );
        assert!(matches!(
            ctx.check("not a url", EndpointKind::Renew),
            Err(Error::Url { .. })
        ));
        // Scheme, port and path prefix are pinned to the schema request's.
        for bad in [
            "ws://x402.atomicstream.net/v2/stream/btc?t=tok",
            "wss://x402.atomicstream.net:8443/v2/stream/btc?t=tok",
            "wss://x402.atomicstream.net/other/v2/stream/btc?t=tok",
        ] {
            assert!(ctx.check(bad, EndpointKind::Stream).is_err(), "{bad}");
        }
        let local = UrlContext::from_schema_url("http://127.0.0.1:4021/api/v2/schema/a+b").unwrap();
        assert_eq!(local.stream_id, "a+b", "+ is not a space in a path");
        assert!(
            local
                .check(
                    "ws://127.0.0.1:4021/api/v2/stream/a+b?t=x",
                    EndpointKind::Stream
                )
                .is_ok()
        );
        assert!(
            local
                .check(
                    "ws://127.0.0.1:4022/api/v2/stream/a+b?t=x",
                    EndpointKind::Stream
                )
                .is_err()
        );
        assert!(
            local
                .check(
                    "wss://127.0.0.1:4021/api/v2/stream/a+b?t=x",
                    EndpointKind::Stream
                )
                .is_err()
        );
        assert_eq!(percent_decode("a%2Fb%zz%"), "a/b%zz%");
    }
}
