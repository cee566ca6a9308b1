#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = x402_types::FacilitatorRequest::from_json(data) {
        // Verification of arbitrary requests must never panic.
        let _ = x402_payer::verify_exact(&req.payment_payload, &req.payment_requirements, 1_750_000_000);
        let json = serde_json::to_vec(&req).expect("serialize");
        let _ = x402_types::FacilitatorRequest::from_json(&json).expect("re-parse");
    }
});
