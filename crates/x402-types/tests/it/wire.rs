//! Every wire example of the spec, parsed and written.

use x402_types::*;

const SCHEMA_V1: &str = r#"{
  "protocol": "ws402",
  "version": "1",
  "websocketEndpoint": "wss://x402.atomicstream.net/v1/stream/btc-usd?t=abc.def",
  "pricing": {"pricePerSecond": 0.0001, "currency": "USDC", "estimatedDuration": 300},
  "paymentDetails": {
    "scheme": "exact",
    "network": "base-sepolia",
    "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
    "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
    "maxAmountRequired": "30000",
    "maxTimeoutSeconds": 60
  },
  "stream": {"id": "btc-usd", "title": "BTC/USD trades", "description": "Live trades"}
}"#;

#[test]
fn seed_schema_parses_and_writes_strictly() {
    let s = Schema::from_json(SCHEMA_V1.as_bytes()).unwrap();
    assert_eq!(s.version, PathVersion::V1);
    assert_eq!(s.payment_details.network, Network::BASE_SEPOLIA);
    assert_eq!(s.payment_details.max_amount_required, Amount::from(30_000));
    assert_eq!(s.pricing.estimated_duration, 300);
    s.check_version(PathVersion::V1).unwrap();
    assert!(matches!(
        s.check_version(PathVersion::V2),
        Err(Error::VersionMismatch { .. })
    ));
    // v1 writes the v1 name.
    let out = s.to_json();
    assert!(out.contains(r#""network":"base-sepolia""#), "{out}");
    assert_eq!(Schema::from_json(out.as_bytes()).unwrap(), s);
    // The same on v2 writes CAIP-2.
    let mut v2 = s.clone();
    v2.version = PathVersion::V2;
    assert!(v2.to_json().contains(r#""network":"eip155:84532""#));
}

#[test]
fn schema_lenient_reading() {
    let lenient = SCHEMA_V1
        .replace(r#""maxAmountRequired": "30000""#, r#""amount": "30000""#)
        .replace(r#""base-sepolia""#, r#""eip155:84532""#)
        .replace(r#""protocol""#, r#""newField": {"x": 1}, "protocol""#);
    let s = Schema::from_json(lenient.as_bytes()).unwrap();
    assert_eq!(s.payment_details.max_amount_required, Amount::from(30_000));
    assert_eq!(s.payment_details.network, Network::BASE_SEPOLIA);
    // Bad inputs are typed errors.
    assert!(matches!(Schema::from_json(b"{"), Err(Error::Json { .. })));
    let neg = SCHEMA_V1.replace(r#""30000""#, r#""-5""#);
    assert!(matches!(
        Schema::from_json(neg.as_bytes()),
        Err(Error::Json { .. })
    ));
    let float = SCHEMA_V1.replace(r#""30000""#, "30000.5");
    assert!(Schema::from_json(float.as_bytes()).is_err());
    let proto = SCHEMA_V1.replace("ws402", "other");
    assert!(matches!(
        Schema::from_json(proto.as_bytes()),
        Err(Error::Protocol(_))
    ));
}

const V1_REQUIRED: &str = r#"{"x402Version":1,"error":"X-PAYMENT header is required","accepts":[{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","resource":"https://api.example.com/premium","description":"Premium","mimeType":"application/json","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","extra":{"name":"USDC","version":"2"}}]}"#;

#[test]
fn v1_payment_required_round_trips_byte_for_byte() {
    let pr: PaymentRequiredV1 = serde_json::from_str(V1_REQUIRED).unwrap();
    assert_eq!(pr.accepts[0].max_amount_required, Amount::from(10_000));
    assert_eq!(serde_json::to_string(&pr).unwrap(), V1_REQUIRED);
    let r = Requirement::from(&pr.accepts[0]);
    assert_eq!(
        r.eip712_extra().unwrap(),
        Eip712Extra {
            name: "USDC".into(),
            version: "2".into()
        }
    );
}

const V2_REQUIRED: &str = r#"{"x402Version":2,"error":"PAYMENT-SIGNATURE header is required","resource":{"url":"https://api.example.com/premium","description":"Premium","mimeType":"application/json"},"accepts":[{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"version":"2","name":"USDC"}}]}"#;

#[test]
fn v2_payment_required_header_and_accepted_preserved() {
    use base64::Engine as _;
    let header = base64::engine::general_purpose::STANDARD.encode(V2_REQUIRED);
    let pr = PaymentRequiredV2::from_header(&header).unwrap();
    assert_eq!(pr.accepts[0].get().amount, Amount::from(10_000));
    // extra keys in an unusual order survive byte for byte.
    assert!(
        pr.accepts[0]
            .raw_json()
            .contains(r#"{"version":"2","name":"USDC"}"#)
    );
    assert_eq!(serde_json::to_string(&pr).unwrap(), V2_REQUIRED);
    assert_eq!(pr.to_header(), header);
    // URL-safe base64 and unpadded base64 are refused.
    let urlsafe = base64::engine::general_purpose::URL_SAFE.encode(V2_REQUIRED);
    if urlsafe != header {
        assert!(matches!(
            PaymentRequiredV2::from_header(&urlsafe),
            Err(Error::Base64 { .. })
        ));
    }
    let unpadded = header.trim_end_matches('=');
    if unpadded != header {
        assert!(matches!(
            PaymentRequiredV2::from_header(unpadded),
            Err(Error::Base64 { .. })
        ));
    }
}

const AUTH: &str = r#"{"from":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","to":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","value":"10000","validAfter":"1740672089","validBefore":"1740672154","nonce":"0xf3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"}"#;
const SIG: &str = "0xdc53a4a579de989368a0fae2ef2172ff2f474b4297013f865d171239f17ef4c3157b4b4030f1bebc53d55ace15c2377dff501a60e1e56c291f1000d6e78f082f1b";

#[test]
fn v1_payload_header_round_trip() {
    let json = format!(
        r#"{{"x402Version":1,"scheme":"exact","network":"base-sepolia","payload":{{"signature":"{SIG}","authorization":{AUTH}}}}}"#
    );
    let p: PaymentPayloadV1 = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&p).unwrap(), json);
    let payload = PaymentPayload::V1(p);
    let header = payload.to_header();
    assert_eq!(
        PaymentPayload::from_header(PathVersion::V1, &header).unwrap(),
        payload
    );
    let evm = payload.exact_evm().unwrap();
    assert_eq!(evm.authorization.value, Amount::from(10_000));
    assert_eq!(evm.authorization.valid_before, U256::from_u64(1740672154));
    // A v1 header on a v2 path is refused.
    assert!(PaymentPayload::from_header(PathVersion::V2, &header).is_err());
    // Debug never prints the signature.
    assert!(!format!("{payload:?}").contains("dc53a4a5"));
}

#[test]
fn v2_payload_echoes_accepted_exactly() {
    let accepted = r#"{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxTimeoutSeconds":60,"extra":{"version":"2","name":"USDC"}}"#;
    let json = format!(
        r#"{{"x402Version":2,"resource":{{"url":"https://api.example.com/premium"}},"accepted":{accepted},"payload":{{"signature":"{SIG}","authorization":{AUTH}}}}}"#
    );
    let p: PaymentPayloadV2 = serde_json::from_str(&json).unwrap();
    assert_eq!(p.accepted.raw_json(), accepted);
    assert_eq!(serde_json::to_string(&p).unwrap(), json);
    let payload = PaymentPayload::V2(p);
    assert_eq!(payload.network(), &Network::BASE_SEPOLIA);
    let h = payload.to_header();
    assert_eq!(
        PaymentPayload::from_header(PathVersion::V2, &h).unwrap(),
        payload
    );
}

#[test]
fn facilitator_bodies() {
    let v1 = format!(
        r#"{{"x402Version":1,"paymentPayload":{{"x402Version":1,"scheme":"exact","network":"base-sepolia","payload":{{"signature":"{SIG}","authorization":{AUTH}}}}},"paymentRequirements":{}}}"#,
        &V1_REQUIRED[V1_REQUIRED.find("[{").unwrap() + 1..V1_REQUIRED.len() - 2]
    );
    let req = FacilitatorRequest::from_json(v1.as_bytes()).unwrap();
    assert_eq!(req.x402_version(), 1);
    assert_eq!(serde_json::to_string(&req).unwrap(), v1);
    assert!(
        FacilitatorRequest::from_json(
            br#"{"x402Version":3,"paymentPayload":{},"paymentRequirements":{}}"#
        )
        .is_err()
    );

    let verify: VerifyResponse = serde_json::from_str(r#"{"isValid":false,"invalidReason":"invalid_exact_evm_payload_signature","payer":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"}"#).unwrap();
    assert!(!verify.is_valid);
    assert_eq!(
        ReasonFamily::classify(verify.invalid_reason.as_deref().unwrap()),
        ReasonFamily::Signature
    );
    let settle: SettleResponse = serde_json::from_str(r#"{"success":true,"transaction":"0xabc","network":"eip155:84532","payer":"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","amount":"10000"}"#).unwrap();
    assert!(settle.success && !settle.is_pending());
    let pending: SettleResponse = serde_json::from_str(r#"{"success":false,"errorReason":"settlement_pending","transaction":"0xabc","network":"base"}"#).unwrap();
    assert!(pending.is_pending());
    let sup: SupportedResponse = serde_json::from_str(r#"{"kinds":[{"x402Version":1,"scheme":"exact","network":"base-sepolia"},{"x402Version":2,"scheme":"exact","network":"eip155:84532","extra":{"feePayer":"x"}}],"extensions":[],"signers":{"eip155:*":["0x1"]}}"#).unwrap();
    assert_eq!(sup.kinds.len(), 2);
}

#[test]
fn reason_families() {
    for (r, f) in [
        (
            "invalid_exact_evm_payload_authorization_valid_before",
            ReasonFamily::TimeWindow,
        ),
        (
            "invalid_exact_evm_payload_authorization_value",
            ReasonFamily::Amount,
        ),
        ("insufficient_funds", ReasonFamily::Funds),
        (
            "invalid_exact_evm_payload_recipient_mismatch",
            ReasonFamily::Recipient,
        ),
        ("nonce_already_used", ReasonFamily::Nonce),
        ("invalid_network", ReasonFamily::Network),
        ("mystery", ReasonFamily::Other),
    ] {
        assert_eq!(ReasonFamily::classify(r), f, "{r}");
    }
}

#[test]
fn hello_and_renew_bodies() {
    let h = Hello {
        session_id: "s1".into(),
        stream_id: "btc".into(),
        version: PathVersion::V2,
        slice_seconds: 5,
        expires_at: 100,
        server_time: 95,
        renew_url: "http://127.0.0.1/v2/renew/btc?t=x".into(),
        resumed: true,
        next_seq: 42,
    };
    let m = ServerMessage::Hello(h);
    assert_eq!(ServerMessage::parse(&m.to_json()).unwrap(), m);
    let r = RenewResponse::from_json(
        br#"{"sessionId":"s","expiresAt":10,"sliceSeconds":5,"slices":2}"#,
    )
    .unwrap();
    assert_eq!(r.slices, 2);
    let e = ErrorBody::from_json(br#"{"error":"payment_invalid","message":"bad","accepts":[{}]}"#)
        .unwrap();
    assert_eq!(e.error, x402_types::ErrorCode::PaymentInvalid);
}
