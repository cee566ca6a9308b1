//! The `event` message: its verbatim JSON data ([`EventData`]) and the fast
//! reading of an event frame.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::{Error, json_err};
use crate::json_scan::{literal, string_end, value_end, ws};

/// `event`: one live event; `data` is kept as the exact JSON received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Strictly increasing per stream.
    pub seq: u64,
    /// The event's JSON, verbatim.
    pub data: EventData,
    /// Optional publish time (unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
}

/// An event's data: one JSON value, exactly as the server sent it (checked
/// to be JSON, not re-encoded). It reads like `serde_json`'s `RawValue`:
/// [`EventData::get`] is the text; [`EventData::parse`] decodes it.
///
/// ```
/// use x402_types::EventData;
///
/// #[derive(serde::Deserialize)]
/// struct Trade { px: f64 }
///
/// let data = EventData::from_json(r#"{"px":101.25}"#)?;
/// assert_eq!(data.get(), r#"{"px":101.25}"#);
/// assert_eq!(data.parse::<Trade>()?.px, 101.25);
/// assert!(EventData::from_json("{not json").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Equality and hashing compare the text: `1.0` and `1`, or two spacings of
/// one object, are different data.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventData(Box<str>);

impl EventData {
    /// Checks that `json` is one JSON value (surrounding whitespace is
    /// trimmed, as a parser would skip it) and keeps it verbatim.
    pub fn from_json(json: impl Into<String>) -> Result<EventData, Error> {
        let json = json.into();
        let b = json.as_bytes();
        let start = ws(b, 0);
        match value_end(b, start) {
            Some(end) if ws(b, end) == b.len() => {
                if start == 0 && end == b.len() {
                    Ok(EventData(json.into_boxed_str()))
                } else {
                    Ok(EventData(json[start..end].into()))
                }
            }
            _ => Err(json_err(
                "event data",
                // The position and words of serde_json's own error.
                serde_json::from_str::<&RawValue>(&json)
                    .err()
                    .unwrap_or_else(|| {
                        serde_json::Error::io(std::io::Error::other("not one JSON value"))
                    }),
            )),
        }
    }

    /// `value` encoded as JSON.
    pub fn from_value<T: Serialize + ?Sized>(value: &T) -> Result<EventData, serde_json::Error> {
        serde_json::to_string(value).map(|s| EventData(s.into_boxed_str()))
    }

    /// The JSON text, verbatim.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// Decodes the data into `T`.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// The data as a `serde_json` `RawValue` (checked again by `serde_json`:
    /// data deserialized from a format other than JSON was taken as it came).
    pub fn to_raw_value(&self) -> Result<Box<RawValue>, serde_json::Error> {
        RawValue::from_string(self.0.to_string())
    }

    /// Takes JSON already checked by [`value_end`].
    fn checked(json: &str) -> EventData {
        EventData(json.into())
    }
}

impl From<Box<RawValue>> for EventData {
    /// Already checked by `serde_json`: no copy, no second check.
    fn from(raw: Box<RawValue>) -> EventData {
        EventData(raw.into())
    }
}

impl From<&RawValue> for EventData {
    fn from(raw: &RawValue) -> EventData {
        EventData(raw.get().into())
    }
}

impl fmt::Display for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventData({})", &self.0)
    }
}

impl Serialize for EventData {
    /// Verbatim, through `serde_json`'s `RawValue`, which checks the text
    /// again on every call (serde_json writes it as it is; other formats see
    /// `RawValue`'s private one-field struct). The frame encoder
    /// ([`crate::ServerMessage::to_json`]) writes the data itself, unchecked.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for EventData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EventData, D::Error> {
        Box::<RawValue>::deserialize(d).map(EventData::from)
    }
}

