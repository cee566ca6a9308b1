//! Property tests: round trips for every type, and no decoder panics on arbitrary input.

use proptest::prelude::*;
use x402_types::*;

fn u256() -> impl Strategy<Value = U256> {
    any::<[u8; 32]>().prop_map(U256::from_be_bytes)
}

fn network() -> impl Strategy<Value = Network> {
    prop_oneof![
        prop::sample::select(x402_types::network::EVM_NETWORKS.to_vec())
            .prop_map(|(_, id)| Network::Evm(id)),
        (1u64..u64::MAX).prop_map(Network::Evm),
        Just(Network::Solana("5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp".into())),
    ]
}

fn authorization() -> impl Strategy<Value = Authorization> {
    (
        any::<[u8; 20]>(),
        any::<[u8; 20]>(),
        u256(),
        u256(),
        u256(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(f, t, v, a, b, n)| Authorization {
            from: Address(f),
            to: Address(t),
            value: Amount(v),
            valid_after: a,
            valid_before: b,
            nonce: FixedBytes(n),
        })
}

fn requirement_v2() -> impl Strategy<Value = PaymentRequirementsV2> {
    (
        network(),
        u256(),
        any::<[u8; 20]>(),
        any::<[u8; 20]>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(n, a, asset, pay, t, extra)| PaymentRequirementsV2 {
            scheme: "exact".into(),
            network: n,
            amount: Amount(a),
            asset: Address(asset).to_string(),
            pay_to: Address(pay).to_string(),
            max_timeout_seconds: t,
            extra: extra.then(|| serde_json::json!({"name": "USDC", "version": "2"})),
        })
}

proptest! {
    #[test]
    fn u256_decimal_round_trip(v in u256()) {
        let s = v.to_string();
        prop_assert_eq!(s.parse::<U256>().unwrap(), v);
        let j = serde_json::to_string(&v).unwrap();
        prop_assert_eq!(serde_json::from_str::<U256>(&j).unwrap(), v);
    }

    #[test]
    fn u256_matches_u128(a in any::<u128>(), b in any::<u128>()) {
        let (x, y) = (U256::from_u128(a), U256::from_u128(b));
        prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        prop_assert_eq!(x.checked_sub(y).map(|v| v.to_u128().unwrap()), a.checked_sub(b));
        let sum = x.checked_add(y).unwrap();
        prop_assert_eq!(sum.checked_sub(y).unwrap(), x);
        prop_assert_eq!(x.to_string(), a.to_string());
    }

    #[test]
    fn amount_display_round_trip(v in any::<u128>(), decimals in 0u8..30) {
        let a = Amount(U256::from_u128(v));
        let shown = a.to_display(decimals);
        prop_assert_eq!(Amount::from_display(&shown, decimals).unwrap(), a);
    }

    #[test]
    fn address_round_trip(b in any::<[u8; 20]>()) {
        let a = Address(b);
        let s = a.to_string();
        prop_assert_eq!(s.parse::<Address>().unwrap(), a);
        prop_assert_eq!(s.to_lowercase().parse::<Address>().unwrap(), a);
        let j = serde_json::to_string(&a).unwrap();
        prop_assert_eq!(serde_json::from_str::<Address>(&j).unwrap(), a);
    }

    #[test]
    fn network_round_trip(n in network()) {
        prop_assert_eq!(n.caip2().parse::<Network>().unwrap(), n.clone());
        prop_assert_eq!(n.v1_name().parse::<Network>().unwrap(), n);
    }

    #[test]
    fn payload_round_trips(auth in authorization(), sig in any::<[u8; 32]>(), req in requirement_v2(), v1 in any::<bool>()) {
        let mut s = [0u8; 65];
        s[..32].copy_from_slice(&sig);
        let evm = SchemePayload::ExactEvm(ExactEvmPayload { signature: FixedBytes(s), authorization: auth });
        let payload = if v1 {
            PaymentPayload::V1(PaymentPayloadV1 { x402_version: 1, scheme: "exact".into(), network: req.network.clone(), payload: evm })
        } else {
            PaymentPayload::V2(PaymentPayloadV2 {
                x402_version: 2,
                resource: None,
                accepted: PreservedRequirement::new(req.clone()),
                payload: evm,
                extensions: None,
            })
        };
        let h = payload.to_header();
        prop_assert_eq!(PaymentPayload::from_header(payload.version(), &h).unwrap(), payload);
    }

    #[test]
    fn requirement_round_trips(req in requirement_v2()) {
        let j = serde_json::to_string(&req).unwrap();
        prop_assert_eq!(serde_json::from_str::<PaymentRequirementsV2>(&j).unwrap(), req.clone());
        let r = Requirement::from(&req);
        let v1 = r.to_v1("https://x/y", "d");
        let j1 = serde_json::to_string(&v1).unwrap();
        prop_assert_eq!(serde_json::from_str::<PaymentRequirementsV1>(&j1).unwrap(), v1);
    }

    #[test]
    fn event_round_trip(seq in any::<u64>(), ts in proptest::option::of(any::<u64>()), s in ".*", n in any::<i64>()) {
        let data = x402_types::EventData::from_value(&serde_json::json!({"s": s, "n": n})).unwrap();
        let m = ServerMessage::Event(Event { seq, data, ts });
        prop_assert_eq!(ServerMessage::parse(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn control_messages_round_trip(a in any::<u64>(), b in any::<u64>(), s in ".*") {
        for m in [
            ServerMessage::Renewed { expires_at: a, slices: b },
            ServerMessage::Expiring { expires_at: a, seconds_left: b },
            ServerMessage::Expired { expires_at: a },
            ServerMessage::End { reason: s.clone() },
            ServerMessage::Error { code: x402_types::ErrorCode::parse(&s), message: s.clone(), count: Some(b) },
            ServerMessage::Pong,
            ServerMessage::VoucherNeeded { channel_id: s.clone(), charged_cumulative_amount: a.to_string(), max_claimable_amount: b.to_string(), expires_at: a },
            ServerMessage::VoucherAccepted { expires_at: a, slices: b, receipt: Some(s.clone()) },
            ServerMessage::VoucherAccepted { expires_at: a, slices: b, receipt: None },
            ServerMessage::VoucherRefused { status: (b % 600) as u16, code: x402_types::ErrorCode::parse(&s), message: s.clone() },
        ] {
            prop_assert_eq!(ServerMessage::parse(&m.to_json()).unwrap(), m);
        }
        let v = ClientMessage::Voucher { payment: s.clone() };
        prop_assert_eq!(ClientMessage::parse(&v.to_json()), v);
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = ServerMessage::parse(&text);
        let _ = ClientMessage::parse(&text);
        let _ = Schema::from_json(&bytes);
        let _ = FacilitatorRequest::from_json(&bytes);
        let _ = RenewResponse::from_json(&bytes);
        let _ = ErrorBody::from_json(&bytes);
        let _ = PaymentPayload::from_header(PathVersion::V1, &text);
        let _ = PaymentPayload::from_header(PathVersion::V2, &text);
        let _ = PaymentRequiredV2::from_header(&text);
        let _ = text.parse::<U256>();
        let _ = Amount::from_display(&text, 6);
        let _ = text.parse::<Address>();
        let _ = text.parse::<Network>();
        let _ = text.parse::<Nonce>();
        let _ = UrlContext::from_schema_url(&text);
    }

    #[test]
    fn json_shaped_garbage_never_panics(
        ty in prop::sample::select(vec!["hello", "event", "renewed", "expiring", "expired", "end", "error", "pong", "voucher-needed", "voucher-accepted", "voucher-refused", "voucher", "x"]),
        field in prop::sample::select(vec!["seq", "data", "expiresAt", "slices", "sliceSeconds", "code", "version", "status", "receipt", "payment", "channelId"]),
        val in prop::sample::select(vec!["1", "-1", "\"s\"", "null", "[]", "{}", "1.5", "18446744073709551616"]),
    ) {
        let text = format!(r#"{{"type":"{ty}","{field}":{val}}}"#);
        let _ = ServerMessage::parse(&text);
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &text);
        let _ = PaymentPayload::from_header(PathVersion::V2, &b64);
    }
}
