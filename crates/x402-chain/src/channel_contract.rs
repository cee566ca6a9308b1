//! The x402 `batch-settlement` channel contracts: their canonical addresses, the EIP-712
//! domain facts, `sol!` bindings of the settlement contract's interface, and the runtime
//! bytecode of our own implementation (`contracts/BatchSettlement.sol`), which
//! [`Anvil::install_batch_settlement`](crate::anvil::Anvil::install_batch_settlement) places at
//! the canonical addresses of a local chain.

// `sol!` generates one constructor argument per ABI parameter.
#![allow(clippy::too_many_arguments)]

use alloy::primitives::{Address, address};
use alloy::sol;

/// `x402BatchSettlement`, at the same address on every chain.
pub const BATCH_SETTLEMENT: Address = address!("0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003");

/// `ERC3009DepositCollector`: deposits by ERC-3009 `ReceiveWithAuthorization`.
pub const ERC3009_DEPOSIT_COLLECTOR: Address =
    address!("0x4020806089470a89826cB9fB1f4059150b550004");

/// The shortest `withdrawDelay` a channel may have (15 minutes), in seconds.
pub const MIN_WITHDRAW_DELAY: u64 = 900;

/// The longest `withdrawDelay` a channel may have (30 days), in seconds.
pub const MAX_WITHDRAW_DELAY: u64 = 2_592_000;

/// The EIP-712 domain name of channel ids, vouchers, refunds and claim batches.
pub const DOMAIN_NAME: &str = "x402 Batch Settlement";

/// The EIP-712 domain version.
pub const DOMAIN_VERSION: &str = "1";

/// Runtime bytecode of `X402BatchSettlement` in `contracts/BatchSettlement.sol`, compiled by
/// solc 0.8.37 (`contracts/compile.js`; a test checks it is what the source compiles to).
pub const BATCH_SETTLEMENT_RUNTIME: &str = include_str!("../contracts/BatchSettlement.runtime.hex");

/// Runtime bytecode of `ERC3009DepositCollector` in `contracts/BatchSettlement.sol`.
pub const DEPOSIT_COLLECTOR_RUNTIME: &str =
    include_str!("../contracts/DepositCollector.runtime.hex");

sol! {
    /// The `x402BatchSettlement` interface (functions, views, events) and our
    /// implementation's custom errors.
    #[sol(rpc, all_derives)]
    interface IBatchSettlement {
        struct ChannelConfig {
            address payer;
            address payerAuthorizer;
            address receiver;
            address receiverAuthorizer;
            address token;
            uint40 withdrawDelay;
            bytes32 salt;
        }
        struct Voucher {
            ChannelConfig channel;
            uint128 maxClaimableAmount;
        }
        struct VoucherClaim {
            Voucher voucher;
            bytes signature;
            uint128 totalClaimed;
        }

        function deposit(ChannelConfig config, uint128 amount, address collector, bytes collectorData) external;
        function claim(VoucherClaim[] claims) external;
        function claimWithSignature(VoucherClaim[] claims, bytes authorizerSignature) external;
        function settle(address receiver, address token) external;
        function initiateWithdraw(ChannelConfig config, uint128 amount) external;
        function finalizeWithdraw(ChannelConfig config) external;
        function refund(ChannelConfig config, uint128 amount) external;
        function refundWithSignature(ChannelConfig config, uint128 amount, uint256 nonce, bytes receiverAuthorizerSignature) external;
        function multicall(bytes[] data) external returns (bytes[] results);

        function channels(bytes32 channelId) external view returns (uint128 balance, uint128 totalClaimed);
        function pendingWithdrawals(bytes32 channelId) external view returns (uint128 amount, uint40 initiatedAt);
        function refundNonce(bytes32 channelId) external view returns (uint256);
        function receivers(address receiver, address token) external view returns (uint128 totalClaimed, uint128 totalSettled);
        function getChannelId(ChannelConfig config) external view returns (bytes32);
        function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) external view returns (bytes32);
        function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) external view returns (bytes32);
        function getClaimBatchDigest(VoucherClaim[] claims) external view returns (bytes32);
        function DOMAIN_SEPARATOR() external view returns (bytes32);

        event ChannelCreated(bytes32 indexed channelId, ChannelConfig config);
        event ChannelClosed(bytes32 indexed channelId, ChannelConfig config);
        event Deposited(bytes32 indexed channelId, address indexed sender, uint128 amount, uint128 newBalance);
        event Claimed(bytes32 indexed channelId, address indexed sender, uint128 claimAmount, uint128 newTotalClaimed);
        event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);
        event Refunded(bytes32 indexed channelId, address indexed sender, uint128 amount);
        event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 finalizeAfter);
        event WithdrawFinalized(bytes32 indexed channelId, address indexed sender, uint128 amount);

        error Reentrancy();
        error InvalidChannelConfig();
        error WithdrawDelayOutOfRange(uint40 withdrawDelay);
        error ZeroAmount();
        error DepositAmountMismatch(uint256 expected, uint256 received);
        error EmptyClaimBatch();
        error Unauthorized();
        error InvalidSignature();
        error ReceiverAuthorizerMismatch();
        error ClaimExceedsVoucher(bytes32 channelId, uint128 totalClaimed, uint128 maxClaimableAmount);
        error ClaimExceedsBalance(bytes32 channelId, uint128 totalClaimed, uint128 balance);
        error RefundNonceMismatch(bytes32 channelId, uint256 expected, uint256 given);
        error WithdrawAlreadyPending(bytes32 channelId);
        error NoPendingWithdrawal(bytes32 channelId);
        error WithdrawNotReady(bytes32 channelId, uint256 finalizeAfter);
        error TransferFailed(address token, address to, uint256 amount);
    }
}
