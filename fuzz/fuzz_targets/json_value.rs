#![no_main]
//! Differential: the event data check accepts exactly what serde_json accepts
//! as a RawValue, and an event frame around valid data reads as that data.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ours = x402_types::EventData::from_json(text);
    let theirs = serde_json::from_str::<&serde_json::value::RawValue>(text);
    assert_eq!(ours.is_ok(), theirs.is_ok(), "{text:?}");
    if let (Ok(o), Ok(r)) = (ours, theirs) {
        assert_eq!(o.get(), r.get());
        if r.get() != "null" {
            let frame = format!(r#"{{"type":"event","seq":1,"data":{text}}}"#);
            match x402_types::ServerMessage::parse(&frame) {
                Ok(x402_types::ServerMessage::Event(e)) => assert_eq!(e.data.get(), r.get()),
                other => panic!("{frame:?}: {other:?}"),
            }
        }
    }
});
