//! Our x402 `batch-settlement` contracts (`contracts/BatchSettlement.sol`) on a fresh anvil
//! (chain id 84532), placed at their canonical addresses next to the test USDC: the EIP-712
//! digests against alloy's own EIP-712 implementation, and every path of deposit, claim,
//! settle, refund and the timed withdrawal with real signatures and real transactions. In
//! every test the payer's loss is exactly the receiver's gain plus what the contract holds.
//! A test that cannot find anvil fails (run `cargo xtask tools`, which installs it).

use alloy::primitives::aliases::U40;
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{Eip712Domain, SolCall, SolEvent, SolStruct, SolValue, eip712_domain};
use x402_chain::anvil::{Anvil, DEV_KEYS};
use x402_chain::channel_contract::IBatchSettlement::{
    self, ChannelConfig, IBatchSettlementErrors as E, IBatchSettlementInstance, Voucher,
    VoucherClaim,
};
use x402_chain::channel_contract::{BATCH_SETTLEMENT, ERC3009_DEPOSIT_COLLECTOR};
use x402_chain::token::IEip3009Token;

const CHAIN_ID: u64 = 84532;
const FUND: u128 = 1_000_000; // 1 USDC
const DEPOSIT: u128 = 400_000;

/// The signed types, declared on their own: alloy hashes them (`SolStruct::eip712_signing_hash`)
/// independently of the contract's Solidity.
mod eip712 {
    alloy::sol! {
        struct ChannelConfig {
            address payer;
            address payerAuthorizer;
            address receiver;
            address receiverAuthorizer;
            address token;
            uint40 withdrawDelay;
            bytes32 salt;
        }
        struct Voucher { bytes32 channelId; uint128 maxClaimableAmount; }
        struct Refund { bytes32 channelId; uint256 nonce; uint128 amount; }
        struct ClaimEntry { bytes32 channelId; uint128 maxClaimableAmount; uint128 totalClaimed; }
        struct ClaimBatch { ClaimEntry[] claims; }
        struct ReceiveWithAuthorization {
            address from; address to; uint256 value; uint256 validAfter; uint256 validBefore; bytes32 nonce;
        }
    }
}

alloy::sol! {
    #[sol(rpc)]
    interface ICollector {
        function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes collectorData) external;
        error OnlySettlement();
    }
}

fn channel_domain() -> Eip712Domain {
    eip712_domain! {
        name: "x402 Batch Settlement",
        version: "1",
        chain_id: CHAIN_ID,
        verifying_contract: BATCH_SETTLEMENT,
    }
}

fn key(label: &str) -> PrivateKeySigner {
    PrivateKeySigner::from_bytes(&keccak256(label.as_bytes())).unwrap()
}

fn relayer_address() -> Address {
    DEV_KEYS[1].parse::<PrivateKeySigner>().unwrap().address()
}

fn channel_id(c: &ChannelConfig) -> B256 {
    eip712::ChannelConfig {
        payer: c.payer,
        payerAuthorizer: c.payerAuthorizer,
        receiver: c.receiver,
        receiverAuthorizer: c.receiverAuthorizer,
        token: c.token,
        withdrawDelay: c.withdrawDelay,
        salt: c.salt,
    }
    .eip712_signing_hash(&channel_domain())
}

fn sign(signer: &PrivateKeySigner, digest: B256) -> Bytes {
    signer
        .sign_hash_sync(&digest)
        .unwrap()
        .as_bytes()
        .to_vec()
        .into()
}

/// The claim row of a voucher for `max` signed by `signer`, claiming `total` cumulatively.
fn claim_row(c: &ChannelConfig, signer: &PrivateKeySigner, max: u128, total: u128) -> VoucherClaim {
    let digest = eip712::Voucher {
        channelId: channel_id(c),
        maxClaimableAmount: max,
    }
    .eip712_signing_hash(&channel_domain());
    VoucherClaim {
        voucher: Voucher {
            channel: c.clone(),
            maxClaimableAmount: max,
        },
        signature: sign(signer, digest),
        totalClaimed: total,
    }
}

fn batch_signature(authorizer: &PrivateKeySigner, rows: &[VoucherClaim]) -> Bytes {
    let batch = eip712::ClaimBatch {
        claims: rows
            .iter()
            .map(|r| eip712::ClaimEntry {
                channelId: channel_id(&r.voucher.channel),
                maxClaimableAmount: r.voucher.maxClaimableAmount,
                totalClaimed: r.totalClaimed,
            })
            .collect(),
    };
    sign(authorizer, batch.eip712_signing_hash(&channel_domain()))
}

