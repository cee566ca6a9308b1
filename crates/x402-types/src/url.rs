//! The URLs this protocol uses, and nothing more: absolute `http`, `https`,
//! `ws` and `wss` URLs with an ASCII host, an optional port, a path and a
//! query. No userinfo, no fragments, no dot segments, no internationalised
//! hosts (refused, not guessed). Small on purpose: the types crate stays a
//! small dependency tree for embedders.

use std::fmt;

use crate::error::{Error, truncate};

/// An absolute `http(s)`/`ws(s)` URL, normalised: lower-case scheme and host,
/// a path that starts with `/`, unsafe bytes percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Url {
    serialized: String,
    scheme_end: usize,
    host: (usize, usize),
    port: Option<u16>,
    path_start: usize,
    query_start: Option<usize>,
}

fn err(input: &str, message: &str) -> Error {
    Error::Url {
        input: truncate(input),
        message: message.into(),
    }
}

/// Bytes kept as they are in paths and queries (RFC 3986 pchar, plus `/` and `?`).
fn safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%?".contains(&b)
}

fn encode_into(out: &mut String, s: &str, keep: impl Fn(u8) -> bool) {
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    encode_into(&mut out, s, |b| {
        b.is_ascii_alphanumeric() || b"-._~".contains(&b)
    });
    out
}

/// `application/x-www-form-urlencoded` encoding of a query key or value.
fn encode_form(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        match b {
            b' ' => out.push('+'),
            b if b.is_ascii_alphanumeric() || b"*-._".contains(&b) => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// Percent-decodes (`+` stays `+`; for forms, replace it first).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Url {
    /// Parses an absolute URL.
    pub fn parse(input: &str) -> Result<Url, Error> {
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| err(input, "not an absolute URL"))?;
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "ws" | "wss") {
            return Err(err(input, "scheme must be http, https, ws or wss"));
        }
        let rest = match rest.split_once('#') {
            Some((r, _)) => r,
            None => rest,
        };
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        if authority.contains('@') {
            return Err(err(input, "credentials in URLs are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| err(input, "unclosed IPv6 host"))?;
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(err(input, "invalid IPv6 host"));
            }
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(err(input, "invalid authority")),
            };
            (format!("[{}]", h.to_ascii_lowercase()), port)
        } else {
            let (h, p) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(err(input, "invalid host"));
            }
            (h.to_ascii_lowercase(), p)
        };
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| err(input, "invalid port"))?),
        };
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        if path.split('/').any(|s| s == "." || s == "..") {
            return Err(err(input, "dot segments are not allowed"));
        }
        let mut s = String::with_capacity(input.len() + 1);
        s.push_str(&scheme);
        s.push_str("://");
        let host_start = s.len();
        s.push_str(&host);
        let host_end = s.len();
        let default = default_port(&scheme);
        let port = port.filter(|p| Some(*p) != default);
        if let Some(p) = port {
            s.push_str(&format!(":{p}"));
        }
        let path_start = s.len();
        if !path.starts_with('/') {
            s.push('/');
        }
        encode_into(&mut s, path, |b| safe(b) && b != b'?');
        let query_start = query.map(|q| {
            s.push('?');
            let at = s.len();
            encode_into(&mut s, q, safe);
            at
        });
        Ok(Url {
            scheme_end: scheme.len(),
            serialized: s,
            host: (host_start, host_end),
            port,
            path_start,
            query_start,
        })
    }

    /// The whole URL.
    pub fn as_str(&self) -> &str {
        &self.serialized
    }

    /// `http`, `https`, `ws` or `wss`.
    pub fn scheme(&self) -> &str {
        &self.serialized[..self.scheme_end]
    }

    /// The host (IPv6 in brackets).
    pub fn host_str(&self) -> Option<&str> {
        Some(&self.serialized[self.host.0..self.host.1])
    }

    /// The explicit port, unless it is the scheme's default.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port, or the scheme's default (80 for http/ws, 443 for https/wss).
    pub fn port_or_known_default(&self) -> Option<u16> {
        self.port.or_else(|| default_port(self.scheme()))
    }

    /// The path (percent-encoded, starts with `/`).
    pub fn path(&self) -> &str {
        let end = self.query_start.map_or(self.serialized.len(), |q| q - 1);
        &self.serialized[self.path_start..end]
    }

    /// The path's segments (percent-encoded).
    pub fn path_segments(&self) -> Option<std::str::Split<'_, char>> {
        Some(self.path()[1..].split('/'))
    }

    /// The query, without `?`.
    pub fn query(&self) -> Option<&str> {
        self.query_start.map(|q| &self.serialized[q..])
    }

    /// The query's pairs, form-decoded.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        let dec = |s: &str| percent_decode(&s.replace('+', " "));
        self.query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (dec(k), dec(v)),
                None => (dec(p), String::new()),
            })
            .collect()
    }

    /// Replaces the query (already encoded), or removes it.
    pub fn set_query(&mut self, query: Option<&str>) {
        if let Some(q) = self.query_start {
            self.serialized.truncate(q - 1);
        }
        self.query_start = query.map(|q| {
            self.serialized.push('?');
            let at = self.serialized.len();
            encode_into(&mut self.serialized, q, safe);
            at
        });
    }

    /// Appends `key=value`, form-encoded.
    pub fn append_pair(&mut self, key: &str, value: &str) {
        match self.query_start {
            Some(q) if self.serialized.len() > q => self.serialized.push('&'),
            Some(_) => {}
            None => {
                self.serialized.push('?');
                self.query_start = Some(self.serialized.len());
            }
        }
        encode_form(&mut self.serialized, key);
        self.serialized.push('=');
        encode_form(&mut self.serialized, value);
    }

    /// Appends path segments (each percent-encoded), after dropping a trailing empty one.
    pub fn push_segments(&mut self, segments: &[&str]) {
        let query = self.query().map(str::to_string);
        self.set_query(None);
        if self.serialized.ends_with('/') {
            self.serialized.pop();
        }
        for s in segments {
            self.serialized.push('/');
            self.serialized.push_str(&encode_segment(s));
        }
        if let Some(q) = query {
            self.set_query(Some(&q));
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.serialized)
    }
}

