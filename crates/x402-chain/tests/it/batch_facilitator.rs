//! The `batch-settlement` scheme through the settling EVM facilitator, on a fresh anvil with
//! the test USDC and our channel contracts at their canonical addresses: deposits, vouchers,
//! claims, sweeps and refunds signed by the project's payer (`x402_payer::channel`), real
//! transactions, balances checked to the unit. A test that cannot find anvil fails (run
//! `cargo xtask tools`, which installs it).

use std::time::Duration;

use alloy::primitives::{Address as EvmAddress, U256};
use alloy::providers::Provider;
use serde_json::Value;
use x402_chain::anvil::{Anvil, BASE_SEPOLIA_USDC, DEV_KEYS};
use x402_chain::{BATCH_SETTLEMENT, EvmConfig, EvmFacilitator};
use x402_facilitator::Facilitator;
use x402_payer::channel::{ChannelDomain, claim_row, deposit_nonce, receive_digest, sign_voucher};
use x402_payer::eip712::Domain;
use x402_payer::{DigestSigner, LocalSigner};
use x402_types::batch::{
    BatchPayload, Bytes, ChannelConfig, Deposit, DepositAuthorization, ERC3009_DEPOSIT_COLLECTOR,
    Erc3009Deposit, SignedVoucher, VoucherClaim, reasons,
};
use x402_types::{
    Address, Amount, Authorization, FacilitatorRequest, FixedBytes, Network, PaymentPayload,
    PaymentPayloadV2, PaymentRequirements, PreservedRequirement, Requirement, SchemePayload,
};

const PRICE: u64 = 10_000; // one slice, 0.01 USDC
const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"; // anvil account 2
const DEPOSIT: u128 = 100_000;

struct Bench {
    anvil: Anvil,
    token: EvmAddress,
    facilitator: EvmFacilitator,
    authorizer: Address,
}

struct Payer {
    key: LocalSigner,
    addr: Address,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn evm(a: Address) -> EvmAddress {
    EvmAddress::from(a.0)
}

fn pay_to() -> Address {
    PAY_TO.parse().unwrap()
}

async fn connect(anvil: &Anvil, authorizer: &LocalSigner, timeout: Duration) -> EvmFacilitator {
    let mut cfg = EvmConfig::new(anvil.url(), Network::BASE_SEPOLIA, DEV_KEYS[1]);
    cfg.authorizer_key = Some(authorizer.to_hex_secret().to_string());
    cfg.receipt_timeout = timeout;
    EvmFacilitator::connect(cfg).await.unwrap()
}

async fn bench_with(timeout: Duration) -> Bench {
    let anvil = Anvil::start(84532).expect("anvil (run `cargo xtask tools` to install it)");
    let token = anvil.install_test_usdc().await.unwrap();
    assert_eq!(
        anvil.install_batch_settlement().await.unwrap(),
        BATCH_SETTLEMENT
    );
    // The receiver's authorizer is its own key, not the relayer's.
    let authorizer = LocalSigner::random().unwrap();
    let facilitator = connect(&anvil, &authorizer, timeout).await;
    Bench {
        anvil,
        token,
        facilitator,
        authorizer: authorizer.address(),
    }
}

async fn bench() -> Bench {
    bench_with(Duration::from_secs(20)).await
}

impl Bench {
    async fn payer(&self, fund: u64) -> Payer {
        let key = LocalSigner::random().unwrap();
        let addr = key.address();
        self.anvil.mint(self.token, evm(addr), fund).await.unwrap();
        Payer { key, addr }
    }

    fn requirement(&self) -> Requirement {
        Requirement {
            scheme: "batch-settlement".into(),
            network: Network::BASE_SEPOLIA,
            amount: Amount::from(PRICE),
            asset: BASE_SEPOLIA_USDC.into(),
            pay_to: PAY_TO.into(),
            max_timeout_seconds: 300,
            extra: Some(serde_json::json!({
                "name": "USDC", "version": "2",
                "receiverAuthorizer": self.authorizer.to_string(),
                "withdrawDelay": 900, "minDeposit": "100000",
            })),
        }
    }

    fn request(&self, payload: &BatchPayload) -> FacilitatorRequest {
        self.request_map(payload.to_map())
    }

    fn request_map(&self, map: serde_json::Map<String, Value>) -> FacilitatorRequest {
        let r = self.requirement().to_v2();
        FacilitatorRequest {
            payment_payload: PaymentPayload::V2(PaymentPayloadV2 {
                x402_version: 2,
                resource: None,
                accepted: PreservedRequirement::new(r.clone()),
                payload: SchemePayload::Other(map),
                extensions: None,
            }),
            payment_requirements: PaymentRequirements::V2(r),
        }
    }

