//! The x402 `batch-settlement` scheme on EVM (payment channels): its wire types.
//!
//! A payer deposits once into a channel (an ERC-3009 `ReceiveWithAuthorization` relayed
//! through the deposit collector), then signs off-chain **cumulative** vouchers; the
//! receiver claims many vouchers in one transaction and settles; the payer gets the
//! unused rest back by a cooperative refund or a timed withdrawal. These are the JSON
//! shapes stock x402 software sends and expects (`@x402/evm` 2.27, Python `x402` 2.25):
//! amounts are decimal strings of `uint128`, `withdrawDelay` is a JSON number,
//! addresses are checksummed. The EIP-712 digests live in `x402-payer` (`channel`).
//!
//! ```
//! use x402_types::batch::{BatchPayload, parse_payload};
//! let json = serde_json::json!({
//!     "type": "voucher",
//!     "channelConfig": {
//!         "payer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
//!         "payerAuthorizer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
//!         "receiver": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
//!         "receiverAuthorizer": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
//!         "token": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
//!         "withdrawDelay": 900,
//!         "salt": "0x0000000000000000000000000000000000000000000000000000000000000001"
//!     },
//!     "voucher": {
//!         "channelId": "0x0000000000000000000000000000000000000000000000000000000000000002",
//!         "maxClaimableAmount": "10000",
//!         "signature": "0x1234"
//!     }
//! });
//! let BatchPayload::Voucher { voucher, .. } = parse_payload(json.as_object().unwrap()).unwrap() else {
//!     panic!("a voucher");
//! };
//! assert_eq!(voucher.max_claimable_amount, 10_000);
//! // uint128 overflows and negative or non-canonical numbers are refused, not wrapped.
//! let mut bad = json.clone();
//! bad["voucher"]["maxClaimableAmount"] = "340282366920938463463374607431768211456".into();
//! assert!(parse_payload(bad.as_object().unwrap()).is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::{Address, B256, Error, U256};

/// The scheme's name in `accepts` and payloads.
pub const BATCH_SETTLEMENT: &str = "batch-settlement";

/// `x402BatchSettlement`: the same address on every chain.
pub const SETTLEMENT_CONTRACT: Address = Address([
    0x40, 0x20, 0x07, 0x4e, 0x9d, 0xf2, 0xce, 0x1d, 0xee, 0x5a, 0x9c, 0x1b, 0x5c, 0x3f, 0x54, 0x1d,
    0x02, 0xa1, 0x00, 0x03,
]);
/// `ERC3009DepositCollector`: the `to` of a deposit's `ReceiveWithAuthorization`.
pub const ERC3009_DEPOSIT_COLLECTOR: Address = Address([
    0x40, 0x20, 0x80, 0x60, 0x89, 0x47, 0x0a, 0x89, 0x82, 0x6c, 0xb9, 0xfb, 0x1f, 0x40, 0x59, 0x15,
    0x0b, 0x55, 0x00, 0x04,
]);
/// Shortest withdrawal delay the contract accepts (15 minutes).
pub const MIN_WITHDRAW_DELAY: u64 = 900;
/// Longest withdrawal delay the contract accepts (30 days).
pub const MAX_WITHDRAW_DELAY: u64 = 2_592_000;
/// Largest signature accepted on the wire (EIP-1271 wallets sign long; EOAs sign 65 bytes).
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// A channel's immutable configuration; its EIP-712 hash is the channel id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelConfig {
    /// Whose deposit it is; refunds and withdrawals go back here.
    pub payer: Address,
    /// Who signs vouchers (zero: the payer, by EIP-1271).
    pub payer_authorizer: Address,
    /// Who is paid.
    pub receiver: Address,
    /// Who signs claim batches and refunds for the receiver.
    pub receiver_authorizer: Address,
    /// The ERC-20 token.
    pub token: Address,
    /// Seconds between `initiateWithdraw` and `finalizeWithdraw` (`uint40`).
    #[serde(deserialize_with = "de_u40")]
    pub withdraw_delay: u64,
    /// Distinguishes channels of the same parties.
    pub salt: B256,
}

