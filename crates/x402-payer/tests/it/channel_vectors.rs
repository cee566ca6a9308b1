//! `batch-settlement` digests and signatures against independent known answers:
//! `batch_vectors.py` computes them with the official x402 Python SDK and with
//! eth-account's EIP-712 encoder (and checks each recovers to its signer); ours must
//! equal them byte for byte. RFC 6979 makes ECDSA deterministic, so our signatures
//! of the same digests must be the same bytes too.

use std::process::Command;

use serde_json::Value;
use x402_payer::channel::{
    ChannelDomain, claim_row, collector_data, deposit_nonce, receive_digest, sign_claim_batch,
    sign_refund, sign_voucher,
};
use x402_payer::eip712::Domain;
use x402_payer::{DigestSigner, LocalSigner};
use x402_types::batch::{BatchPayload, ChannelConfig, SignedVoucher, parse_payload};
use x402_types::{Address, Amount, Authorization, B256, U256};

fn vectors() -> Value {
    let py = atomicstream_testkit::x402_python();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/batch_vectors.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("PYTHONPATH", &py)
        .env("DEV_KEY", atomicstream_testkit::DEV_KEY)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "batch_vectors.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_str().unwrap_or_else(|| panic!("{path:?} is a string"))
}

/// A number written as a JSON number or a decimal string.
fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{v} is a number"))
}

fn hex32(x: &[u8; 32]) -> String {
    format!("0x{}", hex::encode(x))
}

#[test]
fn digests_and_signatures_equal_the_official_sdk_and_eth_account() {
    let v = vectors();
    let i = &v["inputs"];
    let addr = |k: &str| s(i, &[k]).parse::<Address>().unwrap();
    let config = |salt: &str| ChannelConfig {
        payer: addr("payer"),
        payer_authorizer: addr("payerAuthorizer"),
        receiver: addr("receiver"),
        receiver_authorizer: addr("receiverAuthorizer"),
        token: addr("token"),
        withdraw_delay: i["withdrawDelay"].as_u64().unwrap(),
        salt: s(i, &[salt]).parse().unwrap(),
    };
    let domain = ChannelDomain::new(i["chainId"].as_u64().unwrap());
    let (c1, c2) = (config("salt"), config("salt2"));
    let (id1, id2) = (domain.channel_id(&c1), domain.channel_id(&c2));
    assert_eq!(id1.to_string(), s(&v, &["channelId", "value"]));
    assert_eq!(id2.to_string(), s(&v, &["channelId2", "value"]));

    let payer = LocalSigner::from_hex(atomicstream_testkit::DEV_KEY).unwrap();
    let authorizer = LocalSigner::from_hex(s(i, &["receiverAuthorizerKey"])).unwrap();
    assert_eq!(authorizer.address(), addr("receiverAuthorizer"));

    let vouchers = v["vouchers"].as_array().unwrap();
    assert!(vouchers.len() >= 3);
    for w in vouchers {
        let id: B256 = s(w, &["channelId"]).parse().unwrap();
        let max: u128 = s(w, &["maxClaimableAmount"]).parse().unwrap();
        assert_eq!(hex32(&domain.voucher_digest(&id, max)), s(w, &["digest"]));
        let ours = sign_voucher(&payer, &domain, id, max).unwrap();
        assert_eq!(ours.signature.to_string(), s(w, &["signature"]));
    }
    for r in v["refunds"].as_array().unwrap() {
        let id: B256 = s(r, &["channelId"]).parse().unwrap();
        let nonce = U256::from(num(&r["nonce"]));
        let amount = u128::from(num(&r["amount"]));
        assert_eq!(
            hex32(&domain.refund_digest(&id, nonce, amount)),
            s(r, &["digest"])
        );
        let sig = sign_refund(&authorizer, &domain, &id, nonce, amount).unwrap();
        assert_eq!(sig.to_string(), s(r, &["signature"]));
    }

    // The claim batch: rows for the two channels, in order.
    let cb = &v["claimBatch"];
    let rows: Vec<_> = cb["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let id = s(e, &["channelId"]);
            let c = if id == id1.to_string() { &c1 } else { &c2 };
            let voucher = SignedVoucher {
                channel_id: domain.channel_id(c),
                max_claimable_amount: s(e, &["maxClaimableAmount"]).parse().unwrap(),
                signature: Default::default(),
            };
            claim_row(c, &voucher, s(e, &["totalClaimed"]).parse().unwrap())
        })
        .collect();
    assert_eq!(hex32(&domain.claim_batch_digest(&rows)), s(cb, &["digest"]));
    assert_eq!(
        sign_claim_batch(&authorizer, &domain, &rows)
            .unwrap()
            .to_string(),
        s(cb, &["signature"])
    );

    // The deposit's ERC-3009 authorization under the token's domain, and collectorData.
    let d = &v["erc3009Deposit"];
    let salt: B256 = s(d, &["depositSalt"]).parse().unwrap();
    let nonce = deposit_nonce(&id1, &salt);
    assert_eq!(nonce.to_string(), s(d, &["nonce"]));
    let token_domain = Domain {
        name: s(d, &["domain", "name"]).into(),
        version: s(d, &["domain", "version"]).into(),
        chain_id: d["domain"]["chainId"].as_u64().unwrap(),
        verifying_contract: s(d, &["domain", "verifyingContract"]).parse().unwrap(),
    };
    let auth = Authorization {
        from: s(d, &["from"]).parse().unwrap(),
        to: s(d, &["to"]).parse().unwrap(),
        value: Amount::from(s(d, &["value"]).parse::<u64>().unwrap()),
        valid_after: s(d, &["validAfter"]).parse().unwrap(),
        valid_before: s(d, &["validBefore"]).parse().unwrap(),
        nonce,
    };
    assert_eq!(auth.to, x402_types::batch::ERC3009_DEPOSIT_COLLECTOR);
    let digest = receive_digest(&token_domain, &auth);
    assert_eq!(hex32(&digest), s(d, &["digest"]));
    let sig = payer.sign_digest(&digest).unwrap();
    assert_eq!(sig.to_string(), s(d, &["signature"]));
    let data = collector_data(auth.valid_after, auth.valid_before, &salt, &sig.0);
    assert_eq!(format!("0x{}", hex::encode(data)), s(d, &["collectorData"]));

    // The official client's deposit payload parses into our types and serializes
    // back to the same JSON.
    let wire = &v["depositPayload"]["value"];
    let parsed = parse_payload(wire.as_object().unwrap()).expect("the SDK's deposit parses");
    assert!(matches!(parsed, BatchPayload::Deposit { .. }));
    assert_eq!(&Value::Object(parsed.to_map()), wire);
}