    fn config(&self, p: &Payer, salt: u8) -> ChannelConfig {
        ChannelConfig {
            payer: p.addr,
            payer_authorizer: p.addr,
            receiver: pay_to(),
            receiver_authorizer: self.authorizer,
            token: BASE_SEPOLIA_USDC.parse().unwrap(),
            withdraw_delay: 900,
            salt: FixedBytes([salt; 32]),
        }
    }

    fn voucher(&self, p: &Payer, config: &ChannelConfig, max: u128) -> SignedVoucher {
        let domain = ChannelDomain::new(84532);
        sign_voucher(&p.key, &domain, domain.channel_id(config), max).unwrap()
    }

    /// A deposit payload as the official client signs it: `validAfter` 0, `validBefore`
    /// now + maxTimeoutSeconds, the ERC-3009 nonce `keccak256(channelId, salt)`.
    fn deposit(&self, p: &Payer, config: &ChannelConfig, amount: u128, max: u128) -> BatchPayload {
        let voucher = self.voucher(p, config, max);
        let salt = FixedBytes([0xd5; 32]);
        let valid_before = x402_types::U256::from(now() + 300);
        let auth = Authorization {
            from: p.addr,
            to: ERC3009_DEPOSIT_COLLECTOR,
            value: Amount(x402_types::U256::from_u128(amount)),
            valid_after: x402_types::U256::ZERO,
            valid_before,
            nonce: deposit_nonce(&voucher.channel_id, &salt),
        };
        let token_domain = Domain {
            name: "USDC".into(),
            version: "2".into(),
            chain_id: 84532,
            verifying_contract: config.token,
        };
        let sig = p
            .key
            .sign_digest(&receive_digest(&token_domain, &auth))
            .unwrap();
        BatchPayload::Deposit {
            channel_config: config.clone(),
            voucher,
            deposit: Deposit {
                amount,
                authorization: DepositAuthorization {
                    erc3009_authorization: Some(Erc3009Deposit {
                        valid_after: x402_types::U256::ZERO,
                        valid_before,
                        salt,
                        signature: Bytes(sig.0.to_vec()),
                    }),
                    permit2_authorization: None,
                },
            },
        }
    }

    /// Deposits `DEPOSIT` into the payer's channel `salt`, checking the answer.
    async fn funded(&self, p: &Payer, salt: u8) -> ChannelConfig {
        let config = self.config(p, salt);
        let s = self
            .facilitator
            .settle(&self.request(&self.deposit(p, &config, DEPOSIT, PRICE as u128)))
            .await
            .unwrap();
        assert!(s.success, "{s:?}");
        config
    }

    async fn verify(&self, payload: BatchPayload) -> x402_types::VerifyResponse {
        self.facilitator
            .verify(&self.request(&payload))
            .await
            .unwrap()
    }

    async fn usdc(&self, who: Address) -> U256 {
        self.anvil.usdc_balance(self.token, evm(who)).await.unwrap()
    }

