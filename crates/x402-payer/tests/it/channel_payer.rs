//! The channel payer: a first payment deposits and signs the first voucher, later
//! ones sign `charged + price`; the deposit cap is checked before anything is signed;
//! a receipt never makes it believe a charge above what it signed; channels persist.

use serde_json::json;
use x402_payer::channel::{ChannelDomain, deposit_nonce, receive_digest, voucher_signer};
use x402_payer::{
    DigestSigner, Error, EvmChannelPayer, LocalSigner, Payer, PolicyError, domain_for, recover,
};
use x402_types::batch::{BatchPayload, ERC3009_DEPOSIT_COLLECTOR, parse_payload};
use x402_types::{
    Amount, Authorization, FixedBytes, Offer, PaymentPayload, PreservedRequirement, Requirement,
    SchemePayload, SettleResponse,
};

const PRICE: u64 = 2_000;

fn offer() -> Offer {
    let req = Requirement {
        scheme: "batch-settlement".into(),
        network: "eip155:84532".parse().unwrap(),
        amount: Amount::from(PRICE),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: "0x90F79bf6EB2c4f870365E785982E1f101E93b906".into(),
        max_timeout_seconds: 60,
        extra: Some(json!({
            "name": "USDC", "version": "2",
            "receiverAuthorizer": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            "withdrawDelay": 900, "minDeposit": "10000",
        })),
    };
    Offer::V2 {
        accepted: PreservedRequirement::new(req.to_v2()),
        resource: None,
    }
}

fn batch(p: &PaymentPayload) -> BatchPayload {
    match p.scheme_payload() {
        SchemePayload::Other(m) => parse_payload(m).unwrap(),
        other => panic!("not a batch payload: {other:?}"),
    }
}

fn receipt(p: &PaymentPayload, charged: u64, balance: u64) -> SettleResponse {
    let (_, v) = batch(p)
        .channel()
        .map(|(c, v)| (c.clone(), v.clone()))
        .unwrap();
    SettleResponse {
        success: true,
        error_reason: None,
        payer: None,
        transaction: String::new(),
        network: "eip155:84532".into(),
        amount: None,
        extra: Some(
            json!({ "chargedAmount": charged.to_string(), "channelState": {
            "channelId": v.channel_id, "balance": balance.to_string(), "totalClaimed": "0",
            "withdrawRequestedAt": 0, "refundNonce": "0" } }),
        ),
    }
}

#[tokio::test]
async fn deposits_once_then_signs_cumulative_vouchers() {
    let signer = LocalSigner::random().unwrap();
    let me = signer.address();
    let payer = EvmChannelPayer::new(signer, Amount::from(100_000u64));
    let domain = ChannelDomain::new(84532);

    let first = payer.pay(&offer()).await.unwrap();
    let BatchPayload::Deposit {
        channel_config,
        voucher,
        deposit,
    } = batch(&first)
    else {
        panic!("the first payment deposits");
    };
    // 12 slices (24000) is above minDeposit (10000).
    assert_eq!(deposit.amount, 12 * u128::from(PRICE));
    assert_eq!(voucher.max_claimable_amount, u128::from(PRICE));
    assert_eq!(voucher_signer(&domain, &voucher).unwrap(), me);
    assert_eq!(domain.channel_id(&channel_config), voucher.channel_id);
    // The deposit's ERC-3009 authorization recovers to the payer under the token's domain.
    let a = deposit.authorization.erc3009_authorization.unwrap();
    let auth = Authorization {
        from: me,
        to: ERC3009_DEPOSIT_COLLECTOR,
        value: Amount::from(12 * PRICE),
        valid_after: a.valid_after,
        valid_before: a.valid_before,
        nonce: deposit_nonce(&voucher.channel_id, &a.salt),
    };
    let token = domain_for(&offer().requirement()).unwrap();
    let sig: [u8; 65] = a.signature.as_slice().try_into().unwrap();
    assert_eq!(
        recover(&receive_digest(&token, &auth), &FixedBytes(sig)).unwrap(),
        me
    );

    payer.accepted(Some(&receipt(&first, PRICE, 12 * PRICE)));
    let second = payer.pay(&offer()).await.unwrap();
    let BatchPayload::Voucher { voucher, .. } = batch(&second) else {
        panic!("later payments are vouchers");
    };
    assert_eq!(voucher.max_claimable_amount, 2 * u128::from(PRICE));

    // A server claiming more than was signed, or a smaller balance, is not believed.
    payer.accepted(Some(&receipt(&second, 5 * PRICE, 0)));
    let ch = &payer.channels()[0];
    assert_eq!(
        (ch.charged, ch.signed_max),
        (2 * u128::from(PRICE), 2 * u128::from(PRICE))
    );
    assert_eq!(
        ch.balance,
        12 * u128::from(PRICE),
        "our own deposit, not the server's number"
    );
    let third = payer.pay(&offer()).await.unwrap();
    assert!(
        matches!(batch(&third), BatchPayload::Voucher { .. }),
        "no second deposit"
    );
    payer.accepted(None);

    // The refund signs exactly the charged total.
    let refund = payer.sign_refund(&offer()).unwrap().unwrap();
    let BatchPayload::Refund {
        voucher, amount, ..
    } = batch(&refund)
    else {
        panic!("a refund");
    };
    assert_eq!(
        (voucher.max_claimable_amount, amount),
        (3 * u128::from(PRICE), None)
    );
}

