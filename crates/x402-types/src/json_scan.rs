//! A validating skip over one JSON value: where it ends, or that it is not
//! JSON. It accepts exactly what `serde_json` accepts as a `RawValue` (RFC
//! 8259: no depth limit, `\u` escapes not checked for surrogate pairs; the
//! input is a `&str`, so UTF-8 is already valid), which the differential
//! property test and the `json_value` fuzz target hold it to.
//!
//! Why it exists: an event's `data` is kept verbatim, and checking that it is
//! JSON was the largest cost of receiving a large event. `serde_json` scans a
//! string 8 bytes at a time; here a long string's run is found by `memchr`
//! (SIMD) and checked for control characters 32 bytes at a time, a loop the
//! compiler vectorizes. A 64 KiB string: 11.6 us with `serde_json`, 3.2 us
//! here (one core of the bench machine).

/// Bytes that end a plain run inside a string: `"`, `\` and the control
/// characters JSON forbids unescaped.
const fn special_table() -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
}

static SPECIAL: [bool; 256] = special_table();

/// Strings' first bytes are checked one by one (keys and short values end
/// there); a run longer than this is searched with `memchr`.
const SHORT_RUN: usize = 32;

/// The end (exclusive) of the JSON value that starts at `b[i]` (no leading
/// whitespace), or `None` where there is no valid value there.
pub(crate) fn value_end(b: &[u8], mut i: usize) -> Option<usize> {
    // The open containers: `true` for an object.
    let mut open = Containers::default();
    loop {
        // A value.
        match *b.get(i)? {
            b'"' => i = string_end(b, i + 1)?,
            b'{' => {
                i = ws(b, i + 1);
                if *b.get(i)? == b'}' {
                    i += 1;
                } else {
                    open.push(true);
                    i = member_value(b, i)?;
                    continue;
                }
            }
            b'[' => {
                i = ws(b, i + 1);
                if *b.get(i)? == b']' {
                    i += 1;
                } else {
                    open.push(false);
                    continue;
                }
            }
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number_end(b, i)?,
            _ => return None,
        }
        // After a value: the next one in its container, or the container's end.
        loop {
            let Some(object) = open.top() else {
                return Some(i);
            };
            i = ws(b, i);
            match (*b.get(i)?, object) {
                (b',', true) => {
                    i = member_value(b, ws(b, i + 1))?;
                    break;
                }
                (b',', false) => {
                    i = ws(b, i + 1);
                    break;
                }
                (b'}', true) | (b']', false) => {
                    i += 1;
                    open.pop();
                }
                _ => return None,
            }
        }
    }
}

/// Skips an object member's key and colon at `b[i]`: where its value starts.
fn member_value(b: &[u8], i: usize) -> Option<usize> {
    if *b.get(i)? != b'"' {
        return None;
    }
    let i = ws(b, string_end(b, i + 1)?);
    (*b.get(i)? == b':').then(|| ws(b, i + 1))
}

/// Skips JSON whitespace.
pub(crate) fn ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The end of `word` at `b[i]`, if it is there.
pub(crate) fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    let end = i + word.len();
    (b.get(i..end)? == word).then_some(end)
}

/// The end of a number at `b[i]`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| {
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        i
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => {
            i += 1;
            if let Some(b'0'..=b'9') = b.get(i) {
                return None;
            }
        }
        b'1'..=b'9' => i = digits(b, i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(b, i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(b, i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

/// The end (after the closing quote) of the string whose content starts at
/// `b[i]` (after the opening quote).
pub(crate) fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += plain_run(b.get(i..)?)?;
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i = escape_end(b, i + 1)?,
            _ => return None, // a control character
        }
    }
}