/// A cumulative voucher as it travels: the channel, the signed maximum, the signature.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedVoucher {
    /// The channel id (EIP-712 digest of the config).
    pub channel_id: B256,
    /// The most the receiver may ever claim on this channel (`uint128`).
    #[serde(with = "dec_u128")]
    pub max_claimable_amount: u128,
    /// `payerAuthorizer`'s signature of `Voucher(channelId, maxClaimableAmount)`.
    pub signature: Bytes,
}

impl fmt::Debug for SignedVoucher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedVoucher")
            .field("channel_id", &self.channel_id)
            .field("max_claimable_amount", &self.max_claimable_amount)
            .finish_non_exhaustive()
    }
}

/// The ERC-3009 part of a deposit: what the collector needs besides the amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Erc3009Deposit {
    /// `validAfter` (unix seconds; the official client signs `"0"`).
    pub valid_after: U256,
    /// `validBefore` (unix seconds).
    pub valid_before: U256,
    /// The salt of the authorization nonce: `nonce = keccak256(abi.encode(channelId, salt))`.
    pub salt: B256,
    /// The payer's `ReceiveWithAuthorization` signature.
    pub signature: Bytes,
}

/// How a deposit is authorized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositAuthorization {
    /// ERC-3009 (`extra.assetTransferMethod` `"eip3009"`, the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erc3009_authorization: Option<Erc3009Deposit>,
    /// Permit2 (kept verbatim; not executed here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit2_authorization: Option<Value>,
}

/// A deposit: how much, and its authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deposit {
    /// Amount deposited (`uint128`).
    #[serde(with = "dec_u128")]
    pub amount: u128,
    /// Its authorization.
    pub authorization: DepositAuthorization,
}

/// A voucher as the contract's `claim` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimVoucher {
    /// The channel's configuration.
    pub channel: ChannelConfig,
    /// Its signed maximum.
    #[serde(with = "dec_u128")]
    pub max_claimable_amount: u128,
}

/// One row of a claim batch: a voucher, its signature, and the cumulative amount claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherClaim {
    /// The voucher.
    pub voucher: ClaimVoucher,
    /// The payer's signature of it.
    pub signature: Bytes,
    /// The cumulative total to claim (`<= maxClaimableAmount`).
    #[serde(with = "dec_u128")]
    pub total_claimed: u128,
}

/// The `payload` of a `batch-settlement` payment (and of the facilitator's settle forms),
/// discriminated by `type`.
#[allow(clippy::large_enum_variant)] // short-lived; boxing would allocate per parse
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum BatchPayload {
    /// Opens or tops up a channel and signs the first voucher with it.
    #[serde(rename_all = "camelCase")]
    Deposit {
        /// The channel.
        channel_config: ChannelConfig,
        /// The voucher paying this request.
        voucher: SignedVoucher,
        /// The deposit.
        deposit: Deposit,
    },
    /// Pays a request on a funded channel.
    #[serde(rename_all = "camelCase")]
    Voucher {
        /// The channel.
        channel_config: ChannelConfig,
        /// The voucher.
        voucher: SignedVoucher,
    },
    /// A cooperative close (client to server), or its execution (server to facilitator,
    /// with the nonce, the claims to make first and the authorizer's signatures).
    #[serde(rename_all = "camelCase")]
    Refund {
        /// The channel.
        channel_config: ChannelConfig,
        /// A zero-charge voucher (`maxClaimableAmount` = the charged total).
        voucher: SignedVoucher,
        /// How much to refund; absent: everything unclaimed.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "opt_dec_u128"
        )]
        amount: Option<u128>,
        /// The refund nonce (`refundNonce(channelId)`), facilitator form.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_nonce: Option<U256>,
        /// Claims executed before the refund, facilitator form.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claims: Option<Vec<VoucherClaim>>,
        /// The receiver authorizer's `Refund` signature, facilitator form.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refund_authorizer_signature: Option<Bytes>,
        /// The receiver authorizer's `ClaimBatch` signature, facilitator form.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim_authorizer_signature: Option<Bytes>,
    },
    /// Claims vouchers (server to facilitator).
    #[serde(rename_all = "camelCase")]
    Claim {
        /// The rows.
        claims: Vec<VoucherClaim>,
        /// The receiver authorizer's `ClaimBatch` signature; absent: the facilitator
        /// signs as the delegated authorizer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim_authorizer_signature: Option<Bytes>,
    },
    /// Sweeps claimed funds to the receiver (server to facilitator).
    #[serde(rename_all = "camelCase")]
    Settle {
        /// The receiver.
        receiver: Address,
        /// The token.
        token: Address,
    },
}