#[tokio::test]
async fn the_deposit_cap_is_checked_before_signing() {
    let payer = EvmChannelPayer::new(LocalSigner::random().unwrap(), Amount::from(5_000u64));
    let err = payer.pay(&offer()).await.unwrap_err();
    assert!(
        matches!(err, Error::Policy(PolicyError::DepositCap { .. })),
        "{err}"
    );
    assert!(
        payer.channels().iter().all(|c| c.signed_max == 0),
        "nothing was signed"
    );
}

#[tokio::test]
async fn channels_persist_in_a_private_file() {
    let dir = atomicstream_testkit::scratch("channels");
    // A directory that does not exist yet is created (the CLI's default place).
    let path = dir.join("new").join("channels.json");
    let key = LocalSigner::random().unwrap().to_hex_secret();
    let first = {
        let payer = EvmChannelPayer::new(
            LocalSigner::from_hex(&key).unwrap(),
            Amount::from(100_000u64),
        )
        .with_file(&path)
        .unwrap();
        let p = payer.pay(&offer()).await.unwrap();
        payer.accepted(Some(&receipt(&p, PRICE, 12 * PRICE)));
        p
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = EvmChannelPayer::new(
        LocalSigner::from_hex(&key).unwrap(),
        Amount::from(100_000u64),
    )
    .with_file(&path)
    .unwrap();
    let next = again.pay(&offer()).await.unwrap();
    let (BatchPayload::Deposit { voucher: v1, .. }, BatchPayload::Voucher { voucher: v2, .. }) =
        (batch(&first), batch(&next))
    else {
        panic!("a later run pays the same channel by voucher");
    };
    assert_eq!(v1.channel_id, v2.channel_id);
    assert_eq!(v2.max_claimable_amount, 2 * u128::from(PRICE));
}

/// The same offer for another receiver: another channel.
fn offer_to(pay_to: &str) -> Offer {
    let mut req = offer().requirement();
    req.pay_to = pay_to.into();
    Offer::V2 {
        accepted: PreservedRequirement::new(req.to_v2()),
        resource: None,
    }
}

/// A payer shared by two sessions on two channels: each receipt is booked on its own
/// channel, and an acceptance without a receipt is not guessed while both are in flight.
#[tokio::test]
async fn a_shared_payer_books_each_acceptance_on_its_own_channel() {
    let payer = EvmChannelPayer::new(LocalSigner::random().unwrap(), Amount::from(100_000u64));
    let (a, b) = (
        offer(),
        offer_to("0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"),
    );
    let pa = payer.pay(&a).await.unwrap();
    let pb = payer.pay(&b).await.unwrap();
    let channel = |p: &PaymentPayload| batch(p).channel().unwrap().1.channel_id;
    let (ida, idb) = (channel(&pa), channel(&pb));
    assert_ne!(ida, idb);
    let of = |id| {
        payer
            .channels()
            .into_iter()
            .find(|c| c.channel_id == id)
            .unwrap()
    };
    // B's receipt lands first: B's deposit and charge, A untouched.
    payer.accepted(Some(&receipt(&pb, PRICE, 12 * PRICE)));
    assert_eq!(
        (of(idb).charged, of(idb).balance),
        (u128::from(PRICE), 12 * u128::from(PRICE))
    );
    assert_eq!((of(ida).charged, of(ida).balance), (0, 0));
    // Now only A is in flight: a receipt-less acceptance is A's, whole.
    payer.accepted(None);
    assert_eq!(
        (of(ida).charged, of(ida).balance),
        (u128::from(PRICE), 12 * u128::from(PRICE))
    );
    // Both in flight: a receipt-less acceptance is not guessed.
    payer.pay(&a).await.unwrap();
    payer.pay(&b).await.unwrap();
    payer.accepted(None);
    assert_eq!(of(ida).charged, u128::from(PRICE));
    assert_eq!(of(idb).charged, u128::from(PRICE));
}