fn refund_signature(
    authorizer: &PrivateKeySigner,
    c: &ChannelConfig,
    nonce: u64,
    amount: u128,
) -> Bytes {
    let refund = eip712::Refund {
        channelId: channel_id(c),
        nonce: U256::from(nonce),
        amount,
    };
    sign(authorizer, refund.eip712_signing_hash(&channel_domain()))
}

/// The decoded events of type `T` in a receipt.
fn events<T: SolEvent>(r: &TransactionReceipt) -> Vec<T> {
    r.logs()
        .iter()
        .filter_map(|l| l.log_decode::<T>().ok())
        .map(|l| l.inner.data)
        .collect()
}

/// The contract's custom error of a reverted call.
fn reason(e: &alloy::contract::Error) -> E {
    e.as_decoded_interface_error::<E>()
        .unwrap_or_else(|| panic!("not one of the contract's errors: {e}"))
}

/// Evaluates to the error of a call that must revert (checked with `eth_call`).
macro_rules! reverts {
    ($call:expr) => {
        match $call.call().await {
            Ok(_) => panic!("expected a revert: {}", stringify!($call)),
            Err(e) => e,
        }
    };
}

/// Sends a transaction and returns its successful receipt.
macro_rules! send {
    ($call:expr) => {{
        let r = $call.send().await.unwrap().get_receipt().await.unwrap();
        assert!(r.status(), "reverted: {}", stringify!($call));
        r
    }};
}

struct Chain {
    anvil: Anvil,
    token: Address,
    payer: PrivateKeySigner,
    receiver: PrivateKeySigner,
    authorizer: PrivateKeySigner,
    /// Sends what anyone may send (deposit, claimWithSignature, settle, refundWithSignature).
    relayer: IBatchSettlementInstance<DynProvider>,
    /// Sent by the receiver (claim, refund).
    by_receiver: IBatchSettlementInstance<DynProvider>,
    /// Sent by the payer (initiateWithdraw).
    by_payer: IBatchSettlementInstance<DynProvider>,
}

async fn chain(label: &str) -> Chain {
    let anvil = Anvil::start(CHAIN_ID).expect("anvil (run `cargo xtask tools` to install it)");
    let token = anvil.install_test_usdc().await.unwrap();
    assert_eq!(
        anvil.install_batch_settlement().await.unwrap(),
        BATCH_SETTLEMENT
    );
    let payer = key(&format!("{label} payer"));
    let payer_key = format!("0x{}", alloy::hex::encode(payer.to_bytes()));
    anvil
        .mint(token, payer.address(), FUND as u64)
        .await
        .unwrap();
    anvil
        .set_balance(payer.address(), U256::from(10u128.pow(18)))
        .await
        .unwrap();
    let receiver: PrivateKeySigner = DEV_KEYS[2].parse().unwrap();
    let contract = |k: &str| IBatchSettlement::new(BATCH_SETTLEMENT, anvil.provider(k).unwrap());
    Chain {
        token,
        relayer: contract(DEV_KEYS[1]),
        by_receiver: contract(DEV_KEYS[2]),
        by_payer: contract(&payer_key),
        payer,
        receiver,
        authorizer: key(&format!("{label} receiver authorizer")),
        anvil,
    }
}

impl Chain {
    fn config(&self, salt: u64) -> ChannelConfig {
        ChannelConfig {
            payer: self.payer.address(),
            payerAuthorizer: self.payer.address(),
            receiver: self.receiver.address(),
            receiverAuthorizer: self.authorizer.address(),
            token: self.token,
            withdrawDelay: U40::from(900u64),
            salt: B256::from(U256::from(salt)),
        }
    }

    async fn usdc(&self, who: Address) -> u128 {
        self.anvil
            .usdc_balance(self.token, who)
            .await
            .unwrap()
            .to::<u128>()
    }

    /// Payer, receiver and settlement contract balances.
    async fn balances(&self) -> (u128, u128, u128) {
        (
            self.usdc(self.payer.address()).await,
            self.usdc(self.receiver.address()).await,
            self.usdc(BATCH_SETTLEMENT).await,
        )
    }

    /// Asserts that the payer lost exactly what the receiver gained plus what the contract holds.
    async fn assert_conserved(&self, receiver0: u128) {
        let (p, r, held) = self.balances().await;
        assert_eq!(
            p + (r - receiver0) + held,
            FUND,
            "payer {p}, receiver {r}, held {held}"
        );
    }