    async fn held(&self) -> U256 {
        self.anvil
            .usdc_balance(self.token, BATCH_SETTLEMENT)
            .await
            .unwrap()
    }
}

fn channel_id(config: &ChannelConfig) -> String {
    ChannelDomain::new(84532).channel_id(config).to_string()
}

#[tokio::test]
async fn a_deposit_verifies_settles_and_moves_exactly_its_amount_once() {
    let b = bench().await;
    let p = b.payer(1_000_000).await;
    let config = b.config(&p, 1);
    let req = b.request(&b.deposit(&p, &config, DEPOSIT, PRICE as u128));
    let (payer0, held0) = (b.usdc(p.addr).await, b.held().await);

    let v = b.facilitator.verify(&req).await.unwrap();
    assert!(v.is_valid, "{v:?}");
    assert_eq!(v.payer.as_deref(), Some(p.addr.to_string().as_str()));
    let extra = v.extra.unwrap();
    assert_eq!(extra["channelId"], channel_id(&config));
    assert_eq!(
        (
            &extra["balance"],
            &extra["totalClaimed"],
            &extra["refundNonce"]
        ),
        (&Value::from("0"), &Value::from("0"), &Value::from("0"))
    );
    assert_eq!(extra["withdrawRequestedAt"], 0);

    let s = b.facilitator.settle(&req).await.unwrap();
    assert!(s.success, "{s:?}");
    assert_eq!(s.transaction.len(), 66, "a real transaction hash");
    assert_eq!(s.network, "eip155:84532");
    assert_eq!(s.amount, Some(Amount::from(DEPOSIT as u64)));
    let state = &s.extra.as_ref().unwrap()["channelState"];
    assert_eq!(state["channelId"], channel_id(&config));
    assert_eq!(state["balance"], DEPOSIT.to_string());
    assert_eq!(b.usdc(p.addr).await, payer0 - U256::from(DEPOSIT));
    assert_eq!(b.held().await, held0 + U256::from(DEPOSIT));

    // The same deposit again: success, naming the same transaction; nothing moves twice.
    let again = b.facilitator.settle(&req).await.unwrap();
    assert!(again.success, "{again:?}");
    assert_eq!(again.transaction, s.transaction);
    assert_eq!(again.amount, s.amount);
    // Another facilitator (another process) finds the deposit from the token's logs.
    let other = connect(
        &b.anvil,
        &LocalSigner::random().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let third = other.settle(&req).await.unwrap();
    assert!(third.success, "{third:?}");
    assert_eq!(third.transaction, s.transaction);
    assert_eq!(b.usdc(p.addr).await, payer0 - U256::from(DEPOSIT));
    assert_eq!(
        b.held().await,
        held0 + U256::from(DEPOSIT),
        "deposited once"
    );
    let uses = b.anvil.settlements_of(b.token, evm(p.addr)).await.unwrap();
    assert_eq!(uses.len(), 1, "one use of the authorization on chain");
    // Verify now says why a second deposit with it would fail.
    let v = b.facilitator.verify(&req).await.unwrap();
    assert!(!v.is_valid);
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some(reasons::DEPOSIT_SIMULATION_FAILED)
    );
    assert!(v.invalid_message.unwrap().contains("already used"));
}

#[tokio::test]
async fn a_deposit_the_payer_cannot_cover_or_did_not_sign_is_refused_without_a_transaction() {
    let b = bench().await;
    let poor = b.payer(1_000).await;
    let config = b.config(&poor, 1);
    let req = b.request(&b.deposit(&poor, &config, DEPOSIT, PRICE as u128));
    let v = b.facilitator.verify(&req).await.unwrap();
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some(reasons::INSUFFICIENT_BALANCE),
        "{v:?}"
    );
    let s = b.facilitator.settle(&req).await.unwrap();
    assert!(!s.success);
    assert_eq!(s.transaction, "");

    // A deposit authorization signed by someone else than the payer.
    let p = b.payer(1_000_000).await;
    let thief = b.payer(0).await;
    let config = b.config(&p, 2);
    let mut forged = b.deposit(&thief, &config, DEPOSIT, PRICE as u128);
    if let BatchPayload::Deposit { voucher, .. } = &mut forged {
        *voucher = b.voucher(&p, &config, PRICE as u128);
    }
    let v = b.facilitator.verify(&b.request(&forged)).await.unwrap();
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some(reasons::RECEIVE_AUTHORIZATION_SIGNATURE)
    );
    assert!(v.invalid_message.unwrap().contains("not by the payer"));
    assert!(
        !b.facilitator
            .settle(&b.request(&forged))
            .await
            .unwrap()
            .success
    );
    assert_eq!(b.held().await, U256::ZERO, "nothing deposited");
}

