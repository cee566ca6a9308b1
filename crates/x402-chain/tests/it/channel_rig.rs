//! The shared setup of the `batch-settlement` stream tests (`channel_stream`,
//! `channel_faults`): a fresh anvil with the test USDC and our channel contracts at their
//! canonical addresses, our EVM facilitator (the relayer, anvil account 1, signs as the
//! delegated `receiverAuthorizer`), our server selling one stream over `exact` and
//! `batch-settlement` with its channel manager running, a quote of that stream, and a
//! buyer that signs deposit, voucher and refund payloads in Rust (`x402_payer::channel`)
//! and sends them to the renew URL as `PAYMENT-SIGNATURE`.

use std::sync::Arc;
use std::time::Duration;

use alloy::providers::Provider;
use serde_json::Value;
use x402_chain::anvil::{Anvil, DEV_KEYS};
use x402_chain::channel_contract::IBatchSettlement;
use x402_chain::{BATCH_SETTLEMENT, EvmAddress, EvmConfig, EvmFacilitator, EvmU256};
use x402_payer::channel::{ChannelDomain, deposit_nonce, receive_digest, sign_voucher};
use x402_payer::{DigestSigner, LocalSigner, domain_for};
use x402_server::{ChannelOffer, Config, ServerBuilder, SourceConfig, StreamConfig};
use x402_types::batch::{
    BatchPayload, Bytes, ChannelConfig, Deposit, DepositAuthorization, ERC3009_DEPOSIT_COLLECTOR,
    Erc3009Deposit, SignedVoucher,
};
use x402_types::{
    Address, Amount, Authorization, FixedBytes, Network, PaymentRequirementsV2, Requirement, U256,
};

/// The stream's receiver (anvil account 3).
pub const PAYEE: &str = "0x90F79bf6EB2c4f870365E785982E1f101E93b906";
/// One 2-second slice at 0.06 USDC a minute, in atomic units.
pub const PRICE: u64 = 2_000;
/// The `minDeposit` hint: 12 slices ([`ChannelOffer::default`]).
pub const MIN_DEPOSIT: u128 = 12 * PRICE as u128;
/// The channels' withdrawal delay ([`ChannelOffer::default`]).
pub const WITHDRAW_DELAY: u64 = 900;
const CHAIN_ID: u64 = 84532;