    /// `collectorData` for a deposit of `amount` into `c`, signed by the payer.
    fn collector_data(&self, c: &ChannelConfig, amount: u128, salt: u64) -> Bytes {
        let (valid_after, valid_before, salt) =
            (U256::ZERO, U256::from(u64::MAX), U256::from(salt));
        let auth = eip712::ReceiveWithAuthorization {
            from: self.payer.address(),
            to: ERC3009_DEPOSIT_COLLECTOR,
            value: U256::from(amount),
            validAfter: valid_after,
            validBefore: valid_before,
            nonce: keccak256((channel_id(c), salt).abi_encode()),
        };
        let token_domain = eip712_domain! {
            name: "USDC",
            version: "2",
            chain_id: CHAIN_ID,
            verifying_contract: self.token,
        };
        let signature = sign(&self.payer, auth.eip712_signing_hash(&token_domain));
        (valid_after, valid_before, salt, signature)
            .abi_encode_params()
            .into()
    }

    async fn deposit(&self, c: &ChannelConfig, amount: u128, salt: u64) -> TransactionReceipt {
        let data = self.collector_data(c, amount, salt);
        send!(
            self.relayer
                .deposit(c.clone(), amount, ERC3009_DEPOSIT_COLLECTOR, data)
        )
    }

    async fn channel(&self, c: &ChannelConfig) -> (u128, u128) {
        let s = self.relayer.channels(channel_id(c)).call().await.unwrap();
        (s.balance, s.totalClaimed)
    }

    async fn now(&self) -> u64 {
        let p = self.anvil.provider(DEV_KEYS[0]).unwrap();
        let b = p
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .unwrap()
            .unwrap();
        b.header.timestamp
    }

    async fn advance(&self, seconds: u64) {
        let p = self.anvil.provider(DEV_KEYS[0]).unwrap();
        let _: serde_json::Value = p
            .raw_request("evm_increaseTime".into(), (seconds,))
            .await
            .unwrap();
        let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
    }
}