#[tokio::test]
async fn a_voucher_verifies_and_each_bad_one_gets_its_reason() {
    let b = bench().await;
    let p = b.payer(1_000_000).await;
    let config = b.funded(&p, 1).await;
    let voucher = |max| BatchPayload::Voucher {
        channel_config: config.clone(),
        voucher: b.voucher(&p, &config, max),
    };
    let verify = |payload: BatchPayload| b.verify(payload);

    let ok = verify(voucher(2 * PRICE as u128)).await;
    assert!(ok.is_valid, "{ok:?}");
    assert_eq!(ok.extra.as_ref().unwrap()["balance"], DEPOSIT.to_string());
    // A voucher is never settled.
    let s = b
        .facilitator
        .settle(&b.request(&voucher(2 * PRICE as u128)))
        .await
        .unwrap();
    assert!(!s.success);
    assert_eq!(s.error_reason.as_deref(), Some(reasons::PAYLOAD_TYPE));

    let reason = |v: x402_types::VerifyResponse| {
        assert!(!v.is_valid, "{v:?}");
        v.invalid_reason.unwrap()
    };
    // Signed by another key.
    let stranger = b.payer(0).await;
    let forged = BatchPayload::Voucher {
        channel_config: config.clone(),
        voucher: sign_voucher(
            &stranger.key,
            &ChannelDomain::new(84532),
            ChannelDomain::new(84532).channel_id(&config),
            PRICE as u128,
        )
        .unwrap(),
    };
    assert_eq!(reason(verify(forged).await), reasons::VOUCHER_SIGNATURE);
    // A channel whose receiver is not the requirement's payTo (its id consistent).
    let mut elsewhere = config.clone();
    elsewhere.receiver = stranger.addr;
    let wrong_receiver = BatchPayload::Voucher {
        voucher: b.voucher(&p, &elsewhere, PRICE as u128),
        channel_config: elsewhere,
    };
    let v = verify(wrong_receiver).await;
    assert!(
        v.invalid_message.clone().unwrap().contains("receiver"),
        "{v:?}"
    );
    assert_eq!(reason(v), reasons::RECEIVER_MISMATCH);
    // The other three terms of the requirement, each with the official SDK's reason.
    let mut by_other = config.clone();
    by_other.receiver_authorizer = stranger.addr;
    let mut in_other_token = config.clone();
    in_other_token.token = stranger.addr;
    let mut slower = config.clone();
    slower.withdraw_delay = 1_000;
    for (c, want) in [
        (by_other, reasons::RECEIVER_AUTHORIZER_MISMATCH),
        (in_other_token, reasons::TOKEN_MISMATCH),
        (slower, reasons::WITHDRAW_DELAY_MISMATCH),
    ] {
        let payload = BatchPayload::Voucher {
            voucher: b.voucher(&p, &c, PRICE as u128),
            channel_config: c,
        };
        assert_eq!(reason(verify(payload).await), want);
    }
    // More than the channel holds.
    let v = verify(voucher(DEPOSIT + 1)).await;
    assert_eq!(v.extra.as_ref().unwrap()["balance"], DEPOSIT.to_string());
    assert_eq!(reason(v), reasons::CUMULATIVE_EXCEEDS_BALANCE);
    // The voucher of another channel under this configuration.
    let other = b.config(&p, 2);
    let wrong_id = BatchPayload::Voucher {
        channel_config: config.clone(),
        voucher: b.voucher(&p, &other, PRICE as u128),
    };
    assert_eq!(reason(verify(wrong_id).await), reasons::CHANNEL_ID_MISMATCH);
    // A channel never funded.
    let unfunded = BatchPayload::Voucher {
        voucher: b.voucher(&p, &other, PRICE as u128),
        channel_config: other,
    };
    assert_eq!(reason(verify(unfunded).await), reasons::CHANNEL_NOT_FOUND);
    // An EIP-1271 payer (zero payerAuthorizer) is refused with a clear message.
    let mut contract_wallet = config.clone();
    contract_wallet.payer_authorizer = Address([0; 20]);
    let eip1271 = BatchPayload::Voucher {
        voucher: b.voucher(&p, &contract_wallet, PRICE as u128),
        channel_config: contract_wallet,
    };
    let v = verify(eip1271).await;
    assert!(
        v.invalid_message.clone().unwrap().contains("EIP-1271"),
        "{v:?}"
    );
    assert_eq!(reason(v), reasons::VOUCHER_SIGNATURE);
    // A malformed payload is an invalid answer, not an error.
    let mut bad = voucher(PRICE as u128).to_map();
    bad["voucher"]["maxClaimableAmount"] = Value::from("-1");
    let v = b
        .facilitator
        .verify(&b.request_map(bad.clone()))
        .await
        .unwrap();
    assert_eq!(v.invalid_reason.as_deref(), Some("invalid_payload"));
    assert!(
        v.invalid_message
            .unwrap()
            .contains("batch-settlement payload")
    );
    let s = b.facilitator.settle(&b.request_map(bad)).await.unwrap();
    assert!(!s.success);
}

