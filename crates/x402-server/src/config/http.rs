//! `[http]`: the server's edge towards browsers, proxies and monitoring.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::ConfigError;

/// `[http]`: who may call from a browser, which peers are proxies whose
/// client address is believed, and where `/metrics` is served.
///
/// ```toml
/// [http]
/// cors_origins = ["https://app.example.com"]   # default ["*"]
/// trusted_proxies = ["10.0.0.0/8", "127.0.0.1"]
/// proxy_protocol = true                          # HAProxy / nginx `send-proxy`
/// metrics_listen = "127.0.0.1:9464"              # /metrics only there
/// metrics_key = "a long random scrape key"       # or: Bearer key on /metrics
/// ```
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Origins a browser page may call the catalog, schema, renew and stream
    /// endpoints from. `["*"]` (the default) allows any: a payment, not a
    /// cookie, authorizes, so another origin gains nothing it could not do
    /// with curl. `[]` sends no CORS headers at all.
    #[serde(default = "any_origin")]
    pub cors_origins: Vec<String>,
    /// Peers (addresses or networks) that are proxies: from them, the client
    /// address is taken from `X-Forwarded-For` (the rightmost entry that is
    /// not itself a trusted proxy) or from the PROXY protocol header. From
    /// anyone else both are ignored.
    #[serde(default, deserialize_with = "nets")]
    pub trusted_proxies: Vec<IpNet>,
    /// Trusted proxies open each connection with a PROXY protocol header
    /// (v1 text or v2 binary); it is required from them and never read from
    /// other peers.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Serve `/metrics` on this address only (not on the public listener).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Require `Authorization: Bearer <metrics_key>` on `/metrics`
    /// (at least 16 bytes).
    #[serde(default)]
    pub metrics_key: Option<String>,
}

/// Networks (`10.0.0.0/8`) or single addresses (`127.0.0.1`).
fn nets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{s:?} is neither an address (10.0.0.1) nor a network (10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

fn any_origin() -> Vec<String> {
    vec!["*".into()]
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            cors_origins: any_origin(),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            metrics_listen: None,
            metrics_key: None,
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    // The scrape key never appears.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("cors_origins", &self.cors_origins)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("metrics_listen", &self.metrics_listen)
            .field(
                "metrics_key",
                &self.metrics_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The shortest `metrics_key` accepted.
pub const MIN_METRICS_KEY_LEN: usize = 16;

impl HttpConfig {
    /// Every problem of this section, each as one sentence.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for o in &self.cors_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                out.push(format!(
                    "http.cors_origins: {o:?} is not an origin (\"*\" or scheme://host[:port])"
                ));
            } else if o != "*" && o.trim_end_matches('/').matches('/').count() > 2 {
                out.push(format!(
                    "http.cors_origins: {o:?} has a path; an origin is scheme://host[:port]"
                ));
            }
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            out.push(
                "http.proxy_protocol needs http.trusted_proxies: the header is read only from them"
                    .into(),
            );
        }
        if let Some(k) = &self.metrics_key
            && k.len() < MIN_METRICS_KEY_LEN
        {
            out.push(format!(
                "http.metrics_key must be at least {MIN_METRICS_KEY_LEN} bytes"
            ));
        }
        out
    }

    /// Checks the section: the first problem, if any.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::first_problem(self.problems())
    }

    /// Whether `ip` is a configured proxy.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: `peer` itself, unless `peer` is a trusted proxy
    /// and `forwarded_for` (the `X-Forwarded-For` values, in order) names one;
    /// then the rightmost entry that is not a trusted proxy (entries left of
    /// it were written by the client and prove nothing).
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.is_trusted_proxy(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Garbage in the chain: stop at the last address we believe.
                break;
            };
            client = ip;
            if !self.is_trusted_proxy(ip) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`) as IPv4, so one rule covers both.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg(proxies: &[&str]) -> HttpConfig {
        HttpConfig {
            trusted_proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
            ..HttpConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let c = cfg(&["10.0.0.0/8", "127.0.0.1/32"]);
        // A direct client cannot claim another address.
        assert_eq!(
            c.client_ip(ip("203.0.113.9"), ["1.1.1.1"].into_iter()),
            ip("203.0.113.9")
        );
        // Through one proxy.
        assert_eq!(
            c.client_ip(ip("10.1.2.3"), ["198.51.100.7"].into_iter()),
            ip("198.51.100.7")
        );
        // The client prepended a lie; two proxies appended the truth.
        assert_eq!(
            c.client_ip(
                ip("127.0.0.1"),
                ["6.6.6.6, 198.51.100.7", "10.0.0.5"].into_iter()
            ),
            ip("198.51.100.7")
        );
        // No header from a proxy: the proxy is the client.
        assert_eq!(c.client_ip(ip("10.0.0.5"), [].into_iter()), ip("10.0.0.5"));
        // Garbage stops the walk at the last believed hop.
        assert_eq!(
            c.client_ip(ip("10.0.0.5"), ["nonsense, 10.0.0.6"].into_iter()),
            ip("10.0.0.6")
        );
        // Ports and brackets, and a mapped peer address.
        assert_eq!(
            c.client_ip(ip("::ffff:10.0.0.5"), ["[2001:db8::1]:443"].into_iter()),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn problems_are_all_reported() {
        let c = HttpConfig {
            cors_origins: vec!["example.com".into(), "https://a.example/x".into()],
            proxy_protocol: true,
            metrics_key: Some("short".into()),
            ..HttpConfig::default()
        };
        let p = c.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(HttpConfig::default().problems().is_empty());
    }

    #[test]
    fn parses_from_toml_and_refuses_unknown_keys() {
        let c: HttpConfig =
            toml::from_str("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nproxy_protocol = true")
                .unwrap();
        assert!(c.is_trusted_proxy(ip("10.9.9.9")) && c.is_trusted_proxy(ip("::1")));
        assert!(!c.is_trusted_proxy(ip("11.0.0.1")));
        assert_eq!(c.cors_origins, vec!["*"]);
        assert!(toml::from_str::<HttpConfig>("trusted_proxy = []").is_err());
        let e = toml::from_str::<HttpConfig>("trusted_proxies = [\"10.0.0\"]").unwrap_err();
        assert!(e.to_string().contains("neither an address"), "{e}");
    }
}
