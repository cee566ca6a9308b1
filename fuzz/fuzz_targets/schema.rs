#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = x402_types::Schema::from_json(data) {
        let again = x402_types::Schema::from_json(s.to_json().as_bytes()).expect("strict output re-parses");
        assert_eq!(again.payment_details, s.payment_details);
        let _ = s.payment_details.requirement().eip712_extra();
    }
});
