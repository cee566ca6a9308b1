//! EIP-712 hashing of the one fixed EIP-3009 type, written out.
//!
//! `digest = keccak256(0x19 0x01 || domainSeparator || hashStruct(message))`
//! where the domain is `EIP712Domain(string name,string version,uint256
//! chainId,address verifyingContract)` and the message is
//! `TransferWithAuthorization(address from,address to,uint256 value,uint256
//! validAfter,uint256 validBefore,bytes32 nonce)`.

use x402_types::{Address, Authorization, U256, keccak256};

/// `keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")`.
pub fn domain_typehash() -> [u8; 32] {
    keccak256(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
}

/// `keccak256("TransferWithAuthorization(...)")` = `0x7c7c6cdb...2267`.
pub fn transfer_typehash() -> [u8; 32] {
    keccak256(
        b"TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)",
    )
}

/// The EIP-712 domain of a token contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// `name` (for USDC: `"USD Coin"` or `"USDC"` depending on the deployment).
    pub name: String,
    /// `version` (`"2"` for USDC).
    pub version: String,
    /// Chain id.
    pub chain_id: u64,
    /// The token contract.
    pub verifying_contract: Address,
}

impl Domain {
    /// `hashStruct(domain)`.
    pub fn separator(&self) -> [u8; 32] {
        let mut buf = [0u8; 32 * 5];
        buf[..32].copy_from_slice(&domain_typehash());
        buf[32..64].copy_from_slice(&keccak256(self.name.as_bytes()));
        buf[64..96].copy_from_slice(&keccak256(self.version.as_bytes()));
        buf[96..128].copy_from_slice(&U256::from_u64(self.chain_id).to_be_bytes());
        buf[128..].copy_from_slice(&self.verifying_contract.to_word());
        keccak256(&buf)
    }
}

/// `hashStruct(TransferWithAuthorization)`: the typehash and six 32-byte words.
pub fn struct_hash(auth: &Authorization) -> [u8; 32] {
    struct_hash_with(&transfer_typehash(), auth)
}

/// `hashStruct` of an EIP-3009 message of the given type (`TransferWithAuthorization`
/// or `ReceiveWithAuthorization`: the same six fields).
pub fn struct_hash_with(typehash: &[u8; 32], auth: &Authorization) -> [u8; 32] {
    let mut buf = [0u8; 32 * 7];
    buf[..32].copy_from_slice(typehash);
    buf[32..64].copy_from_slice(&auth.from.to_word());
    buf[64..96].copy_from_slice(&auth.to.to_word());
    buf[96..128].copy_from_slice(&auth.value.atomic().to_be_bytes());
    buf[128..160].copy_from_slice(&auth.valid_after.to_be_bytes());
    buf[160..192].copy_from_slice(&auth.valid_before.to_be_bytes());
    buf[192..].copy_from_slice(auth.nonce.as_bytes());
    keccak256(&buf)
}

/// The digest that is signed.
pub fn digest(domain_separator: &[u8; 32], auth: &Authorization) -> [u8; 32] {
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(domain_separator);
    buf[34..].copy_from_slice(&struct_hash(auth));
    keccak256(&buf)
}