#[tokio::test]
async fn digests_equal_alloys_own_eip712_hashing() {
    let c = chain("digests").await;
    let s = &c.relayer;
    let domain = channel_domain();
    assert_eq!(
        s.DOMAIN_SEPARATOR().call().await.unwrap(),
        domain.separator()
    );
    let mut configs = vec![c.config(1), c.config(u64::MAX)];
    // Other field values in every position, payerAuthorizer zero, the largest delay.
    configs.push(ChannelConfig {
        payer: key("p").address(),
        payerAuthorizer: Address::ZERO,
        receiver: key("r").address(),
        receiverAuthorizer: key("ra").address(),
        token: key("t").address(),
        withdrawDelay: U40::from(2_592_000u64),
        salt: keccak256(b"salt"),
    });
    let mut ids = Vec::new();
    for cfg in &configs {
        let id = s.getChannelId(cfg.clone()).call().await.unwrap();
        assert_eq!(id, channel_id(cfg), "{cfg:?}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "the salt is part of the id");
    for (id, max) in [(ids[0], 0u128), (ids[1], 10_000), (ids[2], u128::MAX)] {
        let ours = eip712::Voucher {
            channelId: id,
            maxClaimableAmount: max,
        }
        .eip712_signing_hash(&domain);
        assert_eq!(s.getVoucherDigest(id, max).call().await.unwrap(), ours);
        for nonce in [0u64, 7] {
            let ours = eip712::Refund {
                channelId: id,
                nonce: U256::from(nonce),
                amount: max,
            }
            .eip712_signing_hash(&domain);
            let theirs = s
                .getRefundDigest(id, U256::from(nonce), max)
                .call()
                .await
                .unwrap();
            assert_eq!(theirs, ours);
        }
    }
    // Claim batches of 0, 1 and 3 rows.
    let rows: Vec<VoucherClaim> = configs
        .iter()
        .enumerate()
        .map(|(i, cfg)| claim_row(cfg, &c.payer, 1000 * (i as u128 + 1), 500 * i as u128))
        .collect();
    for n in [0, 1, 3] {
        let batch = eip712::ClaimBatch {
            claims: rows[..n]
                .iter()
                .map(|r| eip712::ClaimEntry {
                    channelId: channel_id(&r.voucher.channel),
                    maxClaimableAmount: r.voucher.maxClaimableAmount,
                    totalClaimed: r.totalClaimed,
                })
                .collect(),
        };
        let theirs = s
            .getClaimBatchDigest(rows[..n].to_vec())
            .call()
            .await
            .unwrap();
        assert_eq!(theirs, batch.eip712_signing_hash(&domain), "{n} rows");
    }
}

#[tokio::test]
async fn a_deposit_moves_exactly_its_amount_and_its_authorization_works_once() {
    let c = chain("deposit").await;
    let cfg = c.config(1);
    let id = channel_id(&cfg);
    let (_, receiver0, _) = c.balances().await;
    let r = c.deposit(&cfg, DEPOSIT, 11).await;
    eprintln!("gas: deposit (new channel) {}", r.gas_used);
    assert_eq!(c.balances().await, (FUND - DEPOSIT, receiver0, DEPOSIT));
    assert_eq!(c.channel(&cfg).await, (DEPOSIT, 0));
    let created = events::<IBatchSettlement::ChannelCreated>(&r);
    assert_eq!(created.len(), 1);
    assert_eq!((created[0].channelId, &created[0].config), (id, &cfg));
    let deposited = events::<IBatchSettlement::Deposited>(&r);
    assert_eq!(deposited.len(), 1);
    let d = &deposited[0];
    assert_eq!(
        (d.channelId, d.sender, d.amount, d.newBalance),
        (id, relayer_address(), DEPOSIT, DEPOSIT)
    );

    // The same authorization again: the token refuses it, nothing moves.
    let again = c.collector_data(&cfg, DEPOSIT, 11);
    let e = reverts!(
        c.relayer
            .deposit(cfg.clone(), DEPOSIT, ERC3009_DEPOSIT_COLLECTOR, again)
    );
    assert!(e.to_string().contains("authorization is used"), "{e}");
    // The authorization is bound to its channel: another channel cannot use it.
    let other = c.collector_data(&cfg, DEPOSIT, 12);
    let e = reverts!(
        c.relayer
            .deposit(c.config(2), DEPOSIT, ERC3009_DEPOSIT_COLLECTOR, other)
    );
    assert!(e.to_string().contains("invalid signature"), "{e}");
    // The token's receiveWithAuthorization is the payee's to call: nobody else can spend
    // the payer's deposit authorization.
    let (after, before, salt, sig) =
        <(U256, U256, U256, Bytes)>::abi_decode_params(&c.collector_data(&cfg, DEPOSIT, 17))
            .unwrap();
    let usdc = IEip3009Token::new(c.token, c.relayer.provider().clone());
    let e = reverts!(usdc.receiveWithAuthorization(
        c.payer.address(),
        ERC3009_DEPOSIT_COLLECTOR,
        U256::from(DEPOSIT),
        after,
        before,
        keccak256((id, salt).abi_encode()),
        sig
    ));
    assert!(e.to_string().contains("caller must be the payee"), "{e}");
    // Only the settlement contract may drive the collector.
    let collector = ICollector::new(ERC3009_DEPOSIT_COLLECTOR, c.relayer.provider().clone());
    let e = reverts!(collector.collect(
        c.payer.address(),
        c.token,
        U256::from(DEPOSIT),
        id,
        c.collector_data(&cfg, DEPOSIT, 13)
    ));
    assert!(
        e.as_decoded_error::<ICollector::OnlySettlement>().is_some(),
        "{e}"
    );
    // A delay out of range, or zero, is refused before anything is collected.
    let mut short = c.config(3);
    short.withdrawDelay = U40::from(899u64);
    let data = c.collector_data(&short, DEPOSIT, 14);
    let e = reverts!(
        c.relayer
            .deposit(short, DEPOSIT, ERC3009_DEPOSIT_COLLECTOR, data)
    );
    assert!(matches!(reason(&e), E::WithdrawDelayOutOfRange(_)), "{e}");
    let data = c.collector_data(&cfg, 0, 15);
    let e = reverts!(
        c.relayer
            .deposit(cfg.clone(), 0, ERC3009_DEPOSIT_COLLECTOR, data)
    );
    assert!(matches!(reason(&e), E::ZeroAmount(_)), "{e}");

    // A second deposit (new salt) tops the channel up; it is not created again.
    let r = c.deposit(&cfg, 100_000, 16).await;
    eprintln!("gas: deposit (top-up) {}", r.gas_used);
    assert!(events::<IBatchSettlement::ChannelCreated>(&r).is_empty());
    assert_eq!(
        events::<IBatchSettlement::Deposited>(&r)[0].newBalance,
        DEPOSIT + 100_000
    );
    assert_eq!(c.channel(&cfg).await, (DEPOSIT + 100_000, 0));
    assert_eq!(
        c.balances().await,
        (FUND - DEPOSIT - 100_000, receiver0, DEPOSIT + 100_000)
    );
    c.assert_conserved(receiver0).await;
}

#[tokio::test]
async fn a_receiver_claims_vouchers_once_and_never_beyond_voucher_or_balance() {
    let c = chain("claim").await;
    let cfg = c.config(1);
    let id = channel_id(&cfg);
    let (_, receiver0, _) = c.balances().await;
    c.deposit(&cfg, DEPOSIT, 1).await;

    let row = claim_row(&cfg, &c.payer, 100_000, 60_000);
    let r = send!(c.by_receiver.claim(vec![row.clone()]));
    eprintln!("gas: claim (1 voucher, by receiver) {}", r.gas_used);
    let claimed = events::<IBatchSettlement::Claimed>(&r);
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (
            claimed[0].channelId,
            claimed[0].sender,
            claimed[0].claimAmount,
            claimed[0].newTotalClaimed
        ),
        (id, c.receiver.address(), 60_000, 60_000)
    );
    assert_eq!(c.channel(&cfg).await, (DEPOSIT, 60_000));
    let rs = c
        .relayer
        .receivers(c.receiver.address(), c.token)
        .call()
        .await
        .unwrap();
    assert_eq!((rs.totalClaimed, rs.totalSettled), (60_000, 0));

    // Replayed, and an older (lower) claim: no-ops.
    for stale in [row.clone(), claim_row(&cfg, &c.payer, 50_000, 50_000)] {
        let r = send!(c.by_receiver.claim(vec![stale]));
        assert!(events::<IBatchSettlement::Claimed>(&r).is_empty());
        assert_eq!(c.channel(&cfg).await, (DEPOSIT, 60_000));
    }
    // Above the voucher's maximum.
    let e = reverts!(
        c.by_receiver
            .claim(vec![claim_row(&cfg, &c.payer, 100_000, 100_001)])
            .from(c.receiver.address())
    );
    assert!(matches!(reason(&e), E::ClaimExceedsVoucher(_)), "{e}");
    // Above the balance, though the voucher allows it.
    let e = reverts!(
        c.by_receiver
            .claim(vec![claim_row(&cfg, &c.payer, 1_000_000, DEPOSIT + 1)])
            .from(c.receiver.address())
    );
    assert!(matches!(reason(&e), E::ClaimExceedsBalance(_)), "{e}");
    // Signed by another key; and a signature of another maximum.
    let e = reverts!(
        c.by_receiver
            .claim(vec![claim_row(&cfg, &c.authorizer, 100_000, 70_000)])
            .from(c.receiver.address())
    );
    assert!(matches!(reason(&e), E::InvalidSignature(_)), "{e}");
    let mut forged = claim_row(&cfg, &c.payer, 100_000, 70_000);
    forged.voucher.maxClaimableAmount = 200_000;
    forged.totalClaimed = 150_000;
    let e = reverts!(c.by_receiver.claim(vec![forged]).from(c.receiver.address()));
    assert!(matches!(reason(&e), E::InvalidSignature(_)), "{e}");
    // Only the receiver or its authorizer may claim without a batch signature.
    let e = reverts!(
        c.by_payer
            .claim(vec![claim_row(&cfg, &c.payer, 100_000, 70_000)])
            .from(c.payer.address())
    );
    assert!(matches!(reason(&e), E::Unauthorized(_)), "{e}");
    // Without a payerAuthorizer the voucher must be the payer's EIP-1271 signature: an EOA
    // payer cannot give one.
    let mut no_authorizer = c.config(2);
    no_authorizer.payerAuthorizer = Address::ZERO;
    c.deposit(&no_authorizer, 10_000, 2).await;
    let e = reverts!(
        c.by_receiver
            .claim(vec![claim_row(&no_authorizer, &c.payer, 10_000, 5_000)])
            .from(c.receiver.address())
    );
    assert!(matches!(reason(&e), E::InvalidSignature(_)), "{e}");
    assert_eq!(c.channel(&cfg).await, (DEPOSIT, 60_000), "nothing changed");
    c.assert_conserved(receiver0).await;
}

#[tokio::test]
async fn anyone_claims_a_batch_signed_by_the_receiver_authorizer_then_settles_it() {
    let c = chain("batch").await;
    let (a, b) = (c.config(1), c.config(2));
    let (_, receiver0, _) = c.balances().await;
    c.deposit(&a, DEPOSIT, 1).await;
    c.deposit(&b, 200_000, 2).await;
    let rows = vec![
        claim_row(&a, &c.payer, 100_000, 60_000),
        claim_row(&b, &c.payer, 50_000, 40_000),
    ];
    // A signature by someone else, and one over other rows, are refused.
    let e = reverts!(
        c.relayer
            .claimWithSignature(rows.clone(), batch_signature(&c.payer, &rows))
    );
    assert!(matches!(reason(&e), E::InvalidSignature(_)), "{e}");
    let sig = batch_signature(&c.authorizer, &rows[..1]);
    let e = reverts!(c.relayer.claimWithSignature(rows.clone(), sig));
    assert!(matches!(reason(&e), E::InvalidSignature(_)), "{e}");
    // Rows of two receiverAuthorizers cannot share one signature.
    let mut foreign = c.config(3);
    foreign.receiverAuthorizer = key("someone").address();
    let mixed = vec![rows[0].clone(), claim_row(&foreign, &c.payer, 1, 1)];
    let e = reverts!(
        c.relayer
            .claimWithSignature(mixed.clone(), batch_signature(&c.authorizer, &mixed))
    );
    assert!(
        matches!(reason(&e), E::ReceiverAuthorizerMismatch(_)),
        "{e}"
    );

    let r = send!(
        c.relayer
            .claimWithSignature(rows.clone(), batch_signature(&c.authorizer, &rows))
    );
    eprintln!("gas: claimWithSignature (2 channels) {}", r.gas_used);
    let claimed = events::<IBatchSettlement::Claimed>(&r);
    assert_eq!(
        claimed
            .iter()
            .map(|e| (e.channelId, e.claimAmount))
            .collect::<Vec<_>>(),
        vec![(channel_id(&a), 60_000), (channel_id(&b), 40_000)]
    );
    assert_eq!(c.channel(&a).await, (DEPOSIT, 60_000));
    assert_eq!(c.channel(&b).await, (200_000, 40_000));
    c.assert_conserved(receiver0).await;

    // settle sweeps exactly claimed - settled, once, to the receiver, whoever sends it.
    let r = send!(c.relayer.settle(c.receiver.address(), c.token));
    eprintln!("gas: settle {}", r.gas_used);
    let settled = events::<IBatchSettlement::Settled>(&r);
    assert_eq!(settled.len(), 1);
    assert_eq!(
        (settled[0].receiver, settled[0].token, settled[0].amount),
        (c.receiver.address(), c.token, 100_000)
    );
    let (payer, receiver, held) = c.balances().await;
    assert_eq!(receiver, receiver0 + 100_000);
    assert_eq!(
        (payer, held),
        (FUND - DEPOSIT - 200_000, DEPOSIT + 200_000 - 100_000)
    );
    let r = send!(c.relayer.settle(c.receiver.address(), c.token));
    assert!(
        events::<IBatchSettlement::Settled>(&r).is_empty(),
        "nothing left to sweep"
    );
    assert_eq!(c.usdc(c.receiver.address()).await, receiver0 + 100_000);

    // More claimed later: the next settle moves only the difference.
    let more = vec![claim_row(&a, &c.payer, 100_000, 90_000)];
    send!(
        c.relayer
            .claimWithSignature(more.clone(), batch_signature(&c.authorizer, &more))
    );
    let r = send!(c.relayer.settle(c.receiver.address(), c.token));
    assert_eq!(events::<IBatchSettlement::Settled>(&r)[0].amount, 30_000);
    assert_eq!(c.usdc(c.receiver.address()).await, receiver0 + 130_000);
    let rs = c
        .relayer
        .receivers(c.receiver.address(), c.token)
        .call()
        .await
        .unwrap();
    assert_eq!((rs.totalClaimed, rs.totalSettled), (130_000, 130_000));
    c.assert_conserved(receiver0).await;
}

#[tokio::test]
async fn refunds_check_their_nonce_are_capped_and_ride_a_multicall_with_a_claim() {
    let c = chain("refund").await;
    let (_, receiver0, _) = c.balances().await;
    let cfg = c.config(1);
    let id = channel_id(&cfg);
    c.deposit(&cfg, DEPOSIT, 1).await;
    send!(
        c.by_receiver
            .claim(vec![claim_row(&cfg, &c.payer, 100_000, 60_000)])
    );
    // Wrong nonce; amount 0; a signature by someone else.
    let sig = refund_signature(&c.authorizer, &cfg, 1, 1000);
    let e = reverts!(
        c.relayer
            .refundWithSignature(cfg.clone(), 1000, U256::from(1), sig)
    );
    assert!(matches!(reason(&e), E::RefundNonceMismatch(_)), "{e}");
    let sig = refund_signature(&c.authorizer, &cfg, 0, 0);
    let e = reverts!(
        c.relayer
            .refundWithSignature(cfg.clone(), 0, U256::ZERO, sig)
    );
    assert!(matches!(reason(&e), E::ZeroAmount(_)), "{e}");
    let sig = refund_signature(&c.payer, &cfg, 0, 1000);
    let e = reverts!(
        c.relayer
            .refundWithSignature(cfg.clone(), 1000, U256::ZERO, sig)
    );
    assert!(matches!(reason(&e), E::InvalidSignature(_)), "{e}");
    // refund() is the receiver's (or its authorizer's) only.
    let e = reverts!(c.by_payer.refund(cfg.clone(), 1000).from(c.payer.address()));
    assert!(matches!(reason(&e), E::Unauthorized(_)), "{e}");

    // A partial refund by the receiver, then one asking for more than is left: capped to
    // balance - totalClaimed.
    let r = send!(c.by_receiver.refund(cfg.clone(), 40_000));
    eprintln!("gas: refund (by receiver, partial) {}", r.gas_used);
    assert_eq!(events::<IBatchSettlement::Refunded>(&r)[0].amount, 40_000);
    assert_eq!(
        c.relayer.refundNonce(id).call().await.unwrap(),
        U256::from(1)
    );
    let sig = refund_signature(&c.authorizer, &cfg, 1, u128::MAX);
    let r =
        send!(
            c.relayer
                .refundWithSignature(cfg.clone(), u128::MAX, U256::from(1), sig.clone())
        );
    eprintln!("gas: refundWithSignature (all unclaimed) {}", r.gas_used);
    let refunded = events::<IBatchSettlement::Refunded>(&r);
    assert_eq!(refunded.len(), 1);
    assert_eq!(refunded[0].amount, DEPOSIT - 60_000 - 40_000);
    assert_eq!(events::<IBatchSettlement::ChannelClosed>(&r).len(), 1);
    assert_eq!(c.channel(&cfg).await, (60_000, 60_000));
    assert_eq!(
        c.relayer.refundNonce(id).call().await.unwrap(),
        U256::from(2)
    );
    // The same signature again: its nonce is spent.
    let e = reverts!(
        c.relayer
            .refundWithSignature(cfg.clone(), u128::MAX, U256::from(1), sig)
    );
    assert!(matches!(reason(&e), E::RefundNonceMismatch(_)), "{e}");
    // Nothing left: a refund is capped to 0, consumes its nonce and moves nothing.
    let r = send!(c.by_receiver.refund(cfg.clone(), 5));
    assert!(events::<IBatchSettlement::Refunded>(&r).is_empty());
    assert_eq!(
        c.relayer.refundNonce(id).call().await.unwrap(),
        U256::from(3)
    );
    assert_eq!(c.usdc(c.payer.address()).await, FUND - 60_000);
    c.assert_conserved(receiver0).await;

    // A refund reduces a pending withdrawal, and cancels it once it covers it.
    let w = c.config(2);
    let wid = channel_id(&w);
    c.deposit(&w, 100_000, 2).await;
    send!(c.by_payer.initiateWithdraw(w.clone(), 50_000));
    send!(c.by_receiver.refund(w.clone(), 20_000));
    let p = c.relayer.pendingWithdrawals(wid).call().await.unwrap();
    assert_eq!(p.amount, 30_000);
    send!(c.by_receiver.refund(w.clone(), 30_000));
    let p = c.relayer.pendingWithdrawals(wid).call().await.unwrap();
    assert_eq!((p.amount, p.initiatedAt), (0, U40::ZERO), "cancelled");
    assert_eq!(c.channel(&w).await, (50_000, 0));

    // multicall(claimWithSignature, refundWithSignature): the last voucher is claimed and the
    // rest refunded in one transaction.
    let m = c.config(3);
    c.deposit(&m, DEPOSIT, 3).await;
    let rows = vec![claim_row(&m, &c.payer, 100_000, 70_000)];
    let mid = channel_id(&m);
    let nonce = c.relayer.refundNonce(mid).call().await.unwrap();
    assert_eq!(nonce, U256::ZERO);
    let calls: Vec<Bytes> = vec![
        IBatchSettlement::claimWithSignatureCall {
            claims: rows.clone(),
            authorizerSignature: batch_signature(&c.authorizer, &rows),
        }
        .abi_encode()
        .into(),
        IBatchSettlement::refundWithSignatureCall {
            config: m.clone(),
            amount: DEPOSIT - 70_000,
            nonce,
            receiverAuthorizerSignature: refund_signature(&c.authorizer, &m, 0, DEPOSIT - 70_000),
        }
        .abi_encode()
        .into(),
    ];
    let payer_before = c.usdc(c.payer.address()).await;
    let r = send!(c.relayer.multicall(calls));
    eprintln!(
        "gas: multicall(claimWithSignature, refundWithSignature) {}",
        r.gas_used
    );
    assert_eq!(
        events::<IBatchSettlement::Claimed>(&r)[0].claimAmount,
        70_000
    );
    assert_eq!(
        events::<IBatchSettlement::Refunded>(&r)[0].amount,
        DEPOSIT - 70_000
    );
    assert_eq!(c.channel(&m).await, (70_000, 70_000));
    assert_eq!(
        c.usdc(c.payer.address()).await,
        payer_before + DEPOSIT - 70_000
    );
    // A failing call reverts the whole multicall, with the inner reason.
    let bad = vec![
        IBatchSettlement::settleCall {
            receiver: c.receiver.address(),
            token: c.token,
        }
        .abi_encode()
        .into(),
        IBatchSettlement::refundCall {
            config: m.clone(),
            amount: 0,
        }
        .abi_encode()
        .into(),
    ];
    let e = reverts!(c.relayer.multicall(bad));
    assert!(matches!(reason(&e), E::Unauthorized(_)), "{e}");
    send!(c.relayer.settle(c.receiver.address(), c.token));
    let (payer, receiver, held) = c.balances().await;
    assert_eq!(receiver, receiver0 + 60_000 + 70_000, "both claims settled");
    assert_eq!(
        held, 50_000,
        "only the second channel's unrefunded rest is held"
    );
    assert_eq!(payer, FUND - 60_000 - 70_000 - 50_000);
    c.assert_conserved(receiver0).await;
}

#[tokio::test]
async fn a_withdrawal_pays_only_the_unclaimed_rest_after_its_delay() {
    let c = chain("withdraw").await;
    let (_, receiver0, _) = c.balances().await;
    let cfg = c.config(1);
    let id = channel_id(&cfg);
    c.deposit(&cfg, DEPOSIT, 1).await;
    // Only the payer (or its authorizer) may start it.
    let e = reverts!(
        c.by_receiver
            .initiateWithdraw(cfg.clone(), DEPOSIT)
            .from(c.receiver.address())
    );
    assert!(matches!(reason(&e), E::Unauthorized(_)), "{e}");
    let r = send!(c.by_payer.initiateWithdraw(cfg.clone(), DEPOSIT));
    eprintln!("gas: initiateWithdraw {}", r.gas_used);
    let started = c.now().await;
    let w = events::<IBatchSettlement::WithdrawInitiated>(&r);
    assert_eq!(w.len(), 1);
    assert_eq!(
        (w[0].channelId, w[0].amount, w[0].finalizeAfter),
        (id, DEPOSIT, U40::from(started + 900))
    );
    let p = c.relayer.pendingWithdrawals(id).call().await.unwrap();
    assert_eq!((p.amount, p.initiatedAt), (DEPOSIT, U40::from(started)));
    let e = reverts!(
        c.by_payer
            .initiateWithdraw(cfg.clone(), 1)
            .from(c.payer.address())
    );
    assert!(matches!(reason(&e), E::WithdrawAlreadyPending(_)), "{e}");
    // Before the delay: refused.
    let e = reverts!(c.relayer.finalizeWithdraw(cfg.clone()));
    assert!(matches!(reason(&e), E::WithdrawNotReady(_)), "{e}");

    // The receiver claims in time: the withdrawal cannot take what was claimed.
    send!(
        c.by_receiver
            .claim(vec![claim_row(&cfg, &c.payer, 150_000, 150_000)])
    );
    c.advance(900).await;
    let r = send!(c.relayer.finalizeWithdraw(cfg.clone()));
    eprintln!("gas: finalizeWithdraw {}", r.gas_used);
    let f = events::<IBatchSettlement::WithdrawFinalized>(&r);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].channelId, f[0].amount), (id, DEPOSIT - 150_000));
    assert_eq!(events::<IBatchSettlement::ChannelClosed>(&r).len(), 1);
    assert_eq!(c.channel(&cfg).await, (150_000, 150_000));
    assert_eq!(c.usdc(c.payer.address()).await, FUND - 150_000);
    // Done: no withdrawal is pending any more.
    let e = reverts!(c.relayer.finalizeWithdraw(cfg.clone()));
    assert!(matches!(reason(&e), E::NoPendingWithdrawal(_)), "{e}");

    send!(c.relayer.settle(c.receiver.address(), c.token));
    assert_eq!(
        c.balances().await,
        (FUND - 150_000, receiver0 + 150_000, 0),
        "the payer lost exactly what the receiver gained"
    );
    c.assert_conserved(receiver0).await;
}
