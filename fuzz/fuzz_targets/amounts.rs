#![no_main]
use libfuzzer_sys::fuzz_target;
use x402_types::{Address, Amount, Network, Nonce, U256, UrlContext};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(v) = text.parse::<U256>() {
        assert_eq!(v.to_string(), text);
    }
    for d in [0u8, 6, 18, 40] {
        if let Ok(a) = Amount::from_display(text, d) {
            assert_eq!(Amount::from_display(&a.to_display(d), d).expect("display round trip"), a);
        }
    }
    if let Ok(a) = text.parse::<Address>() {
        assert_eq!(a.to_string().parse::<Address>().expect("checksummed"), a);
    }
    let _ = text.parse::<Network>();
    let _ = text.parse::<Nonce>();
    if let Ok(ctx) = UrlContext::from_schema_url(text) {
        let _ = ctx.check(text, x402_types::EndpointKind::Stream);
    }
});
