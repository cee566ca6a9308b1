#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // The fast path for event frames answers as the general parser does.
        if text.len() <= x402_types::MAX_FRAME_BYTES {
            assert_eq!(
                format!("{:?}", x402_types::ServerMessage::parse(text)),
                format!("{:?}", x402_types::ServerMessage::parse_general(text)),
                "{text:?}"
            );
        }
        if let Ok(m) = x402_types::ServerMessage::parse(text) {
            // Whatever parses must round-trip.
            let again = x402_types::ServerMessage::parse(&m.to_json()).expect("re-parse");
            assert_eq!(again, m);
        }
        let _ = x402_types::ClientMessage::parse(text);
        let _ = x402_types::RenewResponse::from_json(data);
        let _ = x402_types::ErrorBody::from_json(data);
    }
});