impl std::str::FromStr for Url {
    type Err = Error;
    fn from_str(s: &str) -> Result<Url, Error> {
        Url::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_protocol_uses() {
        let u = Url::parse("HTTPS://X402.Example.com:443/api/v2/schema/btc?t=a%2Bb&from=3#frag")
            .unwrap();
        assert_eq!(
            u.as_str(),
            "https://x402.example.com/api/v2/schema/btc?t=a%2Bb&from=3"
        );
        assert_eq!(u.scheme(), "https");
        assert_eq!(u.host_str(), Some("x402.example.com"));
        assert_eq!((u.port(), u.port_or_known_default()), (None, Some(443)));
        assert_eq!(u.path(), "/api/v2/schema/btc");
        let segs: Vec<&str> = u.path_segments().unwrap().collect();
        assert_eq!(segs, ["api", "v2", "schema", "btc"]);
        assert_eq!(
            u.query_pairs(),
            [
                ("t".to_string(), "a+b".to_string()),
                ("from".into(), "3".into())
            ]
        );
        let v6 = Url::parse("ws://[::1]:4021").unwrap();
        assert_eq!(
            (v6.host_str(), v6.port(), v6.path()),
            (Some("[::1]"), Some(4021), "/")
        );
        for bad in [
            "ftp://h/x",
            "h/x",
            "http://user:pw@h/",
            "http://h:99999/",
            "http://h/a/../b",
            "http:///x",
            "http://bad host/",
            "http://[::1/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builds_queries_and_paths() {
        let mut u = Url::parse("http://127.0.0.1:4021/").unwrap();
        u.push_segments(&["v2", "renew", "a b/c"]);
        u.append_pair("t", "x+y z");
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:4021/v2/renew/a%20b%2Fc?t=x%2By+z"
        );
        u.append_pair("from", "7");
        assert_eq!(u.query(), Some("t=x%2By+z&from=7"));
        u.set_query(None);
        assert_eq!(u.as_str(), "http://127.0.0.1:4021/v2/renew/a%20b%2Fc");
        assert_eq!(percent_decode("a%2Fb%zz%"), "a/b%zz%");
    }
}