/// Decodes a base64 JSON header (`PAYMENT-REQUIRED`, `PAYMENT-RESPONSE`).
pub fn decode_b64_json(h: &str) -> Value {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(h)
        .expect("base64");
    serde_json::from_slice(&bytes).expect("JSON")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A chain, a facilitator and a server selling stream `s`.
pub struct Rig {
    pub anvil: Anvil,
    pub token: EvmAddress,
    pub base: String,
    pub http: reqwest::Client,
}

impl Rig {
    /// Starts everything; the channel manager runs every second and claims a channel once
    /// `claim_threshold_slices` slices are unclaimed on it (or a withdrawal is pending).
    pub async fn start(claim_threshold_slices: u64) -> Rig {
        Self::start_with(claim_threshold_slices, 0).await
    }

    /// [`start`](Self::start), and the manager refunds channels idle for
    /// `idle_refund_secs` (0: never).
    pub async fn start_with(claim_threshold_slices: u64, idle_refund_secs: u64) -> Rig {
        Self::start_full(claim_threshold_slices, idle_refund_secs, None).await
    }

    /// [`start`](Self::start), the server signing claims and refunds with its own
    /// `authorizer` key (the facilitator only executes them).
    pub async fn start_signing(claim_threshold_slices: u64, authorizer: LocalSigner) -> Rig {
        Self::start_full(claim_threshold_slices, 0, Some(authorizer)).await
    }

    async fn start_full(
        claim_threshold_slices: u64,
        idle_refund_secs: u64,
        authorizer: Option<LocalSigner>,
    ) -> Rig {
        let anvil = Anvil::start(CHAIN_ID).expect("anvil (run `cargo xtask tools` to install it)");
        let token = anvil.install_test_usdc().await.unwrap();
        anvil.install_batch_settlement().await.unwrap();
        let f = EvmFacilitator::connect(EvmConfig::new(
            anvil.url(),
            Network::BASE_SEPOLIA,
            DEV_KEYS[1],
        ))
        .await
        .unwrap();
        let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
        cfg.secret = Some("chain-test-secret-chain-test-secret-x".into());
        cfg.limits.horizon_slices = 10;
        cfg.channel_manager.interval_secs = 1;
        cfg.channel_manager.claim_threshold_slices = claim_threshold_slices;
        cfg.channel_manager.idle_refund_secs = idle_refund_secs;
        let s = StreamConfig {
            id: "s".into(),
            title: "S".into(),
            description: "test".into(),
            price_per_minute: "0.06".into(),
            slice_seconds: 2,
            network: "base-sepolia".into(),
            asset: None,
            pay_to: PAYEE.into(),
            max_timeout_seconds: 60,
            source: SourceConfig::Synthetic {
                rate: 20.0,
                symbol: "T".into(),
                pad: 0,
            },
            channel: Some(ChannelOffer::default()),
        };
        // "long": 30-second slices, for metering (a session that stops early pays
        // for the seconds it had).
        let mut long = s.clone();
        long.id = "long".into();
        long.slice_seconds = 30;
        long.channel = Some(ChannelOffer {
            min_deposit_slices: 2,
            ..ChannelOffer::default()
        });
        cfg.streams = vec![s, long];
        let mut builder = ServerBuilder::new(cfg).facilitator(Arc::new(f));
        if let Some(k) = authorizer {
            builder = builder.channel_authorizer(k);
        }
        let server = builder.bind().await.unwrap();
        let base = server.http_base().to_string();
        server.spawn();
        Rig {
            anvil,
            token,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// A new quote (a new session) of stream `s`: its 402 and renew URL.
    pub async fn quote(&self) -> Quote {
        let answer = self
            .http
            .get(format!("{}/v2/schema/s", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 402);
        let required = decode_b64_json(answer.headers()["payment-required"].to_str().unwrap());
        let accepted = required["accepts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["scheme"] == "batch-settlement")
            .expect("batch-settlement offered")
            .clone();
        let v2: PaymentRequirementsV2 = serde_json::from_value(accepted.clone()).unwrap();
        let schema: Value = answer.json().await.unwrap();
        let ws = schema["websocketEndpoint"].as_str().unwrap();
        let t = ws.split("t=").nth(1).unwrap();
        Quote {
            renew: format!("{}/v2/renew/s?t={t}", self.base),
            requirement: Requirement::from(&v2),
            accepted,
            required,
        }
    }

    /// A buyer with a fresh key holding `usdc` atomic units (and no ether).
    pub async fn buyer(&self, usdc: u64) -> Buyer {
        let key = LocalSigner::random().unwrap();
        self.anvil
            .mint(self.token, evm(key.address()), usdc)
            .await
            .unwrap();
        Buyer {
            key,
            domain: ChannelDomain::new(CHAIN_ID),
        }
    }

    /// Test USDC held by `who`.
    pub async fn usdc(&self, who: Address) -> EvmU256 {
        self.anvil.usdc_balance(self.token, evm(who)).await.unwrap()
    }

    /// Test USDC held by the receiver.
    pub async fn payee_usdc(&self) -> EvmU256 {
        self.usdc(PAYEE.parse().unwrap()).await
    }

    /// A channel on chain: `(balance, totalClaimed)`.
    pub async fn channel(&self, config: &ChannelConfig) -> (u128, u128) {
        let id = ChannelDomain::new(CHAIN_ID).channel_id(config);
        let c = IBatchSettlement::new(BATCH_SETTLEMENT, self.anvil.provider(DEV_KEYS[0]).unwrap());
        let s = c.channels(id.0.into()).call().await.unwrap();
        (s.balance, s.totalClaimed)
    }

    /// Waits (up to 20 s) until `check` holds, polling every 250 ms.
    pub async fn until<F: std::future::Future<Output = bool>>(
        &self,
        what: &str,
        mut check: impl FnMut() -> F,
    ) {
        for _ in 0..80 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// The server's `atomicstream_channel_charged_atomic` (all streams).
    pub async fn charged_metric(&self) -> u128 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        atomicstream_testkit::metric_sum(&text, "atomicstream_channel_charged_atomic_total", "")
    }

    /// Moves the chain's clock `secs` ahead and mines a block.
    pub async fn advance_chain_time(&self, secs: u64) {
        let node = self.anvil.provider(DEV_KEYS[0]).unwrap();
        let _: Value = node
            .raw_request("evm_increaseTime".into(), (secs,))
            .await
            .unwrap();
        let _: Value = node.raw_request("evm_mine".into(), ()).await.unwrap();
    }
}

/// A quote of the stream: where to pay and what was offered.
pub struct Quote {
    /// The renew URL (with the quote's token).
    pub renew: String,
    /// The decoded `PAYMENT-REQUIRED` of the 402.
    pub required: Value,
    /// The `batch-settlement` entry of its `accepts`, as received.
    pub accepted: Value,
    /// The same, parsed.
    pub requirement: Requirement,
}

/// The server's answer to a payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// The decoded `PAYMENT-RESPONSE`.
    pub receipt: Option<Value>,
    /// The decoded `PAYMENT-REQUIRED`.
    pub required: Option<Value>,
}

impl Answer {
    /// The `invalid_batch_settlement_evm_*` reason of a refusal (or the body's `error`).
    pub fn reason(&self) -> String {
        let error = self.body["error"].as_str().unwrap_or_default();
        if error.starts_with("invalid_batch_settlement_evm_") {
            return error.into();
        }
        let message = self.body["message"].as_str().unwrap_or_default();
        message.split(':').next().unwrap_or(error).to_string()
    }

    /// The corrective 402's `extra` (`channelState`, `voucherState`).
    pub fn corrective(&self) -> &Value {
        &self.body["accepts"][0]["extra"]
    }
}

impl Quote {
    /// POSTs `payload` to the renew URL as a v2 `PAYMENT-SIGNATURE`.
    pub async fn send(&self, http: &reqwest::Client, payload: &BatchPayload) -> Answer {
        use base64::Engine as _;
        let p = serde_json::json!({
            "x402Version": 2,
            "resource": self.required["resource"],
            "accepted": self.accepted,
            "payload": payload.to_map(),
        });
        let header = base64::engine::general_purpose::STANDARD.encode(p.to_string());
        let r = http
            .post(&self.renew)
            .header("PAYMENT-SIGNATURE", header)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|h| decode_b64_json(h.to_str().unwrap()))
        };
        let (receipt, required) = (header("payment-response"), header("payment-required"));
        let body = r.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            body,
            receipt,
            required,
        }
    }
}

/// A payer that signs channel payloads itself.
pub struct Buyer {
    pub key: LocalSigner,
    pub domain: ChannelDomain,
}

impl Buyer {
    /// Its address.
    pub fn addr(&self) -> Address {
        self.key.address()
    }

    /// Its channel `salt` with the quote's receiver, token, authorizer and delay.
    pub fn config(&self, q: &Quote, salt: u8) -> ChannelConfig {
        let extra = &q.accepted["extra"];
        ChannelConfig {
            payer: self.addr(),
            payer_authorizer: self.addr(),
            receiver: q.requirement.pay_to.parse().unwrap(),
            receiver_authorizer: extra["receiverAuthorizer"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
            token: q.requirement.asset.parse().unwrap(),
            withdraw_delay: extra["withdrawDelay"].as_u64().unwrap(),
            salt: FixedBytes([salt; 32]),
        }
    }

    /// The channel's id.
    pub fn id(&self, config: &ChannelConfig) -> x402_types::B256 {
        self.domain.channel_id(config)
    }

    /// A voucher for `config` up to `max`.
    pub fn voucher(&self, config: &ChannelConfig, max: u128) -> SignedVoucher {
        sign_voucher(&self.key, &self.domain, self.id(config), max).unwrap()
    }

    /// A `voucher` payload.
    pub fn pay(&self, config: &ChannelConfig, max: u128) -> BatchPayload {
        BatchPayload::Voucher {
            channel_config: config.clone(),
            voucher: self.voucher(config, max),
        }
    }

    /// A `deposit` payload as the official client signs it (`validAfter` 0, `validBefore`
    /// now + maxTimeoutSeconds, the ERC-3009 nonce `keccak256(channelId, salt)`), with
    /// the deposit authorization's salt `auth_salt` and its first voucher up to `max`.
    pub fn deposit(
        &self,
        q: &Quote,
        config: &ChannelConfig,
        amount: u128,
        max: u128,
        auth_salt: u8,
    ) -> BatchPayload {
        let voucher = self.voucher(config, max);
        let salt = FixedBytes([auth_salt; 32]);
        let valid_before = U256::from(unix_now() + q.requirement.max_timeout_seconds);
        let auth = Authorization {
            from: self.addr(),
            to: ERC3009_DEPOSIT_COLLECTOR,
            value: Amount(U256::from_u128(amount)),
            valid_after: U256::ZERO,
            valid_before,
            nonce: deposit_nonce(&voucher.channel_id, &salt),
        };
        let token_domain = domain_for(&q.requirement).unwrap();
        let sig = self
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
                        valid_after: U256::ZERO,
                        valid_before,
                        salt,
                        signature: Bytes(sig.0.to_vec()),
                    }),
                    permit2_authorization: None,
                },
            },
        }
    }

    /// A cooperative `refund` payload: a zero-charge voucher at `charged`.
    pub fn refund(&self, config: &ChannelConfig, charged: u128) -> BatchPayload {
        BatchPayload::Refund {
            channel_config: config.clone(),
            voucher: self.voucher(config, charged),
            amount: None,
            refund_nonce: None,
            claims: None,
            refund_authorizer_signature: None,
            claim_authorizer_signature: None,
        }
    }

    /// The settlement contract as this payer (it needs ether: see `fund_gas`).
    pub fn contract(
        &self,
        rig: &Rig,
    ) -> IBatchSettlement::IBatchSettlementInstance<alloy::providers::DynProvider> {
        let provider = rig.anvil.provider(&self.key.to_hex_secret()).unwrap();
        IBatchSettlement::new(BATCH_SETTLEMENT, provider)
    }

    /// Gives the payer one ether for gas.
    pub async fn fund_gas(&self, rig: &Rig) {
        rig.anvil
            .set_balance(
                evm(self.addr()),
                EvmU256::from(10u64).pow(EvmU256::from(18u64)),
            )
            .await
            .unwrap();
    }
}

/// The contract's form of a channel configuration.
pub fn sol_config(c: &ChannelConfig) -> IBatchSettlement::ChannelConfig {
    IBatchSettlement::ChannelConfig {
        payer: evm(c.payer),
        payerAuthorizer: evm(c.payer_authorizer),
        receiver: evm(c.receiver),
        receiverAuthorizer: evm(c.receiver_authorizer),
        token: evm(c.token),
        withdrawDelay: alloy::primitives::aliases::U40::from(c.withdraw_delay),
        salt: c.salt.0.into(),
    }
}

/// Our address as alloy's.
pub fn evm(a: Address) -> EvmAddress {
    EvmAddress::from(a.0)
}
