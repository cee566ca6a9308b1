//! The EIP-3009 token interface USDC offers (alloy `sol!` bindings), and the
//! test token's runtime bytecode.

// `sol!` generates one constructor argument per ABI parameter.
#![allow(clippy::too_many_arguments)]

use alloy::sol;

sol! {
    /// What x402 settlement uses of USDC (FiatToken v2): both
    /// `transferWithAuthorization` forms, `receiveWithAuthorization` (the
    /// batch-settlement deposit collector's), `authorizationState`, balances and
    /// the events. `mint` exists only on the test token.
    #[sol(rpc)]
    interface IEip3009Token {
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
        function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        function receiveWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function balanceOf(address account) external view returns (uint256);
        function mint(address to, uint256 value) external;
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
        event Transfer(address indexed from, address indexed to, uint256 value);
    }
}

/// Runtime bytecode of `contracts/TestUSDC.sol` as compiled by solc 0.8.37
/// (`contracts/compile.js`; a test checks it is what the source compiles to).
/// A test token for local chains only: anyone can mint.
pub const TEST_USDC_RUNTIME: &str = include_str!("../contracts/TestUSDC.runtime.hex");