/// The length of the run of plain string bytes at the start of `s` (up to a
/// `"`, a `\`, a control character or the end); `None` where the run ends
/// at a control character found in the long search (invalid either way).
fn plain_run(s: &[u8]) -> Option<usize> {
    let head = s.len().min(SHORT_RUN);
    if let Some(k) = s[..head].iter().position(|&c| SPECIAL[c as usize]) {
        return Some(k);
    }
    let rest = &s[head..];
    let k = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    if has_control(&rest[..k]) {
        return None;
    }
    Some(head + k)
}

/// Whether any byte is below 0x20, 32 bytes per step (the minimum of a
/// chunk: the compiler turns it into vector instructions).
fn has_control(s: &[u8]) -> bool {
    let mut chunks = s.chunks_exact(32);
    for c in &mut chunks {
        if c.iter().fold(u8::MAX, |m, &x| m.min(x)) < 0x20 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&c| c < 0x20)
}

/// The end of an escape whose letter is at `b[i]` (after the `\`).
fn escape_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 1),
        b'u' => b
            .get(i + 1..i + 5)?
            .iter()
            .all(u8::is_ascii_hexdigit)
            .then_some(i + 5),
        _ => None,
    }
}

/// The kinds of the open containers, innermost last: 64 in a word, deeper
/// ones in a vector (which data this deep rarely needs).
#[derive(Default)]
struct Containers {
    bits: u64,
    len: usize,
    deeper: Vec<bool>,
}

impl Containers {
    fn push(&mut self, object: bool) {
        if self.len < 64 {
            self.bits = (self.bits & !(1 << self.len)) | (u64::from(object) << self.len);
        } else {
            self.deeper.push(object);
        }
        self.len += 1;
    }

    fn pop(&mut self) {
        self.len -= 1;
        if self.len >= 64 {
            self.deeper.pop();
        }
    }

    fn top(&self) -> Option<bool> {
        match self.len {
            0 => None,
            n if n <= 64 => Some(self.bits & (1 << (n - 1)) != 0),
            _ => self.deeper.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(s: &str) -> Option<usize> {
        value_end(s.as_bytes(), 0)
    }

    #[test]
    fn values_end_where_they_end() {
        for (s, n) in [
            ("0", 1),
            ("-0.5e+10,", 8),
            ("\"a\\u00e9\\\"b\" x", 12),
            ("{\"a\" : [1, {\"b\":null}] } ", 24),
            ("[] ]", 2),
            ("{}", 2),
            ("true false", 4),
        ] {
            assert_eq!(end(s), Some(n), "{s}");
        }
    }

    #[test]
    fn invalid_values_are_refused() {
        for s in [
            "",
            "01",
            "-",
            "1.",
            "1e",
            "1e+",
            ".5",
            "+1",
            "tru",
            "nul",
            "\"abc",
            "\"a\u{1}b\"",
            "\"\\x\"",
            "\"\\u12g4\"",
            "[1,]",
            "{\"a\":1,}",
            "{,}",
            "{\"a\" 1}",
            "{1:2}",
            "[1 2]",
            "[",
            "{\"a\":",
            "}",
            "\"\\u12\"",
        ] {
            assert_eq!(end(s), None, "{s:?}");
        }
    }

    #[test]
    fn long_strings_take_the_fast_search() {
        let long = "x".repeat(1000);
        assert_eq!(end(&format!("\"{long}\"")), Some(1002));
        assert_eq!(end(&format!("\"{long}\\n{long}\"")), Some(2004));
        // A control character far past the first bytes.
        assert_eq!(end(&format!("\"{long}\t{long}\"")), None);
        assert_eq!(end(&format!("\"{long}")), None);
    }

    #[test]
    fn deep_nesting_has_no_limit() {
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        assert_eq!(end(&deep), Some(1000));
        let mixed = format!("{}1{}", "[{\"k\":".repeat(100), "}]".repeat(100));
        assert_eq!(end(&mixed), Some(mixed.len()));
        assert_eq!(
            end(&format!("{}1{}", "[{\"k\":".repeat(100), "]}".repeat(100))),
            None
        );
    }
}