impl BatchPayload {
    /// The payload's `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            BatchPayload::Deposit { .. } => "deposit",
            BatchPayload::Voucher { .. } => "voucher",
            BatchPayload::Refund { .. } => "refund",
            BatchPayload::Claim { .. } => "claim",
            BatchPayload::Settle { .. } => "settle",
        }
    }

    /// The channel and voucher of a deposit, voucher or refund.
    pub fn channel(&self) -> Option<(&ChannelConfig, &SignedVoucher)> {
        match self {
            BatchPayload::Deposit {
                channel_config,
                voucher,
                ..
            }
            | BatchPayload::Voucher {
                channel_config,
                voucher,
            }
            | BatchPayload::Refund {
                channel_config,
                voucher,
                ..
            } => Some((channel_config, voucher)),
            _ => None,
        }
    }

    /// As a JSON object (the `payload` of a payment or facilitator request).
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }
}

/// Parses a `batch-settlement` payload object, with the path of what is wrong.
pub fn parse_payload(map: &Map<String, Value>) -> Result<BatchPayload, Error> {
    serde_json::from_value(Value::Object(map.clone())).map_err(|e| Error::Json {
        what: "batch-settlement payload",
        message: e.to_string(),
    })
}

/// A channel as the server (or the chain) sees it, in receipts and corrective 402s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelState {
    /// The channel id.
    pub channel_id: B256,
    /// Deposited and not withdrawn or refunded.
    #[serde(with = "dec_u128")]
    pub balance: u128,
    /// Claimed on chain (cumulative).
    #[serde(with = "dec_u128")]
    pub total_claimed: u128,
    /// When a pending withdrawal was initiated (unix seconds; 0: none).
    pub withdraw_requested_at: u64,
    /// The refund nonce (`uint256`).
    pub refund_nonce: U256,
    /// The server's charged total (cumulative), when the server sends it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_dec_u128"
    )]
    pub charged_cumulative_amount: Option<u128>,
}

/// The last voucher the server holds, in a corrective 402.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherState {
    /// Its signed maximum.
    #[serde(with = "dec_u128")]
    pub signed_max_claimable: u128,
    /// Its signature (the client checks it with its own voucher key).
    pub signature: Bytes,
}

/// The requirement's `extra` for `batch-settlement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchExtra {
    /// The token's EIP-712 name (for the deposit's authorization).
    pub name: String,
    /// The token's EIP-712 version.
    pub version: String,
    /// Who signs claims and refunds for the receiver.
    pub receiver_authorizer: Address,
    /// The channel's withdrawal delay (seconds).
    #[serde(deserialize_with = "de_u40")]
    pub withdraw_delay: u64,
    /// The least deposit the server asks for (a hint).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_dec_u128"
    )]
    pub min_deposit: Option<u128>,
    /// `"eip3009"` (default) or `"permit2"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_transfer_method: Option<String>,
    /// In a corrective 402: the server's view of the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_state: Option<ChannelState>,
    /// In a corrective 402: the last voucher the server holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher_state: Option<VoucherState>,
}

