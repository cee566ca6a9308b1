// SPDX-License-Identifier: MIT
// x402 `batch-settlement` payment channels for local chains (anvil): our own implementation of
// the interface and semantics documented in the x402 specification
// (specs/schemes/batch-settlement/scheme_batch_settlement_evm.md), written from that text.
//
// Both contracts have no constructor state and no immutables, so they can be placed at their
// canonical addresses with `anvil_setCode`:
//   X402BatchSettlement      0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003
//   ERC3009DepositCollector  0x4020806089470a89826cB9fB1f4059150b550004
// The EIP-712 domain {name "x402 Batch Settlement", version "1", chainId, verifyingContract} is
// computed on every use from block.chainid and address(this).
//
// Model: a channel is identified by the EIP-712 digest of its ChannelConfig. `balance` is what
// the payer deposited minus what was refunded or withdrawn; `totalClaimed` is the cumulative
// amount the receiver claimed with payer-signed vouchers (it stays part of `balance`, held for
// the receiver). Claims are bookkeeping: `settle(receiver, token)` sweeps every claimed and not
// yet settled amount of a receiver in one token transfer. What is left for the payer is always
// `balance - totalClaimed` (cooperative refund, or the timed withdrawal).
//
// Events: ChannelCreated on a deposit into a channel without state (balance and totalClaimed
// both 0); ChannelClosed when a refund or a finalized withdrawal leaves nothing unclaimed
// (balance == totalClaimed). A refund capped to 0 only consumes its nonce (no Refunded event).
//
// The deposit collector interface (ours; only `deposit`'s signature is part of the wire):
//   interface IDepositCollector {
//       // Called by X402BatchSettlement.deposit (and only by it). Pulls `amount` of `token` from
//       // `payer` as `collectorData` authorizes, for the channel `channelId`, and transfers it
//       // to the settlement contract (msg.sender) before returning. The settlement contract
//       // checks that its token balance rose by exactly `amount`.
//       function collect(address payer, address token, uint256 amount, bytes32 channelId,
//                        bytes calldata collectorData) external;
//   }
// ERC3009DepositCollector: collectorData = abi.encode(uint256 validAfter, uint256 validBefore,
// uint256 salt, bytes signature); it calls the token's
// receiveWithAuthorization(payer, collector, amount, validAfter, validBefore,
// keccak256(abi.encode(channelId, salt)), signature), then transfers `amount` to the settlement
// contract. The nonce binds the payer's authorization to one channel.
pragma solidity 0.8.37;

interface IERC20Balance {
    function balanceOf(address account) external view returns (uint256);
}

interface IERC3009Receive {
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external;
}

interface IDepositCollector {
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external;
}

error TransferFailed(address token, address to, uint256 amount);

/// ERC-20 transfer that accepts tokens returning `true` or nothing.
function safeTransfer(address token, address to, uint256 amount) {
    (bool ok, bytes memory ret) = token.call(abi.encodeWithSelector(0xa9059cbb, to, amount));
    bool good = ok && (ret.length == 0 ? token.code.length > 0 : ret.length >= 32 && abi.decode(ret, (bool)));
    if (!good) revert TransferFailed(token, to, amount);
}