/// Reads an `event` frame without `serde_json`: `{"type":"event","seq":N,
/// "data":V,"ts":T}` with the members in any order and any whitespace, `ts`
/// a number, `null` or absent. `None` for anything else (another type, an
/// unknown or repeated member, an escape in a key, a number `u64` does not
/// hold exactly, invalid JSON, trailing bytes): the general parser then
/// decides, with its own error. Where this returns an event, the general
/// parser returns the same one (the `event_fast_path` property test).
pub(crate) fn parse_fast(text: &str) -> Option<Event> {
    let b = text.as_bytes();
    let mut i = ws(b, 0);
    if *b.get(i)? != b'{' {
        return None;
    }
    i = ws(b, i + 1);
    let (mut ty, mut seq, mut data, mut ts) = (false, None, None, None);
    loop {
        // A key without escapes.
        if *b.get(i)? != b'"' {
            return None;
        }
        let key_end = string_end(b, i + 1)?;
        let key = &b[i + 1..key_end - 1];
        if key.contains(&b'\\') {
            return None;
        }
        i = ws(b, key_end);
        if *b.get(i)? != b':' {
            return None;
        }
        i = ws(b, i + 1);
        match key {
            b"type" if !ty => {
                i = literal(b, i, b"\"event\"")?;
                ty = true;
            }
            b"seq" if seq.is_none() => (seq, i) = u64_at(b, i).map(|(v, e)| (Some(v), e))?,
            b"ts" if ts.is_none() => {
                (ts, i) = match literal(b, i, b"null") {
                    Some(end) => (Some(None), end),
                    None => u64_at(b, i).map(|(v, e)| (Some(Some(v)), e))?,
                }
            }
            // `"data": null` is an absent data to the general parser.
            b"data" if data.is_none() && b.get(i) != Some(&b'n') => {
                let end = value_end(b, i)?;
                data = Some(&text[i..end]);
                i = end;
            }
            _ => return None,
        }
        i = ws(b, i);
        match *b.get(i)? {
            b',' => i = ws(b, i + 1),
            b'}' => break,
            _ => return None,
        }
    }
    if !ty || ws(b, i + 1) != b.len() {
        return None;
    }
    Some(Event {
        seq: seq?,
        data: EventData::checked(data?),
        ts: ts.flatten(),
    })
}