impl BatchExtra {
    /// Reads it from a requirement's `extra`.
    pub fn from_extra(extra: Option<&Value>) -> Result<Self, Error> {
        let v = extra.cloned().unwrap_or(Value::Null);
        serde_json::from_value(v).map_err(|e| Error::Json {
            what: "batch-settlement extra",
            message: e.to_string(),
        })
    }
}

/// The `extra` of a `batch-settlement` `PAYMENT-RESPONSE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchReceiptExtra {
    /// What this request was charged (absent on a refund's receipt).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_dec_u128"
    )]
    pub charged_amount: Option<u128>,
    /// The channel after it.
    pub channel_state: ChannelState,
}

/// Reasons of the scheme (`invalid_batch_settlement_evm_*`), spelled as the official SDK
/// spells them (x402 Python 2.25, `mechanisms/evm/batch_settlement/errors.py`): strings
/// are part of the wire contract. The facilitator (`x402-chain`) and the server
/// (`x402-server`) use these and no others.
pub mod reasons {
    /// The scheme of the payload or the requirement is not `batch-settlement`.
    pub const INVALID_SCHEME: &str = "invalid_batch_settlement_evm_scheme";
    /// The payload's network is not the requirement's.
    pub const NETWORK_MISMATCH: &str = "invalid_batch_settlement_evm_network_mismatch";
    /// A payload type the endpoint does not take (a voucher to `/settle`, a claim to `/verify`).
    pub const PAYLOAD_TYPE: &str = "invalid_batch_settlement_evm_payload_type";
    /// The client's cumulative total is not the server's (answered with a corrective 402).
    pub const CUMULATIVE_AMOUNT_MISMATCH: &str =
        "invalid_batch_settlement_evm_cumulative_amount_mismatch";
    /// Another request on the channel is being processed.
    pub const CHANNEL_BUSY: &str = "invalid_batch_settlement_evm_channel_busy";
    /// The charge exceeds what the voucher signs.
    pub const CHARGE_EXCEEDS_SIGNED_CUMULATIVE: &str =
        "invalid_batch_settlement_evm_charge_exceeds_signed_cumulative";
    /// The voucher's maximum exceeds the channel's balance.
    pub const CUMULATIVE_EXCEEDS_BALANCE: &str =
        "invalid_batch_settlement_evm_cumulative_exceeds_balance";
    /// The voucher's maximum is not above what was claimed.
    pub const CUMULATIVE_BELOW_CLAIMED: &str =
        "invalid_batch_settlement_evm_cumulative_below_claimed";
    /// The voucher's signature does not recover to the payer's authorizer.
    pub const VOUCHER_SIGNATURE: &str = "invalid_batch_settlement_evm_voucher_signature";
    /// A voucher payload (or the channel it names) is malformed, e.g. a zero payer.
    pub const VOUCHER_PAYLOAD: &str = "invalid_batch_settlement_evm_voucher_payload";
    /// The server knows no such channel and could not read it (server-emitted).
    pub const MISSING_CHANNEL: &str = "invalid_batch_settlement_evm_missing_channel";
    /// The channel holds no deposit on chain (the facilitator's answer to a voucher or
    /// refund of a channel never funded).
    pub const CHANNEL_NOT_FOUND: &str = "invalid_batch_settlement_evm_channel_not_found";
    /// The channel id is not the hash of the configuration.
    pub const CHANNEL_ID_MISMATCH: &str = "invalid_batch_settlement_evm_channel_id_mismatch";
    /// The channel's receiver is not the requirement's `payTo`.
    pub const RECEIVER_MISMATCH: &str = "invalid_batch_settlement_evm_receiver_mismatch";
    /// The channel's token is not the requirement's asset.
    pub const TOKEN_MISMATCH: &str = "invalid_batch_settlement_evm_token_mismatch";
    /// The channel's `receiverAuthorizer` is not the requirement's (or that is zero).
    pub const RECEIVER_AUTHORIZER_MISMATCH: &str =
        "invalid_batch_settlement_evm_receiver_authorizer_mismatch";
    /// The channel's `withdrawDelay` is not the requirement's.
    pub const WITHDRAW_DELAY_MISMATCH: &str =
        "invalid_batch_settlement_evm_withdraw_delay_mismatch";
    /// The withdrawal delay is outside the contract's range.
    pub const WITHDRAW_DELAY_OUT_OF_RANGE: &str =
        "invalid_batch_settlement_evm_withdraw_delay_out_of_range";
    /// A deposit payload is malformed (e.g. a deposit of zero).
    pub const DEPOSIT_PAYLOAD: &str = "invalid_batch_settlement_evm_deposit_payload";
    /// A deposit carries no ERC-3009 authorization (the only form executed here).
    pub const ERC3009_AUTHORIZATION_REQUIRED: &str =
        "invalid_batch_settlement_evm_erc3009_authorization_required";
    /// The deposit's `ReceiveWithAuthorization` is not signed by the payer (or unusable).
    pub const RECEIVE_AUTHORIZATION_SIGNATURE: &str =
        "invalid_batch_settlement_evm_receive_authorization_signature";
    /// The deposit's authorization is valid only later (`validAfter` in the future).
    pub const VALID_AFTER_IN_FUTURE: &str =
        "invalid_batch_settlement_evm_payload_authorization_valid_after";
    /// The deposit's authorization expired or is about to (`validBefore`).
    pub const VALID_BEFORE_EXPIRED: &str =
        "invalid_batch_settlement_evm_payload_authorization_valid_before";
    /// The payer's token balance does not cover the deposit.
    pub const INSUFFICIENT_BALANCE: &str = "invalid_batch_settlement_evm_insufficient_balance";
    /// The deposit call would revert (among others: its authorization is already used).
    pub const DEPOSIT_SIMULATION_FAILED: &str =
        "invalid_batch_settlement_evm_deposit_simulation_failed";
    /// The deposit was mined and reverted.
    pub const DEPOSIT_TRANSACTION_FAILED: &str =
        "invalid_batch_settlement_evm_deposit_transaction_failed";
    /// This facilitator is not the channel's receiverAuthorizer and no signature was given.
    pub const AUTHORIZER_ADDRESS_MISMATCH: &str =
        "invalid_batch_settlement_evm_authorizer_address_mismatch";
    /// A claim payload without rows, or rows naming different receiverAuthorizers.
    pub const CLAIM_PAYLOAD: &str = "invalid_batch_settlement_evm_claim_payload";
    /// The claim call would revert.
    pub const CLAIM_SIMULATION_FAILED: &str =
        "invalid_batch_settlement_evm_claim_simulation_failed";
    /// The claim was mined and reverted.
    pub const CLAIM_TRANSACTION_FAILED: &str =
        "invalid_batch_settlement_evm_claim_transaction_failed";
    /// Nothing is claimed and unsettled.
    pub const NOTHING_TO_SETTLE: &str = "invalid_batch_settlement_evm_nothing_to_settle";
    /// The settle call would revert.
    pub const SETTLE_SIMULATION_FAILED: &str =
        "invalid_batch_settlement_evm_settle_simulation_failed";
    /// The settle was mined and reverted.
    pub const SETTLE_TRANSACTION_FAILED: &str =
        "invalid_batch_settlement_evm_settle_transaction_failed";
    /// A refund payload is malformed or stale (e.g. its `refundNonce` is not the chain's).
    pub const REFUND_PAYLOAD: &str = "invalid_batch_settlement_evm_refund_payload";
    /// A refund of zero.
    pub const REFUND_AMOUNT_INVALID: &str = "invalid_batch_settlement_evm_refund_amount_invalid";
    /// Nothing is left to refund.
    pub const REFUND_NO_BALANCE: &str = "invalid_batch_settlement_evm_refund_no_balance";
    /// The refund call would revert.
    pub const REFUND_SIMULATION_FAILED: &str =
        "invalid_batch_settlement_evm_refund_simulation_failed";
    /// The refund was mined and reverted.
    pub const REFUND_TRANSACTION_FAILED: &str =
        "invalid_batch_settlement_evm_refund_transaction_failed";