contract X402BatchSettlement {
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
        uint128 totalClaimed; // cumulative
    }

    struct ChannelState {
        uint128 balance;
        uint128 totalClaimed;
    }

    struct PendingWithdrawal {
        uint128 amount;
        uint40 initiatedAt;
    }

    struct ReceiverState {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    uint40 public constant MIN_WITHDRAW_DELAY = 900; // 15 minutes
    uint40 public constant MAX_WITHDRAW_DELAY = 2_592_000; // 30 days

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("x402 Batch Settlement");
    bytes32 private constant VERSION_HASH = keccak256("1");
    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");
    bytes32 public constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    bytes32 public constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );
    // secp256k1n / 2: larger s values are malleable twins.
    uint256 private constant HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    mapping(bytes32 => ChannelState) public channels;
    mapping(bytes32 => PendingWithdrawal) public pendingWithdrawals;
    mapping(bytes32 => uint256) public refundNonce;
    mapping(address => mapping(address => ReceiverState)) public receivers;

    bool private transient _entered;

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

    modifier nonReentrant() {
        if (_entered) revert Reentrancy();
        _entered = true;
        _;
        _entered = false;
    }

    // ---------------------------------------------------------------- deposit

    /// Funds the channel of `config` with `amount`, pulled from the payer by `collector`.
    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        nonReentrant
    {
        if (
            config.payer == address(0) || config.receiver == address(0) || config.receiverAuthorizer == address(0)
                || config.token == address(0)
        ) revert InvalidChannelConfig();
        if (config.withdrawDelay < MIN_WITHDRAW_DELAY || config.withdrawDelay > MAX_WITHDRAW_DELAY) {
            revert WithdrawDelayOutOfRange(config.withdrawDelay);
        }
        if (amount == 0) revert ZeroAmount();
        bytes32 channelId = getChannelId(config);
        ChannelState storage ch = channels[channelId];
        bool isNew = ch.balance == 0 && ch.totalClaimed == 0;

        uint256 before = IERC20Balance(config.token).balanceOf(address(this));
        IDepositCollector(collector).collect(config.payer, config.token, amount, channelId, collectorData);
        uint256 after_ = IERC20Balance(config.token).balanceOf(address(this));
        if (after_ < before || after_ - before != amount) {
            revert DepositAmountMismatch(amount, after_ < before ? 0 : after_ - before);
        }

        uint128 newBalance = ch.balance + amount;
        ch.balance = newBalance;
        if (isNew) emit ChannelCreated(channelId, config);
        emit Deposited(channelId, msg.sender, amount, newBalance);
    }

    // ---------------------------------------------------------------- claims

    /// Claims vouchers; the caller is each channel's receiver or receiverAuthorizer.
    function claim(VoucherClaim[] calldata claims) external nonReentrant {
        if (claims.length == 0) revert EmptyClaimBatch();
        for (uint256 i; i < claims.length; ++i) {
            ChannelConfig calldata c = claims[i].voucher.channel;
            if (msg.sender != c.receiver && msg.sender != c.receiverAuthorizer) revert Unauthorized();
            _claim(claims[i], getChannelId(c));
        }
    }

    /// Claims vouchers on the strength of one receiverAuthorizer's ClaimBatch signature; anyone
    /// may send it. Every row must name the same receiverAuthorizer.
    function claimWithSignature(VoucherClaim[] calldata claims, bytes calldata authorizerSignature)
        external
        nonReentrant
    {
        uint256 n = claims.length;
        if (n == 0) revert EmptyClaimBatch();
        address authorizer = claims[0].voucher.channel.receiverAuthorizer;
        bytes32[] memory ids = new bytes32[](n);
        bytes32[] memory entries = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            if (claims[i].voucher.channel.receiverAuthorizer != authorizer) revert ReceiverAuthorizerMismatch();
            ids[i] = getChannelId(claims[i].voucher.channel);
            entries[i] = _claimEntryHash(ids[i], claims[i]);
        }
        if (!_isValidEcdsa(authorizer, _batchDigest(entries), authorizerSignature)) revert InvalidSignature();
        for (uint256 i; i < n; ++i) {
            _claim(claims[i], ids[i]);
        }
    }

    function _claim(VoucherClaim calldata c, bytes32 channelId) internal {
        ChannelState storage ch = channels[channelId];
        uint128 total = c.totalClaimed;
        uint128 previous = ch.totalClaimed;
        if (total <= previous) return; // already claimed: a replay is a no-op
        uint128 max = c.voucher.maxClaimableAmount;
        if (total > max) revert ClaimExceedsVoucher(channelId, total, max);
        if (total > ch.balance) revert ClaimExceedsBalance(channelId, total, ch.balance);
        _checkVoucherSignature(c.voucher.channel, getVoucherDigest(channelId, max), c.signature);
        uint128 delta = total - previous;
        ch.totalClaimed = total;
        receivers[c.voucher.channel.receiver][c.voucher.channel.token].totalClaimed += delta;
        emit Claimed(channelId, msg.sender, delta, total);
    }

    function _checkVoucherSignature(ChannelConfig calldata config, bytes32 digest, bytes calldata signature)
        internal
        view
    {
        bool ok = config.payerAuthorizer != address(0)
            ? _isValidEcdsa(config.payerAuthorizer, digest, signature)
            : _isValidErc1271(config.payer, digest, signature);
        if (!ok) revert InvalidSignature();
    }

    // ---------------------------------------------------------------- settle

    /// Transfers to `receiver` everything claimed for it in `token` and not yet settled.
    function settle(address receiver, address token) external nonReentrant {
        ReceiverState storage r = receivers[receiver][token];
        uint128 amount = r.totalClaimed - r.totalSettled;
        if (amount == 0) return;
        r.totalSettled = r.totalClaimed;
        safeTransfer(token, receiver, amount);
        emit Settled(receiver, token, msg.sender, amount);
    }

    // ---------------------------------------------------------------- withdrawal

    /// Starts the payer's timed withdrawal of up to `amount`; one at a time per channel.
    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.payer && msg.sender != config.payerAuthorizer) revert Unauthorized();
        if (amount == 0) revert ZeroAmount();
        bytes32 channelId = getChannelId(config);
        PendingWithdrawal storage w = pendingWithdrawals[channelId];
        if (w.initiatedAt != 0) revert WithdrawAlreadyPending(channelId);
        uint40 now_ = uint40(block.timestamp);
        w.amount = amount;
        w.initiatedAt = now_;
        emit WithdrawInitiated(channelId, amount, now_ + config.withdrawDelay);
    }

    /// Pays the pending withdrawal to the payer once `withdrawDelay` has passed, capped to what
    /// is not claimed (balance - totalClaimed). Anyone may send it.
    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        bytes32 channelId = getChannelId(config);
        PendingWithdrawal memory w = pendingWithdrawals[channelId];
        if (w.initiatedAt == 0) revert NoPendingWithdrawal(channelId);
        uint256 finalizeAfter = uint256(w.initiatedAt) + config.withdrawDelay;
        if (block.timestamp < finalizeAfter) revert WithdrawNotReady(channelId, finalizeAfter);
        delete pendingWithdrawals[channelId];
        ChannelState storage ch = channels[channelId];
        uint128 unclaimed = ch.balance - ch.totalClaimed;
        uint128 amount = w.amount < unclaimed ? w.amount : unclaimed;
        if (amount > 0) {
            ch.balance -= amount;
            safeTransfer(config.token, config.payer, amount);
        }
        emit WithdrawFinalized(channelId, msg.sender, amount);
        if (ch.balance == ch.totalClaimed) emit ChannelClosed(channelId, config);
    }

    // ---------------------------------------------------------------- refund

    /// Cooperative refund by the receiver or its receiverAuthorizer.
    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert Unauthorized();
        _refund(config, getChannelId(config), amount);
    }

    /// Cooperative refund on the strength of the receiverAuthorizer's Refund signature for the
    /// channel's current refund nonce; anyone may send it.
    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 channelId = getChannelId(config);
        uint256 expected = refundNonce[channelId];
        if (nonce != expected) revert RefundNonceMismatch(channelId, expected, nonce);
        if (!_isValidEcdsa(
                config.receiverAuthorizer, getRefundDigest(channelId, nonce, amount), receiverAuthorizerSignature
            )) revert InvalidSignature();
        _refund(config, channelId, amount);
    }

    function _refund(ChannelConfig calldata config, bytes32 channelId, uint128 amount) internal {
        if (amount == 0) revert ZeroAmount();
        ++refundNonce[channelId];
        ChannelState storage ch = channels[channelId];
        uint128 unclaimed = ch.balance - ch.totalClaimed;
        uint128 refunded = amount < unclaimed ? amount : unclaimed;
        if (refunded == 0) return;
        uint128 newBalance = ch.balance - refunded;
        ch.balance = newBalance;
        PendingWithdrawal storage w = pendingWithdrawals[channelId];
        if (w.initiatedAt != 0) {
            if (w.amount <= refunded || newBalance == ch.totalClaimed) delete pendingWithdrawals[channelId];
            else w.amount -= refunded;
        }
        safeTransfer(config.token, config.payer, refunded);
        emit Refunded(channelId, msg.sender, refunded);
        if (newBalance == ch.totalClaimed) emit ChannelClosed(channelId, config);
    }

    // ---------------------------------------------------------------- multicall

    /// Runs each call on this contract in order (delegatecall to self); any revert reverts all.
    function multicall(bytes[] calldata data) external returns (bytes[] memory results) {
        results = new bytes[](data.length);
        for (uint256 i; i < data.length; ++i) {
            (bool ok, bytes memory ret) = address(this).delegatecall(data[i]);
            if (!ok) {
                assembly {
                    revert(add(ret, 0x20), mload(ret))
                }
            }
            results[i] = ret;
        }
    }

    // ---------------------------------------------------------------- EIP-712 views

    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// EIP-5267.
    function eip712Domain()
        external
        view
        returns (
            bytes1 fields,
            string memory name,
            string memory version,
            uint256 chainId,
            address verifyingContract,
            bytes32 salt,
            uint256[] memory extensions
        )
    {
        return (hex"0f", "x402 Batch Settlement", "1", block.chainid, address(this), bytes32(0), new uint256[](0));
    }

    /// The channel id: the full EIP-712 digest of the ChannelConfig.
    function getChannelId(ChannelConfig calldata config) public view returns (bytes32) {
        return _typedDigest(
            keccak256(
                abi.encode(
                    CHANNEL_CONFIG_TYPEHASH,
                    config.payer,
                    config.payerAuthorizer,
                    config.receiver,
                    config.receiverAuthorizer,
                    config.token,
                    config.withdrawDelay,
                    config.salt
                )
            )
        );
    }

    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) public view returns (bytes32) {
        return _typedDigest(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, maxClaimableAmount)));
    }

    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) public view returns (bytes32) {
        return _typedDigest(keccak256(abi.encode(REFUND_TYPEHASH, channelId, nonce, amount)));
    }

    function getClaimBatchDigest(VoucherClaim[] calldata claims) external view returns (bytes32) {
        bytes32[] memory entries = new bytes32[](claims.length);
        for (uint256 i; i < claims.length; ++i) {
            entries[i] = _claimEntryHash(getChannelId(claims[i].voucher.channel), claims[i]);
        }
        return _batchDigest(entries);
    }

    function _claimEntryHash(bytes32 channelId, VoucherClaim calldata c) internal pure returns (bytes32) {
        return keccak256(abi.encode(CLAIM_ENTRY_TYPEHASH, channelId, c.voucher.maxClaimableAmount, c.totalClaimed));
    }

    function _batchDigest(bytes32[] memory entryHashes) internal view returns (bytes32) {
        return _typedDigest(keccak256(abi.encode(CLAIM_BATCH_TYPEHASH, keccak256(abi.encodePacked(entryHashes)))));
    }

    function _typedDigest(bytes32 structHash) internal view returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", DOMAIN_SEPARATOR(), structHash));
    }

    // ---------------------------------------------------------------- signatures

    /// 65-byte (r, s, v) secp256k1 signature by `signer`, v in {27, 28}, low s.
    function _isValidEcdsa(address signer, bytes32 digest, bytes calldata signature) internal pure returns (bool) {
        if (signer == address(0) || signature.length != 65) return false;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > HALF_N || (v != 27 && v != 28)) return false;
        return ecrecover(digest, v, r, s) == signer;
    }

    /// EIP-1271: `signer` is a contract that says the signature is its own.
    function _isValidErc1271(address signer, bytes32 digest, bytes calldata signature) internal view returns (bool) {
        (bool ok, bytes memory ret) = signer.staticcall(abi.encodeWithSelector(0x1626ba7e, digest, signature));
        return ok && ret.length >= 32 && bytes4(abi.decode(ret, (bytes32))) == 0x1626ba7e;
    }
}

/// Pulls a deposit with the payer's ERC-3009 ReceiveWithAuthorization and hands it to the
/// settlement contract; only X402BatchSettlement.deposit may call it.
contract ERC3009DepositCollector is IDepositCollector {
    address public constant SETTLEMENT = 0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003;

    error OnlySettlement();

    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata collectorData)
        external
    {
        if (msg.sender != SETTLEMENT) revert OnlySettlement();
        (uint256 validAfter, uint256 validBefore, uint256 salt, bytes memory signature) =
            abi.decode(collectorData, (uint256, uint256, uint256, bytes));
        IERC3009Receive(token).receiveWithAuthorization(
            payer, address(this), amount, validAfter, validBefore, keccak256(abi.encode(channelId, salt)), signature
        );
        safeTransfer(token, SETTLEMENT, amount);
    }
}
