//! The embedded `batch-settlement` ledger: arithmetic, replays, signatures, bounds.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use x402_payer::channel::{
    ChannelDomain, claim_row, deposit_nonce, receive_digest, sign_claim_batch, sign_refund,
    sign_voucher,
};
use x402_payer::eip712::Domain;
use x402_payer::{DigestSigner, FixedClock, LocalSigner};
use x402_types::batch::{
    BatchPayload, ChannelConfig, ChannelState, Deposit, DepositAuthorization,
    ERC3009_DEPOSIT_COLLECTOR, Erc3009Deposit, SignedVoucher, VoucherClaim,
};
use x402_types::{
    Address, Amount, Authorization, B256, FacilitatorRequest, FixedBytes, Network, PaymentPayload,
    PaymentPayloadV2, PaymentRequirements, PreservedRequirement, Requirement, SchemePayload,
    SettleResponse, U256, VerifyResponse,
};

use super::{EMBEDDED_AUTHORIZER_KEY, EMBEDDED_RECEIVER_AUTHORIZER, reasons};
use crate::{EmbeddedFacilitator, Facilitator};

const NOW: u64 = 1_800_000_000;
const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";
const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";

/// A payer's channel with the embedded facilitator, on base-sepolia.
struct Channel {
    f: EmbeddedFacilitator,
    payer: LocalSigner,
    config: ChannelConfig,
    domain: ChannelDomain,
    id: B256,
}

fn requirement() -> Requirement {
    Requirement {
        scheme: "batch-settlement".into(),
        network: Network::BASE_SEPOLIA,
        amount: Amount::from(10_000u64),
        asset: USDC.into(),
        pay_to: PAY_TO.into(),
        max_timeout_seconds: 60,
        extra: Some(serde_json::json!({
            "name": "USDC", "version": "2",
            "receiverAuthorizer": EMBEDDED_RECEIVER_AUTHORIZER.to_string(),
            "withdrawDelay": 900, "minDeposit": "120000",
        })),
    }
}

fn request(b: &BatchPayload) -> FacilitatorRequest {
    let r = requirement();
    FacilitatorRequest {
        payment_payload: PaymentPayload::V2(PaymentPayloadV2 {
            x402_version: 2,
            resource: None,
            accepted: PreservedRequirement::new(r.to_v2()),
            payload: SchemePayload::Other(b.to_map()),
            extensions: None,
        }),
        payment_requirements: PaymentRequirements::V2(r.to_v2()),
    }
}

fn authorizer() -> LocalSigner {
    LocalSigner::from_hex(EMBEDDED_AUTHORIZER_KEY).unwrap()
}

impl Channel {
    fn new() -> Channel {
        let payer = LocalSigner::random().unwrap();
        let config = ChannelConfig {
            payer: payer.address(),
            payer_authorizer: payer.address(),
            receiver: PAY_TO.parse().unwrap(),
            receiver_authorizer: EMBEDDED_RECEIVER_AUTHORIZER,
            token: USDC.parse().unwrap(),
            withdraw_delay: 900,
            salt: FixedBytes([3; 32]),
        };
        let domain = ChannelDomain::new(84532);
        let id = domain.channel_id(&config);
        Channel {
            f: EmbeddedFacilitator::new(Arc::new(FixedClock(NOW))),
            payer,
            config,
            domain,
            id,
        }
    }

    fn voucher_by(&self, who: &LocalSigner, max: u128) -> SignedVoucher {
        sign_voucher(who, &self.domain, self.id, max).unwrap()
    }

    fn voucher(&self, max: u128) -> BatchPayload {
        BatchPayload::Voucher {
            channel_config: self.config.clone(),
            voucher: self.voucher_by(&self.payer, max),
        }
    }