    /// Every reason above (for tests and documentation).
    pub const ALL: &[&str] = &[
        INVALID_SCHEME,
        NETWORK_MISMATCH,
        PAYLOAD_TYPE,
        CUMULATIVE_AMOUNT_MISMATCH,
        CHANNEL_BUSY,
        CHARGE_EXCEEDS_SIGNED_CUMULATIVE,
        CUMULATIVE_EXCEEDS_BALANCE,
        CUMULATIVE_BELOW_CLAIMED,
        VOUCHER_SIGNATURE,
        VOUCHER_PAYLOAD,
        MISSING_CHANNEL,
        CHANNEL_NOT_FOUND,
        CHANNEL_ID_MISMATCH,
        RECEIVER_MISMATCH,
        TOKEN_MISMATCH,
        RECEIVER_AUTHORIZER_MISMATCH,
        WITHDRAW_DELAY_MISMATCH,
        WITHDRAW_DELAY_OUT_OF_RANGE,
        DEPOSIT_PAYLOAD,
        ERC3009_AUTHORIZATION_REQUIRED,
        RECEIVE_AUTHORIZATION_SIGNATURE,
        VALID_AFTER_IN_FUTURE,
        VALID_BEFORE_EXPIRED,
        INSUFFICIENT_BALANCE,
        DEPOSIT_SIMULATION_FAILED,
        DEPOSIT_TRANSACTION_FAILED,
        AUTHORIZER_ADDRESS_MISMATCH,
        CLAIM_PAYLOAD,
        CLAIM_SIMULATION_FAILED,
        CLAIM_TRANSACTION_FAILED,
        NOTHING_TO_SETTLE,
        SETTLE_SIMULATION_FAILED,
        SETTLE_TRANSACTION_FAILED,
        REFUND_PAYLOAD,
        REFUND_AMOUNT_INVALID,
        REFUND_NO_BALANCE,
        REFUND_SIMULATION_FAILED,
        REFUND_TRANSACTION_FAILED,
    ];
}

