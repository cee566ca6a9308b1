#!/usr/bin/env python3
"""Generates EIP-3009 TransferWithAuthorization vectors with eth-account, an
implementation independent of ours. Deterministic: keys, nonces and amounts
come from a seeded generator; eth-account signs with RFC 6979 like k256.

Rerun: pip install eth-account==0.14.0 && python3 make_vectors.py > eip3009.json
"""
import json
import random

from eth_account import Account
from eth_account.messages import encode_typed_data

DOMAINS = [
    ("USDC", "2", 84532, "0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
    ("USD Coin", "2", 8453, "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
    ("USD Coin", "2", 137, "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359"),
    ("USD Coin", "2", 43114, "0xB97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E"),
    ("USD Coin", "2", 42161, "0xaf88d065e77c8cC2239327C5EDb3A432268e5831"),
    ("Custom Token", "1", 1, "0x0000000000000000000000000000000000000001"),
]

TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "TransferWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ],
}

rng = random.Random(402)
out = []
for i in range(24):
    key = "0x" + "%064x" % rng.randrange(1, 2**255)
    acct = Account.from_key(key)
    name, version, chain, contract = DOMAINS[i % len(DOMAINS)]
    to = Account.from_key("0x" + "%064x" % rng.randrange(1, 2**255)).address
    # Mix small values, u64-sized and full 256-bit values.
    value = [rng.randrange(0, 10**7), rng.randrange(0, 2**64), rng.randrange(0, 2**256)][i % 3]
    valid_after = rng.randrange(0, 2**32)
    valid_before = valid_after + rng.randrange(1, 10**6) if i % 4 else 2**256 - 1
    nonce = "0x" + "%064x" % rng.randrange(0, 2**256)
    message = {
        "from": acct.address,
        "to": to,
        "value": value,
        "validAfter": valid_after,
        "validBefore": valid_before,
        "nonce": bytes.fromhex(nonce[2:]),
    }
    domain = {"name": name, "version": version, "chainId": chain, "verifyingContract": contract}
    full = {"types": TYPES, "primaryType": "TransferWithAuthorization", "domain": domain, "message": message}
    signable = encode_typed_data(full_message=full)
    signed = Account.sign_message(signable, key)
    # signable.header is the domain separator; signable.body the struct hash.
    out.append({
        "privateKey": key,
        "address": acct.address,
        "domain": {"name": name, "version": version, "chainId": chain, "verifyingContract": contract},
        "authorization": {
            "from": acct.address,
            "to": to,
            "value": str(value),
            "validAfter": str(valid_after),
            "validBefore": str(valid_before),
            "nonce": nonce,
        },
        "domainSeparator": "0x" + signable.header.hex(),
        "digest": "0x" + signed.message_hash.hex(),
        "signature": "0x" + signed.signature.hex(),
    })

print(json.dumps(out, indent=1))