    /// A deposit of `amount` with the voucher `max`; `salt` makes each authorization new;
    /// `tweak` changes what the payer signs (not what is sent).
    fn deposit_with(
        &self,
        amount: u128,
        max: u128,
        salt: u8,
        tweak: impl FnOnce(&mut Authorization),
    ) -> BatchPayload {
        let salt = FixedBytes([salt; 32]);
        let valid_before = U256::from_u64(NOW + 60);
        let mut auth = Authorization {
            from: self.config.payer,
            to: ERC3009_DEPOSIT_COLLECTOR,
            value: Amount::from_u128(amount),
            valid_after: U256::ZERO,
            valid_before,
            nonce: deposit_nonce(&self.id, &salt),
        };
        tweak(&mut auth);
        let token = Domain {
            name: "USDC".into(),
            version: "2".into(),
            chain_id: 84532,
            verifying_contract: USDC.parse().unwrap(),
        };
        let sig = self
            .payer
            .sign_digest(&receive_digest(&token, &auth))
            .unwrap();
        BatchPayload::Deposit {
            channel_config: self.config.clone(),
            voucher: self.voucher_by(&self.payer, max),
            deposit: Deposit {
                amount,
                authorization: DepositAuthorization {
                    erc3009_authorization: Some(Erc3009Deposit {
                        valid_after: U256::ZERO,
                        valid_before,
                        salt,
                        signature: x402_types::batch::Bytes(sig.0.to_vec()),
                    }),
                    permit2_authorization: None,
                },
            },
        }
    }

    fn deposit(&self, amount: u128, max: u128, salt: u8) -> BatchPayload {
        self.deposit_with(amount, max, salt, |_| {})
    }

    fn row(&self, max: u128, total: u128) -> VoucherClaim {
        claim_row(&self.config, &self.voucher_by(&self.payer, max), total)
    }

    fn claim(&self, rows: Vec<VoucherClaim>) -> BatchPayload {
        BatchPayload::Claim {
            claims: rows,
            claim_authorizer_signature: None,
        }
    }

    /// The server's refund: the zero-charge voucher `charged`, its claim first.
    fn refund(&self, charged: u128, amount: Option<u128>, nonce: u64) -> BatchPayload {
        BatchPayload::Refund {
            channel_config: self.config.clone(),
            voucher: self.voucher_by(&self.payer, charged),
            amount,
            refund_nonce: Some(U256::from_u64(nonce)),
            claims: Some(vec![self.row(charged, charged)]),
            refund_authorizer_signature: None,
            claim_authorizer_signature: None,
        }
    }

    async fn verify(&self, b: &BatchPayload) -> VerifyResponse {
        self.f.verify(&request(b)).await.unwrap()
    }

    async fn settle(&self, b: &BatchPayload) -> SettleResponse {
        self.f.settle(&request(b)).await.unwrap()
    }

    async fn state(&self) -> ChannelState {
        // A voucher of 1 reads the state (valid or not, the answer carries it).
        let v = self.verify(&self.voucher(1)).await;
        serde_json::from_value(v.extra.unwrap()).unwrap()
    }
}

fn refused(v: &VerifyResponse) -> &str {
    assert!(!v.is_valid, "{v:?}");
    v.invalid_reason.as_deref().unwrap_or_default()
}

fn failed(s: &SettleResponse) -> &str {
    assert!(!s.success, "{s:?}");
    assert!(s.transaction.is_empty() && s.amount.is_none(), "{s:?}");
    s.error_reason.as_deref().unwrap_or_default()
}

fn paid(s: &SettleResponse) -> u128 {
    assert!(s.success, "{s:?}");
    assert!(s.transaction.is_empty(), "nothing on chain: {s:?}");
    s.amount.unwrap().atomic().to_u128().unwrap()
}

fn channel_state(s: &SettleResponse) -> ChannelState {
    serde_json::from_value(s.extra.as_ref().unwrap()["channelState"].clone()).unwrap()
}