/// A variable-length byte string written as `0x` hex (signatures; at most
/// [`MAX_SIGNATURE_BYTES`]).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for Bytes {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let err = |reason: &'static str| Error::Bytes {
            input: s.chars().take(80).collect(),
            reason,
        };
        let body = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| err("missing 0x prefix"))?;
        if body.len() % 2 != 0 {
            return Err(err("odd number of hex digits"));
        }
        if body.len() / 2 > MAX_SIGNATURE_BYTES {
            return Err(err("longer than 4096 bytes"));
        }
        hex::decode(body).map(Bytes).map_err(|_| err("not hex"))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(&self.0))
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a canonical decimal `uint128`.
pub fn parse_u128(s: &str) -> Result<u128, Error> {
    let v = U256::from_dec_str(s)?;
    v.to_u128().ok_or_else(|| Error::Integer {
        input: s.chars().take(80).collect(),
        reason: crate::IntegerError::Overflow,
    })
}

fn de_u40<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v >= 1 << 40 {
        return Err(serde::de::Error::custom(
            "withdrawDelay does not fit uint40",
        ));
    }
    Ok(v)
}

/// Serde for `u128` as a canonical decimal string.
pub mod dec_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes as a decimal string.
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Deserializes a canonical decimal string that fits `uint128`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_u128(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_dec_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u128>, D::Error> {
        let s = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.map(|s| super::parse_u128(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Value {
        serde_json::json!({
            "payer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "payerAuthorizer": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
            "receiver": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            "receiverAuthorizer": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "token": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
            "withdrawDelay": 900,
            "salt": "0x0000000000000000000000000000000000000000000000000000000000000001"
        })
    }

    #[test]
    fn addresses_are_the_canonical_ones() {
        assert_eq!(
            SETTLEMENT_CONTRACT.to_string(),
            "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
        );
        assert_eq!(
            ERC3009_DEPOSIT_COLLECTOR.to_string(),
            "0x4020806089470a89826cB9fB1f4059150b550004"
        );
    }

    #[test]
    fn deposit_round_trips_in_the_official_shape() {
        let json = serde_json::json!({
            "type": "deposit",
            "channelConfig": config(),
            "voucher": { "channelId": format!("0x{}", "ab".repeat(32)), "maxClaimableAmount": "10000", "signature": format!("0x{}", "11".repeat(65)) },
            "deposit": { "amount": "100000", "authorization": { "erc3009Authorization":
                { "validAfter": "0", "validBefore": "1795699559", "salt": format!("0x{}", "22".repeat(32)), "signature": format!("0x{}", "33".repeat(65)) } } }
        });
        let p = parse_payload(json.as_object().unwrap()).unwrap();
        assert_eq!(p.kind(), "deposit");
        assert_eq!(Value::Object(p.to_map()), json);
    }

    #[test]
    fn refund_without_amount_refunds_everything() {
        let json = serde_json::json!({
            "type": "refund", "channelConfig": config(),
            "voucher": { "channelId": format!("0x{}", "ab".repeat(32)), "maxClaimableAmount": "0", "signature": "0x" }
        });
        let p = parse_payload(json.as_object().unwrap()).unwrap();
        let BatchPayload::Refund { amount, claims, .. } = &p else {
            panic!("refund")
        };
        assert_eq!((*amount, claims.is_none()), (None, true));
        assert_eq!(Value::Object(p.to_map()), json);
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let mut c = config();
        c["withdrawDelay"] = (1u64 << 40).into();
        let json = serde_json::json!({ "type": "voucher", "channelConfig": c,
            "voucher": { "channelId": format!("0x{}", "ab".repeat(32)), "maxClaimableAmount": "1", "signature": "0x" } });
        assert!(parse_payload(json.as_object().unwrap()).is_err());
        let unknown = serde_json::json!({ "type": "steal" });
        assert!(parse_payload(unknown.as_object().unwrap()).is_err());
        assert!("0x123".parse::<Bytes>().is_err());
        assert!("12".parse::<Bytes>().is_err());
        assert!(format!("0x{}", "00".repeat(4097)).parse::<Bytes>().is_err());
        assert!(parse_u128("-1").is_err());
        assert!(parse_u128("01").is_err());
        assert_eq!(parse_u128(&u128::MAX.to_string()).unwrap(), u128::MAX);
    }

    #[test]
    fn reasons_are_distinct_and_in_the_scheme_namespace() {
        let mut seen = std::collections::HashSet::new();
        for r in reasons::ALL {
            let tail = r
                .strip_prefix("invalid_batch_settlement_evm_")
                .unwrap_or_else(|| panic!("{r} is not an invalid_batch_settlement_evm_* reason"));
            assert!(
                tail.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{r}"
            );
            assert!(seen.insert(*r), "{r} listed twice");
        }
        assert_eq!(seen.len(), 38);
    }

    #[test]
    fn receipt_extra_shape() {
        let json = serde_json::json!({ "chargedAmount": "2500", "channelState": {
            "channelId": format!("0x{}", "ab".repeat(32)), "balance": "100000", "totalClaimed": "0",
            "withdrawRequestedAt": 0, "refundNonce": "0", "chargedCumulativeAmount": "22500" } });
        let r: BatchReceiptExtra = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(r.charged_amount, Some(2500));
        assert_eq!(serde_json::to_value(&r).unwrap(), json);
    }
}