#[tokio::test]
async fn two_vouchers_claimed_in_one_batch_then_settled_move_exactly_the_claimed_total() {
    let b = bench().await;
    let (p, q) = (b.payer(1_000_000).await, b.payer(1_000_000).await);
    let (cp, cq) = (b.funded(&p, 1).await, b.funded(&q, 1).await);
    let claims: Vec<VoucherClaim> = vec![
        claim_row(&cp, &b.voucher(&p, &cp, 5_000), 3_000),
        claim_row(&cq, &b.voucher(&q, &cq, 4_000), 4_000),
    ];
    let claim = BatchPayload::Claim {
        claims: claims.clone(),
        claim_authorizer_signature: None,
    };
    let receiver0 = b.usdc(pay_to()).await;
    let held0 = b.held().await;
    let s = b.facilitator.settle(&b.request(&claim)).await.unwrap();
    assert!(s.success, "{s:?}");
    assert_eq!(s.transaction.len(), 66);
    assert_eq!(s.amount, Some(Amount::from(7_000)));
    assert_eq!(
        s.extra.as_ref().unwrap()["claims"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Claiming is bookkeeping: no token moved yet.
    assert_eq!(b.held().await, held0);
    // The same batch again: its success, the same transaction, nothing claimed twice.
    let again = b.facilitator.settle(&b.request(&claim)).await.unwrap();
    assert!(again.success, "{again:?}");
    assert_eq!(again.transaction, s.transaction);
    let state = b
        .facilitator
        .channel_state(&ChannelDomain::new(84532).channel_id(&cp))
        .await
        .unwrap();
    assert_eq!((state.balance, state.total_claimed), (DEPOSIT, 3_000));

    let sweep = BatchPayload::Settle {
        receiver: pay_to(),
        token: cp.token,
    };
    let s = b.facilitator.settle(&b.request(&sweep)).await.unwrap();
    assert!(s.success, "{s:?}");
    assert_eq!(s.amount, Some(Amount::from(7_000)));
    assert_eq!(b.usdc(pay_to()).await, receiver0 + U256::from(7_000));
    assert_eq!(b.held().await, held0 - U256::from(7_000));
    // The retry of that sweep is answered its success; a new sweep has nothing to move.
    let retry = b.facilitator.settle(&b.request(&sweep)).await.unwrap();
    assert_eq!((retry.success, &retry.transaction), (true, &s.transaction));
    let fresh = connect(
        &b.anvil,
        &LocalSigner::random().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let nothing = fresh.settle(&b.request(&sweep)).await.unwrap();
    assert!(!nothing.success);
    assert_eq!(
        nothing.error_reason.as_deref(),
        Some(reasons::NOTHING_TO_SETTLE)
    );
    assert_eq!(b.usdc(pay_to()).await, receiver0 + U256::from(7_000));

    // A batch this facilitator may not sign (another authorizer) and that carries no
    // signature is refused before anything is sent.
    let foreign = connect(
        &b.anvil,
        &LocalSigner::random().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let s = foreign.settle(&b.request(&claim)).await.unwrap();
    assert_eq!(
        s.error_reason.as_deref(),
        Some(reasons::AUTHORIZER_ADDRESS_MISMATCH)
    );
}

#[tokio::test]
async fn a_refund_with_claims_in_one_multicall_returns_exactly_balance_minus_claimed() {
    let b = bench().await;
    let p = b.payer(1_000_000).await;
    let payer0 = b.usdc(p.addr).await;
    let receiver0 = b.usdc(pay_to()).await;
    let config = b.funded(&p, 1).await;
    let charged: u128 = 30_000;
    let voucher = b.voucher(&p, &config, charged);
    // The client's cooperative close verifies...
    let close = BatchPayload::Refund {
        channel_config: config.clone(),
        voucher: voucher.clone(),
        amount: None,
        refund_nonce: None,
        claims: None,
        refund_authorizer_signature: None,
        claim_authorizer_signature: None,
    };
    let v = b.facilitator.verify(&b.request(&close)).await.unwrap();
    assert!(v.is_valid, "{v:?}");
    // ...and the server executes it with the claim of the charge first, one transaction.
    let refund = BatchPayload::Refund {
        channel_config: config.clone(),
        voucher: voucher.clone(),
        amount: None,
        refund_nonce: Some(x402_types::U256::ZERO),
        claims: Some(vec![claim_row(&config, &voucher, charged)]),
        refund_authorizer_signature: None,
        claim_authorizer_signature: None,
    };
    let s = b.facilitator.settle(&b.request(&refund)).await.unwrap();
    assert!(s.success, "{s:?}");
    assert_eq!(s.transaction.len(), 66);
    assert_eq!(s.amount, Some(Amount::from((DEPOSIT - charged) as u64)));
    let state = &s.extra.as_ref().unwrap()["channelState"];
    assert_eq!(state["balance"], charged.to_string());
    assert_eq!(state["totalClaimed"], charged.to_string());
    assert_eq!(state["refundNonce"], "1");
    assert_eq!(
        b.usdc(p.addr).await,
        payer0 - U256::from(charged),
        "the payer gets back everything but the charge"
    );
    // Its retry is answered its success and refunds nothing more.
    let retry = b.facilitator.settle(&b.request(&refund)).await.unwrap();
    assert_eq!((retry.success, &retry.transaction), (true, &s.transaction));
    assert_eq!(b.usdc(p.addr).await, payer0 - U256::from(charged));
    // Nothing is left to refund now.
    let v = b.facilitator.verify(&b.request(&close)).await.unwrap();
    assert_eq!(
        v.invalid_reason.as_deref(),
        Some(reasons::REFUND_NO_BALANCE)
    );

    let sweep = BatchPayload::Settle {
        receiver: pay_to(),
        token: config.token,
    };
    assert!(
        b.facilitator
            .settle(&b.request(&sweep))
            .await
            .unwrap()
            .success
    );
    let payer_loss = payer0 - b.usdc(p.addr).await;
    let receiver_gain = b.usdc(pay_to()).await - receiver0;
    assert_eq!(payer_loss, U256::from(charged));
    assert_eq!(payer_loss, receiver_gain, "payer loss == receiver gain");
    assert_eq!(b.held().await, U256::ZERO);
}

#[tokio::test]
async fn a_deposit_whose_receipt_is_late_is_pending_then_reported_once_on_chain() {
    let b = bench_with(Duration::from_millis(300)).await;
    let p = b.payer(1_000_000).await;
    let req = b.request(&b.deposit(&p, &b.config(&p, 1), DEPOSIT, PRICE as u128));
    let node = b.anvil.provider(DEV_KEYS[0]).unwrap();
    let _: Value = node
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .unwrap();
    let first = b.facilitator.settle(&req).await.unwrap();
    assert!(first.is_pending(), "{first:?}");
    assert_eq!(first.transaction.len(), 66);
    // Still not mined: pending with the same transaction, nothing sent twice.
    let second = b.facilitator.settle(&req).await.unwrap();
    assert!(second.is_pending(), "{second:?}");
    assert_eq!(second.transaction, first.transaction);
    let _: Value = node.raw_request("evm_mine".into(), ()).await.unwrap();
    let done = b.facilitator.settle(&req).await.unwrap();
    assert!(done.success, "{done:?}");
    assert_eq!(done.transaction, first.transaction);
    assert_eq!(b.held().await, U256::from(DEPOSIT));
    assert_eq!(
        b.anvil
            .settlements_of(b.token, evm(p.addr))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn supported_lists_batch_settlement_with_the_receiver_authorizer() {
    let b = bench().await;
    let s = b.facilitator.supported().await.unwrap();
    let kind = s
        .kinds
        .iter()
        .find(|k| k.scheme == "batch-settlement")
        .expect("batch-settlement in /supported");
    assert_eq!(
        (kind.x402_version, kind.network.as_str()),
        (2, "eip155:84532")
    );
    assert_eq!(
        kind.extra.as_ref().unwrap()["receiverAuthorizer"],
        b.authorizer.to_string()
    );
    assert_eq!(b.facilitator.receiver_authorizer(), b.authorizer);
    assert!(
        s.kinds.iter().any(|k| k.scheme == "exact"),
        "exact still listed"
    );
    // Without an authorizer key the relayer signs as the authorizer.
    let plain = EvmFacilitator::connect(EvmConfig::new(
        b.anvil.url(),
        Network::BASE_SEPOLIA,
        DEV_KEYS[1],
    ))
    .await
    .unwrap();
    assert_eq!(plain.receiver_authorizer(), plain.relayer());
    // The authorizer key never shows in Debug.
    let mut cfg = EvmConfig::new(b.anvil.url(), Network::BASE_SEPOLIA, DEV_KEYS[1]);
    cfg.authorizer_key = Some(DEV_KEYS[2].into());
    let shown = format!("{cfg:?}");
    assert!(!shown.contains(&DEV_KEYS[2][2..]), "{shown}");
    assert!(shown.contains("authorizer_key"), "{shown}");
}

/// Every reason we send is spelled as the official SDK spells it (its `errors.py`).
#[test]
fn every_reason_is_one_the_official_sdk_defines() {
    let errors =
        atomicstream_testkit::x402_python().join("x402/mechanisms/evm/batch_settlement/errors.py");
    let text = std::fs::read_to_string(&errors).unwrap();
    for r in reasons::ALL {
        assert!(
            text.contains(&format!("\"{r}\"")),
            "{r} is not in {}",
            errors.display()
        );
    }
}