#[test]
fn the_authorizer_is_the_published_keys_address() {
    let key = x402_types::keccak256(
        b"atomicstream embedded facilitator receiverAuthorizer (local use only)",
    );
    assert_eq!(
        EMBEDDED_AUTHORIZER_KEY,
        format!("0x{}", hex_lower(&key)),
        "the key is the documented hash"
    );
    assert_eq!(authorizer().address(), EMBEDDED_RECEIVER_AUTHORIZER);
    assert_eq!(
        EMBEDDED_RECEIVER_AUTHORIZER.to_string(),
        "0xea1e27aFA06298DFDB9d75d732607B4e1Ed9bbD7"
    );
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn supported_lists_the_scheme_with_its_authorizer() {
    let s = EmbeddedFacilitator::default().supported().await.unwrap();
    let kind = s
        .kinds
        .iter()
        .find(|k| k.scheme == "batch-settlement" && k.network == "eip155:84532")
        .unwrap();
    assert_eq!(kind.x402_version, 2);
    assert_eq!(
        kind.extra.as_ref().unwrap()["receiverAuthorizer"],
        "0xea1e27aFA06298DFDB9d75d732607B4e1Ed9bbD7"
    );
    assert!(s.kinds.iter().any(|k| k.scheme == "exact"), "exact stays");
}

#[tokio::test]
async fn deposit_vouchers_claim_sweep_and_refund_add_up_exactly() {
    let c = Channel::new();
    // Deposit 120,000 with the first voucher (10,000).
    let d = c.deposit(120_000, 10_000, 1);
    let v = c.verify(&d).await;
    assert!(v.is_valid, "{v:?}");
    assert_eq!(v.payer, Some(c.config.payer.to_string()));
    let extra = v.extra.unwrap();
    assert_eq!(extra["balance"], "0", "verify answers the state before");
    assert_eq!(extra["channelId"], c.id.to_string());
    assert_eq!(extra["withdrawRequestedAt"], 0);
    let s = c.settle(&d).await;
    assert_eq!(paid(&s), 120_000);
    let st = channel_state(&s);
    assert_eq!((st.balance, st.total_claimed), (120_000, 0));
    assert_eq!(st.refund_nonce, U256::ZERO);
    // Vouchers 20,000 .. 40,000: valid, never settled.
    for max in [20_000, 30_000, 40_000] {
        assert!(c.verify(&c.voucher(max)).await.is_valid);
    }
    assert_eq!(
        failed(&c.settle(&c.voucher(40_000)).await),
        reasons::PAYLOAD_TYPE
    );
    // Claim 30,000 of the 40,000 voucher.
    let claim = c.claim(vec![c.row(40_000, 30_000)]);
    let s = c.settle(&claim).await;
    assert_eq!(paid(&s), 30_000);
    let rows = &s.extra.as_ref().unwrap()["claims"];
    assert_eq!(rows[0]["claimAmount"], "30000");
    assert_eq!(rows[0]["totalClaimed"], "30000");
    // The same batch again: the same answer, nothing claimed twice.
    assert_eq!(c.settle(&claim).await, s);
    // A row at or below the claimed total is a no-op.
    assert_eq!(
        paid(&c.settle(&c.claim(vec![c.row(40_000, 20_000)])).await),
        0
    );
    assert_eq!(c.state().await.total_claimed, 30_000);
    // A voucher not above the claimed total is refused.
    assert_eq!(
        refused(&c.verify(&c.voucher(30_000)).await),
        reasons::CUMULATIVE_BELOW_CLAIMED
    );
    // Sweep: the 30,000 claimed; again: the same answer; another receiver: nothing.
    let sweep = BatchPayload::Settle {
        receiver: c.config.receiver,
        token: c.config.token,
    };
    let s = c.settle(&sweep).await;
    assert_eq!((paid(&s), s.extra.is_none()), (30_000, true));
    assert_eq!(c.settle(&sweep).await, s);
    let other = BatchPayload::Settle {
        receiver: c.config.payer,
        token: c.config.token,
    };
    assert_eq!(failed(&c.settle(&other).await), reasons::NOTHING_TO_SETTLE);
    // Refund after charging 40,000: claims 40,000 first, returns 80,000.
    let r = c.refund(40_000, None, 0);
    let v = c.verify(&r).await;
    assert!(v.is_valid, "{v:?}");
    let s = c.settle(&r).await;
    assert_eq!(paid(&s), 80_000);
    assert_eq!(s.payer, Some(c.config.payer.to_string()));
    let st = channel_state(&s);
    assert_eq!((st.balance, st.total_claimed), (40_000, 40_000));
    assert_eq!(st.refund_nonce, U256::from_u64(1));
    // The same refund again: its first answer (the nonce moved on, nothing twice).
    assert_eq!(c.settle(&r).await, s);
    assert_eq!(c.state().await.balance, 40_000);
    // The refund's claim reached the receiver: 10,000 more to sweep.
    assert_eq!(paid(&c.settle(&sweep).await), 10_000);
    assert_eq!(failed(&c.settle(&other).await), reasons::NOTHING_TO_SETTLE);
    // Nothing is left to refund; a stale nonce is refused.
    assert_eq!(
        failed(&c.settle(&c.refund(40_000, None, 1)).await),
        reasons::REFUND_NO_BALANCE
    );
    assert_eq!(
        refused(&c.verify(&c.refund(40_000, None, 0)).await),
        reasons::REFUND_PAYLOAD
    );
    // A top-up of 50,000; a refund asking for more is capped to what is unclaimed.
    assert_eq!(paid(&c.settle(&c.deposit(50_000, 50_000, 2)).await), 50_000);
    assert_eq!(
        failed(&c.settle(&c.refund(40_000, Some(0), 1)).await),
        reasons::REFUND_AMOUNT_INVALID
    );
    let s = c.settle(&c.refund(40_000, Some(1_000_000), 1)).await;
    assert_eq!(paid(&s), 50_000);
    let st = channel_state(&s);
    assert_eq!((st.balance, st.total_claimed), (40_000, 40_000));
    assert_eq!(st.refund_nonce, U256::from_u64(2));
}

#[tokio::test]
async fn a_replayed_deposit_credits_once() {
    let c = Channel::new();
    let d = c.deposit(100_000, 10_000, 1);
    let first = c.settle(&d).await;
    assert_eq!(paid(&first), 100_000);
    let again = c.settle(&d).await;
    assert_eq!(paid(&again), 100_000, "the same deposit answers success");
    assert_eq!(channel_state(&again).balance, 100_000, "credited once");
    assert_eq!(c.state().await.balance, 100_000);
    // Its authorization is used: verify says the deposit would revert.
    let v = c.verify(&d).await;
    assert_eq!(refused(&v), reasons::DEPOSIT_SIMULATION_FAILED);
    assert_eq!(v.extra.unwrap()["balance"], "100000");
    // Another authorization (another salt) is another deposit.
    assert_eq!(paid(&c.settle(&c.deposit(5_000, 10_000, 2)).await), 5_000);
    assert_eq!(c.state().await.balance, 105_000);
}

#[tokio::test]
async fn bad_signatures_are_refused_with_the_schemes_reasons() {
    let c = Channel::new();
    let stranger = LocalSigner::random().unwrap();
    // A voucher signed by someone else.
    let forged = BatchPayload::Voucher {
        channel_config: c.config.clone(),
        voucher: c.voucher_by(&stranger, 10_000),
    };
    assert_eq!(
        refused(&c.verify(&forged).await),
        reasons::VOUCHER_SIGNATURE
    );
    // A truncated signature.
    let mut short = c.voucher_by(&c.payer, 10_000);
    short.signature.0.pop();
    let short = BatchPayload::Voucher {
        channel_config: c.config.clone(),
        voucher: short,
    };
    assert_eq!(refused(&c.verify(&short).await), reasons::VOUCHER_SIGNATURE);
    // Deposits whose ReceiveWithAuthorization the payer did not sign as sent: to the
    // payee instead of the collector, another nonce, another amount.
    let pay_to: Address = PAY_TO.parse().unwrap();
    for tweak in [
        Box::new(move |a: &mut Authorization| a.to = pay_to) as Box<dyn FnOnce(&mut Authorization)>,
        Box::new(|a: &mut Authorization| a.nonce = FixedBytes([9; 32])),
        Box::new(|a: &mut Authorization| a.value = Amount::from(1u64)),
    ] {
        let d = c.deposit_with(100_000, 10_000, 1, tweak);
        assert_eq!(
            refused(&c.verify(&d).await),
            reasons::RECEIVE_AUTHORIZATION_SIGNATURE
        );
        assert_eq!(
            failed(&c.settle(&d).await),
            reasons::RECEIVE_AUTHORIZATION_SIGNATURE
        );
    }
    assert_eq!(c.state().await.balance, 0, "nothing credited");
    // A voucher naming another channel id.
    let mut other = c.voucher_by(&c.payer, 10_000);
    other.channel_id = FixedBytes([1; 32]);
    let other = BatchPayload::Voucher {
        channel_config: c.config.clone(),
        voucher: other,
    };
    assert_eq!(
        refused(&c.verify(&other).await),
        reasons::CHANNEL_ID_MISMATCH
    );
    // Fund the channel, then forged claims and refunds.
    assert_eq!(
        paid(&c.settle(&c.deposit(100_000, 10_000, 1)).await),
        100_000
    );
    let forged_row = claim_row(&c.config, &c.voucher_by(&stranger, 10_000), 10_000);
    assert_eq!(
        failed(&c.settle(&c.claim(vec![forged_row])).await),
        reasons::CLAIM_SIMULATION_FAILED
    );
    let rows = vec![c.row(10_000, 10_000)];
    let wrong = BatchPayload::Claim {
        claim_authorizer_signature: Some(sign_claim_batch(&stranger, &c.domain, &rows).unwrap()),
        claims: rows.clone(),
    };
    assert_eq!(
        failed(&c.settle(&wrong).await),
        reasons::CLAIM_SIMULATION_FAILED
    );
    // The authorizer's own signature is accepted.
    let right = BatchPayload::Claim {
        claim_authorizer_signature: Some(
            sign_claim_batch(&authorizer(), &c.domain, &rows).unwrap(),
        ),
        claims: rows,
    };
    assert_eq!(paid(&c.settle(&right).await), 10_000);
    let BatchPayload::Refund {
        channel_config,
        voucher,
        claims,
        ..
    } = c.refund(10_000, Some(5_000), 0)
    else {
        unreachable!()
    };
    let refund = |sig| BatchPayload::Refund {
        channel_config: channel_config.clone(),
        voucher: voucher.clone(),
        amount: Some(5_000),
        refund_nonce: Some(U256::ZERO),
        claims: claims.clone(),
        refund_authorizer_signature: Some(sig),
        claim_authorizer_signature: None,
    };
    let by_stranger = sign_refund(&stranger, &c.domain, &c.id, U256::ZERO, 5_000).unwrap();
    assert_eq!(
        failed(&c.settle(&refund(by_stranger)).await),
        reasons::REFUND_SIMULATION_FAILED
    );
    let by_authorizer = sign_refund(&authorizer(), &c.domain, &c.id, U256::ZERO, 5_000).unwrap();
    assert_eq!(paid(&c.settle(&refund(by_authorizer)).await), 5_000);
    assert_eq!(c.state().await.balance, 95_000);
}

#[tokio::test]
async fn terms_that_are_not_the_requirements_are_refused() {
    let c = Channel::new();
    let with = |f: &dyn Fn(&mut ChannelConfig)| {
        let mut config = c.config.clone();
        f(&mut config);
        let id = c.domain.channel_id(&config);
        BatchPayload::Voucher {
            voucher: sign_voucher(&c.payer, &c.domain, id, 10_000).unwrap(),
            channel_config: config,
        }
    };
    let stranger = LocalSigner::random().unwrap().address();
    for (f, reason) in [
        (
            Box::new(move |c: &mut ChannelConfig| c.receiver = stranger) as Box<dyn Fn(&mut _)>,
            reasons::RECEIVER_MISMATCH,
        ),
        (
            Box::new(move |c: &mut ChannelConfig| c.receiver_authorizer = stranger),
            reasons::RECEIVER_AUTHORIZER_MISMATCH,
        ),
        (
            Box::new(move |c: &mut ChannelConfig| c.token = stranger),
            reasons::TOKEN_MISMATCH,
        ),
        (
            Box::new(|c: &mut ChannelConfig| c.withdraw_delay = 901),
            reasons::WITHDRAW_DELAY_MISMATCH,
        ),
        (
            Box::new(|c: &mut ChannelConfig| c.payer_authorizer = Address::default()),
            reasons::VOUCHER_SIGNATURE,
        ),
    ] {
        assert_eq!(refused(&c.verify(&with(&*f)).await), reason);
    }
    // A channel never funded.
    let v = c.verify(&c.voucher(10_000)).await;
    assert_eq!(refused(&v), reasons::CHANNEL_NOT_FOUND);
    assert_eq!(v.extra.unwrap()["balance"], "0");
    // A claim for a channel whose authorizer is not this facilitator's, unsigned.
    let mut foreign = c.row(10_000, 10_000);
    foreign.voucher.channel.receiver_authorizer = stranger;
    assert_eq!(
        failed(&c.settle(&c.claim(vec![foreign])).await),
        reasons::AUTHORIZER_ADDRESS_MISMATCH
    );
    assert_eq!(
        failed(&c.settle(&c.claim(vec![])).await),
        reasons::CLAIM_PAYLOAD
    );
    // Claims and settles are not verified.
    assert_eq!(
        refused(&c.verify(&c.claim(vec![c.row(1, 1)])).await),
        reasons::PAYLOAD_TYPE
    );
}

#[tokio::test]
async fn over_the_balance_is_refused_everywhere() {
    let c = Channel::new();
    // The first voucher above the deposit.
    let d = c.deposit(10_000, 10_001, 1);
    let v = c.verify(&d).await;
    assert_eq!(refused(&v), reasons::CUMULATIVE_EXCEEDS_BALANCE);
    assert_eq!(
        failed(&c.settle(&d).await),
        reasons::CUMULATIVE_EXCEEDS_BALANCE
    );
    assert_eq!(c.state().await.balance, 0);
    assert_eq!(paid(&c.settle(&c.deposit(50_000, 10_000, 2)).await), 50_000);
    // A voucher above the balance.
    let v = c.verify(&c.voucher(50_001)).await;
    assert_eq!(refused(&v), reasons::CUMULATIVE_EXCEEDS_BALANCE);
    assert_eq!(v.extra.unwrap()["balance"], "50000");
    // A deposit whose voucher fits the balance after it.
    assert!(c.verify(&c.deposit(10_000, 60_000, 3)).await.is_valid);
    // A claim above its voucher, and one above the balance (signed for 60,000).
    assert_eq!(
        failed(&c.settle(&c.claim(vec![c.row(20_000, 20_001)])).await),
        reasons::CHARGE_EXCEEDS_SIGNED_CUMULATIVE
    );
    assert_eq!(
        failed(&c.settle(&c.claim(vec![c.row(60_000, 60_000)])).await),
        reasons::CLAIM_SIMULATION_FAILED
    );
    // A batch is all or nothing: a good row beside a bad one claims nothing.
    let batch = c.claim(vec![c.row(20_000, 20_000), c.row(60_000, 60_000)]);
    assert_eq!(
        failed(&c.settle(&batch).await),
        reasons::CLAIM_SIMULATION_FAILED
    );
    assert_eq!(c.state().await.total_claimed, 0);
    // A refund voucher above the balance.
    assert_eq!(
        refused(&c.verify(&c.refund(60_000, None, 0)).await),
        reasons::CUMULATIVE_EXCEEDS_BALANCE
    );
}

#[tokio::test]
async fn a_deposit_out_of_its_window_is_refused() {
    let c = Channel::new();
    let late = EmbeddedFacilitator::new(Arc::new(FixedClock(NOW + 60)));
    let d = c.deposit(10_000, 10_000, 1);
    let v = late.verify(&request(&d)).await.unwrap();
    assert_eq!(refused(&v), reasons::VALID_BEFORE_EXPIRED);
    let s = late.settle(&request(&d)).await.unwrap();
    assert_eq!(failed(&s), reasons::VALID_BEFORE_EXPIRED);
    // A payload whose requirement is another scheme's.
    let mut req = request(&d);
    if let PaymentRequirements::V2(r) = &mut req.payment_requirements {
        r.scheme = "exact".into();
    }
    let v = c.f.verify(&req).await.unwrap();
    assert_eq!(refused(&v), reasons::INVALID_SCHEME);
}
