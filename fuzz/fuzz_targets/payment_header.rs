#![no_main]
use libfuzzer_sys::fuzz_target;
use x402_types::{PathVersion, PaymentPayload, PaymentRequiredV2};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for v in [PathVersion::V1, PathVersion::V2] {
        if let Ok(p) = PaymentPayload::from_header(v, text) {
            let again = PaymentPayload::from_header(v, &p.to_header()).expect("re-decode");
            assert_eq!(again, p);
        }
    }
    let _ = PaymentRequiredV2::from_header(text);
    // The same bytes as raw JSON inside a valid base64 envelope.
    let b64 = x402_types::x402::encode_header(&text);
    let _ = PaymentPayload::from_header(PathVersion::V2, &b64);
});