/// A JSON integer at `b[i]` that `u64` holds (no sign, fraction, exponent or
/// leading zero; the general parser reads those as other types or refuses
/// them), and where it ends.
fn u64_at(b: &[u8], i: usize) -> Option<(u64, usize)> {
    let mut end = i;
    let mut v: u64 = 0;
    while let Some(&c @ b'0'..=b'9') = b.get(end) {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        end += 1;
    }
    let leading_zero = b.get(i) == Some(&b'0') && end > i + 1;
    match b.get(end) {
        _ if end == i || leading_zero => None,
        Some(b'.' | b'e' | b'E') => None,
        _ => Some((v, end)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frames_in_any_shape() {
        let e = parse_fast(r#" { "data" : [1, {"a":"b"}] , "ts":null,"seq":7,"type":"event" } "#)
            .unwrap();
        assert_eq!((e.seq, e.data.get(), e.ts), (7, r#"[1, {"a":"b"}]"#, None));
        let e = parse_fast(r#"{"type":"event","seq":0,"ts":12,"data":"x"}"#).unwrap();
        assert_eq!((e.seq, e.data.get(), e.ts), (0, r#""x""#, Some(12)));
    }

    #[test]
    fn anything_unusual_goes_to_the_general_parser() {
        for s in [
            r#"{"type":"hello","seq":1,"data":1}"#,
            r#"{"type":"event","seq":1}"#,
            r#"{"type":"event","data":1}"#,
            r#"{"seq":1,"data":1}"#,
            r#"{"type":"event","seq":1,"data":null}"#,
            r#"{"type":"event","seq":1,"seq":2,"data":1}"#,
            r#"{"type":"event","seq":1,"data":1,"extra":0}"#,
            r#"{"type":"event","s\u0065q":1,"data":1}"#,
            r#"{"type":"ev\u0065nt","seq":1,"data":1}"#,
            r#"{"type":"event","seq":01,"data":1}"#,
            r#"{"type":"event","seq":1.0,"data":1}"#,
            r#"{"type":"event","seq":-1,"data":1}"#,
            r#"{"type":"event","seq":18446744073709551616,"data":1}"#,
            r#"{"type":"event","seq":1,"data":1} x"#,
            r#"{"type":"event","seq":1,"data":[1,]}"#,
            r#"{"type":"event","seq":1,"data":1,}"#,
            r#"{}"#,
            r#"[]"#,
        ] {
            assert!(parse_fast(s).is_none(), "{s}");
        }
        let max = format!(r#"{{"type":"event","seq":{},"data":1}}"#, u64::MAX);
        assert_eq!(parse_fast(&max).map(|e| e.seq), Some(u64::MAX));
    }

    #[test]
    fn data_is_kept_and_shown_verbatim() {
        let d = EventData::from_json("  {\"a\": 1 }\n").unwrap();
        assert_eq!(d.get(), "{\"a\": 1 }");
        assert_eq!(d.to_string(), "{\"a\": 1 }");
        assert_eq!(serde_json::to_string(&d).unwrap(), "{\"a\": 1 }");
        assert_eq!(d.to_raw_value().unwrap().get(), d.get());
        let err = EventData::from_json("{\"a\": 1 } 2").unwrap_err();
        assert!(err.to_string().contains("event data"), "{err}");
        assert!(EventData::from_json("").is_err());
        let e: Event = serde_json::from_str(r#"{"seq":1,"data": {"x" :2}}"#).unwrap();
        assert_eq!(e.data.get(), r#"{"x" :2}"#);
    }

    /// JSON texts, valid and nearly valid: values of every kind with random
    /// whitespace, strings with escapes, bad escapes, quotes, control
    /// characters and long runs (the `memchr` search), then (one time in
    /// three) one byte inserted or deleted.
    pub(crate) fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let ws = || "[ \t\n\r]{0,2}";
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("fals".to_string()),
            "-?(0|00|[1-9][0-9]{0,20})(\\.[0-9]{0,2})?([eE][+-]?[0-9]{0,2})?",
            (
                "([a-z \u{e9}\"\\\\/\u{1}\u{1f}\t]|\\\\[nrtbf\"\\\\/ux]|\\\\u[0-9a-fA-Fg]{4}){0,8}",
                (0usize..80, "[a-z\u{1}\u{1f}]{0,1}", 0usize..80),
            )
                .prop_map(|(s, (pad, odd, pad2))| {
                    format!("\"{}{odd}{}{s}\"", "x".repeat(pad), "y".repeat(pad2))
                }),
        ];
        let value = leaf.prop_recursive(4, 48, 5, move |inner| {
            prop_oneof![
                proptest::collection::vec((inner.clone(), ws()), 0..5).prop_map(|v| {
                    let items: Vec<String> = v.iter().map(|(x, w)| format!("{w}{x}{w}")).collect();
                    format!("[{}]", items.join(","))
                }),
                proptest::collection::vec(("[a-z\"\\\\]{0,3}", inner, ws()), 0..5).prop_map(|v| {
                    let items: Vec<String> = v
                        .iter()
                        .map(|(k, x, w)| format!("{w}\"{k}\"{w}:{w}{x}"))
                        .collect();
                    format!("{{{}}}", items.join(","))
                }),
            ]
        });
        // Nesting around 64 deep, where the containers' bit word hands over to
        // its vector, perhaps with one closing bracket of the wrong kind.
        let deep = (
            proptest::collection::vec(any::<bool>(), 58..72),
            proptest::option::of(any::<prop::sample::Index>()),
        )
            .prop_map(|(kinds, wrong)| {
                let wrong = wrong.map(|w| w.index(kinds.len()));
                let mut v: String = kinds
                    .iter()
                    .map(|&object| if object { "{\"k\":" } else { "[" })
                    .collect();
                v.push('1');
                for (depth, &object) in kinds.iter().enumerate().rev() {
                    v.push(if object != (wrong == Some(depth)) {
                        '}'
                    } else {
                        ']'
                    });
                }
                v
            });
        (
            prop_oneof![9 => value, 1 => deep],
            any::<prop::sample::Index>(),
            0u8..6,
            "[\",\\]\\}{\\[:\\\\ 0.e\u{1}x]",
        )
            .prop_map(|(v, at, how, c)| {
                let mut v = v;
                let mut at = at.index(v.len() + 1);
                while !v.is_char_boundary(at) {
                    at -= 1;
                }
                match how {
                    4 => v.insert_str(at, &c),
                    5 if at < v.len() => {
                        v.remove(at);
                    }
                    _ => {}
                }
                v
            })
    }

    mod props {
        use proptest::prelude::*;

        use super::json_text;
        use crate::ServerMessage;
        use crate::event::{EventData, parse_fast};

        /// Event frames: the members in any order, each sometimes odd, sometimes
        /// one more (repeated, unknown, escaped key), any whitespace, trailing bytes.
        fn frame() -> impl Strategy<Value = String> {
            let ty = prop_oneof![
                8 => Just(r#""type":"event""#.to_string()),
                1 => Just(r#""type":"hello""#.to_string()),
                1 => Just(r#""type":"ev\u0065nt""#.to_string()),
            ];
            let seq = prop_oneof![
                8 => "(0|[1-9][0-9]{0,19})".prop_map(|n| format!(r#""seq":{n}"#)),
                1 => "(-1|-0|01|1\\.0|1e2|18446744073709551616|null)".prop_map(|n| format!(r#""seq":{n}"#)),
                1 => Just(String::new()),
            ];
            let ts = prop_oneof![
                Just(String::new()),
                "(null|[0-9]{1,3}|-1|1\\.5|2e3|18446744073709551616)"
                    .prop_map(|n| format!(r#""ts" : {n}"#)),
            ];
            let data = json_text().prop_map(|d| format!(r#""data":{d}"#));
            let extra = prop_oneof![
                12 => Just(String::new()),
                1 => Just(r#""seq":2"#.to_string()),
                1 => Just(r#""type":"event""#.to_string()),
                1 => Just(r#""data":1"#.to_string()),
                1 => Just(r#""ts":5"#.to_string()),
                1 => Just(r#""ts":null"#.to_string()),
                1 => Just(r#""slices":"x""#.to_string()),
                1 => Just(r#""other":[1]"#.to_string()),
                1 => Just(r#""s\u0065q":3"#.to_string()),
                1 => Just(r#""d\u0061ta":3"#.to_string()),
                1 => Just(r#""t\u0073":3"#.to_string()),
                1 => Just(r#""\u0074ype":"event""#.to_string()),
            ];
            ((ty, seq, ts, data, extra), "[ \t\r\n]{0,2}", "[ \n,x]{0,1}")
                .prop_flat_map(|((a, b, c, d, e), w, tail)| {
                    let members: Vec<String> = [a, b, c, d, e]
                        .into_iter()
                        .filter(|m| !m.is_empty())
                        .collect();
                    (Just(members).prop_shuffle(), Just(w), Just(tail))
                })
                .prop_map(|(m, w, tail)| format!("{w}{{{w}{}}}{tail}", m.join(&format!(",{w}"))))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// The scan accepts exactly what serde_json accepts as a RawValue, with
            /// the same text kept.
            #[test]
            fn data_check_agrees_with_serde_json(t in json_text()) {
                let ours = EventData::from_json(t.as_str());
                let theirs = serde_json::from_str::<&serde_json::value::RawValue>(&t);
                prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}", t);
                if let (Ok(o), Ok(r)) = (ours, theirs) {
                    prop_assert_eq!(o.get(), r.get());
                }
            }

            /// Where the fast reading gives an event, the general parser gives the
            /// same; and `parse` answers as the general parser does, for every frame.
            #[test]
            fn event_fast_path(t in frame()) {
                let general = ServerMessage::parse_general(&t);
                if let Some(e) = parse_fast(&t) {
                    prop_assert_eq!(general.as_ref().ok(), Some(&ServerMessage::Event(e)), "{:?}", t);
                }
                prop_assert_eq!(
                    format!("{:?}", ServerMessage::parse(&t)),
                    format!("{general:?}"),
                    "{:?}",
                    t
                );
            }
        }
    }
}
