#!/usr/bin/env python3
"""Known answers for the x402 `batch-settlement` scheme, computed with the
official x402 Python SDK (package `x402` 2.25.0, x402.mechanisms.evm.batch_settlement)
and cross-checked with eth-account's `encode_typed_data` as a second EIP-712
implementation. Prints ONE JSON object; each entry names its `source`.

Run:  PYTHONPATH=/work/main/target/tools/py DEV_KEY=0x... python3 batch_vectors.py
(DEV_KEY is anvil's first development key, atomicstream-testkit's DEV_KEY;
the Rust test passes it, so the literal lives in one place.)
(`cargo xtask tools` installs the SDK there.) Exits 1 when a check fails:
every signature is recovered from the printed digest and must give the
expected signer; SDK and eth-account digests must agree.

Determinism: ECDSA is RFC 6979 (eth-account). The SDK's deposit builder reads
a random ERC-3009 salt (`create_nonce`) and the clock (`time.time`); the script
patches both, in the module `...batch_settlement.client.eip3009` only, to give
salt 0x..2a and validBefore 1795699559 (= patched now 1795699259 + 300 s).
"""

import base64
import os
import importlib
import json
import sys
import types

try:
    from eth_abi import decode as abi_decode
    from eth_abi import encode as abi_encode
    from eth_account import Account
    from eth_account.messages import encode_typed_data
    from eth_keys import keys as eth_keys
    from eth_utils import keccak

    from x402 import x402ClientSync
    from x402.mechanisms.evm.batch_settlement import ChannelConfig, VoucherClaim
    from x402.mechanisms.evm.batch_settlement import compute_channel_id
    from x402.mechanisms.evm.batch_settlement.authorizer_signer import (
        LocalAuthorizerSigner,
        sign_claim_batch,
        sign_refund,
    )
    from x402.mechanisms.evm.batch_settlement.client import (
        BatchSettlementEvmScheme,
        BatchSettlementEvmSchemeOptions,
        RefundOptions,
        sign_voucher,
    )
    from x402.mechanisms.evm.batch_settlement.client.refund import _RefundResponse
    from x402.mechanisms.evm.batch_settlement.constants import (
        CHANNEL_CONFIG_TYPES,
        CLAIM_BATCH_TYPES,
        RECEIVE_AUTHORIZATION_TYPES,
        REFUND_TYPES,
        VOUCHER_TYPES,
    )
    from x402.mechanisms.evm.batch_settlement.encoding import (
        build_erc3009_collector_data,
        build_erc3009_deposit_nonce,
    )
    from x402.mechanisms.evm.batch_settlement.server import storage as server_storage
    from x402.mechanisms.evm.batch_settlement.server.channel_manager_common import (
        build_claim_payment_payload,
        build_payment_requirements,
        build_settle_payment_payload,
    )
    from x402.mechanisms.evm.batch_settlement.server.scheme import (
        BatchSettlementEvmScheme as ServerScheme,
    )
    from x402.mechanisms.evm.batch_settlement.server.scheme import (
        BatchSettlementEvmSchemeServerConfig,
        BatchSettlementRequestContext,
    )
    from x402.mechanisms.evm.batch_settlement.server.settle import (
        handle_enrich_settlement_payload,
    )
    from x402.mechanisms.evm.signers import EthAccountSigner
    from x402.schemas import (
        PaymentPayload,
        PaymentRequired,
        PaymentRequirements,
        ResourceInfo,
        SettleResponse,
    )
    from x402.schemas.hooks import PaymentResponseContext, SettleContext
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(
        f"batch_vectors.py: cannot import the x402 SDK or eth-account ({e}); "
        "run `cargo xtask tools` and set PYTHONPATH=target/tools/py"
    )

# ---------------------------------------------------------------- fixed inputs
CHAIN_ID = 84532
NETWORK = f"eip155:{CHAIN_ID}"
BATCH = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
COLLECTOR = "0x4020806089470a89826cB9fB1f4059150b550004"
TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
RECEIVER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
KEY0 = os.environ.get("DEV_KEY") or sys.exit(
    "batch_vectors.py: set DEV_KEY to anvil's first development key (atomicstream-testkit's DEV_KEY)"
)
KEY2 = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
PAYER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
RECEIVER_AUTHORIZER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
WITHDRAW_DELAY = 900
SALT1 = "0x" + "00" * 31 + "01"
SALT2 = "0x" + "00" * 31 + "02"
DEPOSIT_SALT = "0x" + "00" * 31 + "2a"
UINT128_MAX = 2**128 - 1
DEPOSIT_AMOUNT = 100000
VALID_BEFORE = 1795699559
MAX_TIMEOUT = 300
PATCHED_NOW = VALID_BEFORE - MAX_TIMEOUT
REQUEST_AMOUNT = "10000"
RESOURCE_URL = "http://127.0.0.1:4021/streams/demo/renew"

FAILURES = []


def check(ok, what):
    if not ok:
        FAILURES.append(what)


def hx(b):
    return "0x" + bytes(b).hex()


# ------------------------------------------- independent EIP-712 (eth-account)
# Types written out from the spec (../shared/spec/batch-settlement.md section 3),
# not taken from the SDK; digests use eth-account's full_message path.
DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
SPEC_TYPES = {
    "ChannelConfig": [
        {"name": "payer", "type": "address"},
        {"name": "payerAuthorizer", "type": "address"},
        {"name": "receiver", "type": "address"},
        {"name": "receiverAuthorizer", "type": "address"},
        {"name": "token", "type": "address"},
        {"name": "withdrawDelay", "type": "uint40"},
        {"name": "salt", "type": "bytes32"},
    ],
    "Voucher": [
        {"name": "channelId", "type": "bytes32"},
        {"name": "maxClaimableAmount", "type": "uint128"},
    ],
    "Refund": [
        {"name": "channelId", "type": "bytes32"},
        {"name": "nonce", "type": "uint256"},
        {"name": "amount", "type": "uint128"},
    ],
    "ClaimBatch": [{"name": "claims", "type": "ClaimEntry[]"}],
    "ClaimEntry": [
        {"name": "channelId", "type": "bytes32"},
        {"name": "maxClaimableAmount", "type": "uint128"},
        {"name": "totalClaimed", "type": "uint128"},
    ],
    "ReceiveWithAuthorization": [
        {"name": "from", "type": "address"},
        {"name": "to", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "validAfter", "type": "uint256"},
        {"name": "validBefore", "type": "uint256"},
        {"name": "nonce", "type": "bytes32"},
    ],
}
BATCH_DOMAIN = {
    "name": "x402 Batch Settlement",
    "version": "1",
    "chainId": CHAIN_ID,
    "verifyingContract": BATCH,
}
TOKEN_DOMAIN = {"name": "USDC", "version": "2", "chainId": CHAIN_ID, "verifyingContract": TOKEN}


def digest_of(signable):
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def spec_digest(primary, message, domain=BATCH_DOMAIN):
    """EIP-712 digest through eth-account's full_message parser."""
    type_map = {"EIP712Domain": DOMAIN_TYPE, primary: SPEC_TYPES[primary]}
    if primary == "ClaimBatch":
        type_map["ClaimEntry"] = SPEC_TYPES["ClaimEntry"]
    full = {"types": type_map, "primaryType": primary, "domain": domain, "message": message}
    return digest_of(encode_typed_data(full_message=full))


def sdk_types_digest(sdk_types, message, domain=BATCH_DOMAIN):
    """Same digest through the SDK's own type tables (the form its signers use)."""
    return digest_of(
        encode_typed_data(domain_data=domain, message_types=sdk_types, message_data=message)
    )


def recover(digest, signature_hex):
    sig = bytes.fromhex(signature_hex.removeprefix("0x"))
    check(len(sig) == 65, f"signature length {len(sig)}")
    v = sig[64] - 27 if sig[64] >= 27 else sig[64]
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
    pub = eth_keys.Signature(vrs=(v, r, s))
    return pub.recover_public_key_from_msg_hash(digest).to_checksum_address()


def signed_entry(digest, signature, expected_signer, sig_source):
    got = recover(digest, signature)
    check(got == expected_signer, f"signature by {got}, expected {expected_signer}")
    return {
        "digest": hx(digest),
        "signature": signature,
        "signer": expected_signer,
        "source": "digest: eth_account.encode_typed_data(full_message) with spec types, "
        f"equal to the SDK type tables; signature: {sig_source}; recovered from digest",
    }


# ------------------------------------------------------------------- accounts
payer_account = Account.from_key(KEY0)
check(payer_account.address == PAYER, "anvil key 0 address")
check(Account.from_key(KEY2).address == RECEIVER_AUTHORIZER, "anvil key 2 address")
payer_signer = EthAccountSigner(payer_account)
authorizer = LocalAuthorizerSigner(KEY2)


def config(salt):
    return ChannelConfig(
        payer=PAYER,
        payer_authorizer=PAYER,
        receiver=RECEIVER,
        receiver_authorizer=RECEIVER_AUTHORIZER,
        token=TOKEN,
        withdraw_delay=WITHDRAW_DELAY,
        salt=salt,
    )


def channel_id_entry(salt):
    cid = compute_channel_id(config(salt), NETWORK)
    message = {
        "payer": PAYER,
        "payerAuthorizer": PAYER,
        "receiver": RECEIVER,
        "receiverAuthorizer": RECEIVER_AUTHORIZER,
        "token": TOKEN,
        "withdrawDelay": WITHDRAW_DELAY,
        "salt": bytes.fromhex(salt[2:]),
    }
    check(hx(spec_digest("ChannelConfig", message)) == cid, "channelId: SDK vs eth-account")
    check(hx(sdk_types_digest(CHANNEL_CONFIG_TYPES, message)) == cid, "channelId: SDK types")
    return cid


CID1 = channel_id_entry(SALT1)
CID2 = channel_id_entry(SALT2)


def voucher_entry(cid, amount):
    message = {"channelId": bytes.fromhex(cid[2:]), "maxClaimableAmount": amount}
    digest = spec_digest("Voucher", message)
    check(digest == sdk_types_digest(VOUCHER_TYPES, message), "voucher digest: SDK types")
    fields = sign_voucher(payer_signer, cid, amount, NETWORK)
    check(fields.channel_id == cid and fields.max_claimable_amount == str(amount), "voucher fields")
    entry = {"channelId": cid, "maxClaimableAmount": str(amount)}
    entry.update(signed_entry(digest, fields.signature, PAYER, "x402 client.sign_voucher"))
    return entry


def refund_entry(nonce, amount):
    message = {"channelId": bytes.fromhex(CID1[2:]), "nonce": nonce, "amount": amount}
    digest = spec_digest("Refund", message)
    check(digest == sdk_types_digest(REFUND_TYPES, message), "refund digest: SDK types")
    signature = sign_refund(authorizer, CID1, amount, nonce, NETWORK)
    entry = {"channelId": CID1, "nonce": str(nonce), "amount": str(amount)}
    entry.update(
        signed_entry(digest, signature, RECEIVER_AUTHORIZER, "x402 authorizer_signer.sign_refund")
    )
    return entry


vouchers = [voucher_entry(CID1, 10000), voucher_entry(CID1, UINT128_MAX), voucher_entry(CID2, 3)]
refunds = [refund_entry(0, 1500), refund_entry(7, 0)]

# ---------------------------------------------------------------- claim batch
claims = [
    VoucherClaim(config(SALT1), "10000", vouchers[0]["signature"], "5000"),
    VoucherClaim(config(SALT2), "3", vouchers[2]["signature"], "3"),
]
claim_message = {
    "claims": [
        {"channelId": bytes.fromhex(CID1[2:]), "maxClaimableAmount": 10000, "totalClaimed": 5000},
        {"channelId": bytes.fromhex(CID2[2:]), "maxClaimableAmount": 3, "totalClaimed": 3},
    ]
}
claim_digest = spec_digest("ClaimBatch", claim_message)
check(claim_digest == sdk_types_digest(CLAIM_BATCH_TYPES, claim_message), "claim digest: SDK types")
claim_signature = sign_claim_batch(authorizer, claims, NETWORK)
claim_batch = {
    "entries": [
        {"channelId": CID1, "maxClaimableAmount": "10000", "totalClaimed": "5000"},
        {"channelId": CID2, "maxClaimableAmount": "3", "totalClaimed": "3"},
    ]
}
claim_batch.update(
    signed_entry(
        claim_digest,
        claim_signature,
        RECEIVER_AUTHORIZER,
        "x402 authorizer_signer.sign_claim_batch",
    )
)

# ------------------------------------------------------- ERC-3009 deposit auth
erc3009_nonce = build_erc3009_deposit_nonce(CID1, DEPOSIT_SALT)
check(
    erc3009_nonce == hx(keccak(abi_encode(["bytes32", "uint256"], [bytes.fromhex(CID1[2:]), 42]))),
    "erc3009 nonce: SDK vs eth_abi",
)
rwa_message = {
    "from": PAYER,
    "to": COLLECTOR,
    "value": DEPOSIT_AMOUNT,
    "validAfter": 0,
    "validBefore": VALID_BEFORE,
    "nonce": bytes.fromhex(erc3009_nonce[2:]),
}
rwa_digest = spec_digest("ReceiveWithAuthorization", rwa_message, TOKEN_DOMAIN)
check(
    rwa_digest == sdk_types_digest(RECEIVE_AUTHORIZATION_TYPES, rwa_message, TOKEN_DOMAIN),
    "erc3009 digest: SDK types",
)

# Drive the official client deterministically (see module docstring).
eip3009_module = importlib.import_module("x402.mechanisms.evm.batch_settlement.client.eip3009")
eip3009_module.create_nonce = lambda: DEPOSIT_SALT
eip3009_module.time = types.SimpleNamespace(time=lambda: PATCHED_NOW)

requirement = PaymentRequirements(
    scheme="batch-settlement",
    network=NETWORK,
    asset=TOKEN,
    amount=REQUEST_AMOUNT,
    pay_to=RECEIVER,
    max_timeout_seconds=MAX_TIMEOUT,
    extra={
        "name": "USDC",
        "version": "2",
        "receiverAuthorizer": RECEIVER_AUTHORIZER,
        "withdrawDelay": WITHDRAW_DELAY,
        "minDeposit": str(DEPOSIT_AMOUNT),
    },
)
client_scheme = BatchSettlementEvmScheme(
    payer_account, BatchSettlementEvmSchemeOptions(salt=SALT1)
)
deposit_payload = client_scheme.create_payment_payload(requirement)
client = x402ClientSync().register(NETWORK, client_scheme)
payment_required = PaymentRequired(
    x402_version=2,
    resource=ResourceInfo(url=RESOURCE_URL, description="", mime_type=""),
    accepts=[requirement],
)
envelope = client.create_payment_payload(payment_required)
check(envelope.payload == deposit_payload, "x402ClientSync envelope payload equals scheme payload")
envelope_json = envelope.model_dump(by_alias=True, exclude_none=True)

auth = deposit_payload["deposit"]["authorization"]["erc3009Authorization"]
VOUCHER_KEYS = ("channelId", "maxClaimableAmount", "signature")
check(
    deposit_payload["voucher"] == {k: vouchers[0][k] for k in VOUCHER_KEYS},
    "deposit voucher equals voucher vector",
)
check(auth["salt"] == DEPOSIT_SALT, "patched salt")
check(auth["validBefore"] == str(VALID_BEFORE), "patched time")
check(deposit_payload["deposit"]["amount"] == str(DEPOSIT_AMOUNT), "deposit amount = minDeposit")
erc3009 = {
    "domain": TOKEN_DOMAIN,
    "from": PAYER,
    "to": COLLECTOR,
    "value": str(DEPOSIT_AMOUNT),
    "validAfter": "0",
    "validBefore": str(VALID_BEFORE),
    "depositSalt": DEPOSIT_SALT,
    "nonce": erc3009_nonce,
    "nonceSource": "x402 encoding.build_erc3009_deposit_nonce; equal to keccak(eth_abi.encode)",
}
erc3009.update(
    signed_entry(
        rwa_digest,
        auth["signature"],
        PAYER,
        "x402 client.create_batch_settlement_eip3009_deposit_payload "
        "(via BatchSettlementEvmScheme)",
    )
)
collector_data = build_erc3009_collector_data(
    "0", str(VALID_BEFORE), DEPOSIT_SALT, auth["signature"]
)
decoded = abi_decode(["uint256", "uint256", "uint256", "bytes"], collector_data)
expected_decoded = (0, VALID_BEFORE, 42, bytes.fromhex(auth["signature"][2:]))
check(decoded == expected_decoded, "collectorData decodes")
erc3009["collectorData"] = hx(collector_data)
erc3009["collectorDataSource"] = "x402 encoding.build_erc3009_collector_data"

# ------------------------- client bookkeeping, then the client's refund request
# Feed the official client hook the PAYMENT-RESPONSE a server sends for the deposit.
deposit_receipt = SettleResponse(
    success=True,
    payer=PAYER.lower(),
    transaction="0x" + "11" * 32,
    network=NETWORK,
    amount=str(DEPOSIT_AMOUNT),
    extra={
        "chargedAmount": REQUEST_AMOUNT,
        "channelState": {
            "channelId": CID1,
            "balance": str(DEPOSIT_AMOUNT),
            "totalClaimed": "0",
            "withdrawRequestedAt": 0,
            "refundNonce": "0",
            "chargedCumulativeAmount": REQUEST_AMOUNT,
        },
    },
)
client_scheme.scheme_hooks.on_payment_response(
    PaymentResponseContext(
        payment_payload=envelope, requirements=requirement, settle_response=deposit_receipt
    )
)
stored = client_scheme._storage.get(CID1)
check(stored is not None and stored.charged_cumulative_amount == REQUEST_AMOUNT, "client total")
check(stored is not None and stored.balance == str(DEPOSIT_AMOUNT), "client balance")
next_voucher = client_scheme.create_payment_payload(requirement)
check(next_voucher["type"] == "voucher", "second payload is a voucher")
check(next_voucher["voucher"]["maxClaimableAmount"] == "20000", "voucher rule charged + amount")

seen_requests = []
probe_required = base64.b64encode(
    payment_required.model_dump_json(by_alias=True, exclude_none=True).encode()
).decode()


def fake_fetch(url, headers):
    seen_requests.append({"url": url, "headers": dict(headers)})
    if "PAYMENT-SIGNATURE" not in headers:
        return _RefundResponse(status=402, headers={"PAYMENT-REQUIRED": probe_required})
    receipt = SettleResponse(success=True, transaction="0x" + "22" * 32, network=NETWORK,
                             payer=PAYER, amount="90000")
    encoded = base64.b64encode(receipt.model_dump_json(by_alias=True, exclude_none=True).encode())
    return _RefundResponse(status=200, headers={"PAYMENT-RESPONSE": encoded.decode()})


client_scheme.refund(RESOURCE_URL, RefundOptions(fetch=fake_fetch))
check(len(seen_requests) == 2 and seen_requests[0]["headers"] == {}, "refund probes then pays")
refund_envelope = json.loads(base64.b64decode(seen_requests[1]["headers"]["PAYMENT-SIGNATURE"]))
refund_payload = refund_envelope["payload"]
check(refund_payload["voucher"]["signature"] == vouchers[0]["signature"], "refund voucher")
check("amount" not in refund_payload, "full refund omits amount")
check(client_scheme._storage.get(CID1) is None, "client deletes the channel after a full refund")

# ------------------------- what the official server sends the facilitator
server_scheme = ServerScheme(
    RECEIVER, BatchSettlementEvmSchemeServerConfig(receiver_authorizer_signer=authorizer)
)
PENDING = "0x" + "33" * 32


def seed_channel(_current):
    return server_storage.Channel(
        channel_id=CID1,
        channel_config=config(SALT1),
        charged_cumulative_amount=REQUEST_AMOUNT,
        signed_max_claimable=REQUEST_AMOUNT,
        signature=vouchers[0]["signature"],
        balance=str(DEPOSIT_AMOUNT),
        pending_request=server_storage.PendingRequest(PENDING, REQUEST_AMOUNT, 2**62),
    )


server_scheme.get_storage().update_channel(CID1, seed_channel)
refund_pp = PaymentPayload.model_validate(refund_envelope)
server_scheme.merge_request_context(refund_pp, BatchSettlementRequestContext(pending_id=PENDING))
enrichment = handle_enrich_settlement_payload(
    server_scheme, SettleContext(payment_payload=refund_pp, requirements=refund_pp.accepted)
)
refund_to_facilitator = refund_pp.model_copy(
    update={"payload": {**refund_pp.payload, **enrichment}}
)
check(enrichment["amount"] == "90000" and enrichment["refundNonce"] == "0", "refund enrichment")
refund_auth = refund_entry(0, 90000)
check(enrichment["refundAuthorizerSignature"] == refund_auth["signature"], "enriched refund sig")

manager_requirements = build_payment_requirements(RECEIVER, TOKEN, NETWORK)
claim_pp = build_claim_payment_payload(claims, manager_requirements, claim_signature)
settle_pp = build_settle_payment_payload(manager_requirements, RECEIVER, TOKEN)


def facilitator_body(pp, req):
    return {
        "x402Version": pp.x402_version,
        "paymentPayload": pp.model_dump(by_alias=True, exclude_none=True),
        "paymentRequirements": req.model_dump(by_alias=True, exclude_none=True),
    }


BODY_SOURCE = (
    "x402 server builders, serialised like HTTPFacilitatorClient "
    "(model_dump(by_alias=True, exclude_none=True)); POST {facilitator}/settle"
)
result = {
    "source": "x402 Python SDK 2.25.0 (official) + eth-account encode_typed_data (independent)",
    "inputs": {
        "chainId": CHAIN_ID,
        "verifyingContract": BATCH,
        "payer": PAYER,
        "payerAuthorizer": PAYER,
        "receiver": RECEIVER,
        "receiverAuthorizer": RECEIVER_AUTHORIZER,
        "receiverAuthorizerKey": KEY2,
        "token": TOKEN,
        "withdrawDelay": WITHDRAW_DELAY,
        "salt": SALT1,
        "salt2": SALT2,
    },
    "channelId": {
        "value": CID1,
        "source": "x402 utils.compute_channel_id; equal to eth_account.encode_typed_data",
    },
    "channelId2": {
        "value": CID2,
        "source": "x402 utils.compute_channel_id (salt 0x..02); equal to eth_account",
    },
    "vouchers": vouchers,
    "refunds": refunds,
    "claimBatch": claim_batch,
    "erc3009Deposit": erc3009,
    "depositPayload": {
        "value": deposit_payload,
        "source": "x402 client.BatchSettlementEvmScheme.create_payment_payload, with "
        "eip3009.create_nonce -> 0x..2a and eip3009.time.time -> 1795699259 patched",
    },
    "depositPaymentEnvelope": {
        "value": envelope_json,
        "source": "x402ClientSync.create_payment_payload(PaymentRequired), "
        "the JSON inside PAYMENT-SIGNATURE",
    },
    "nextVoucherPayload": {
        "value": next_voucher,
        "source": "same client after its hook processed the deposit PAYMENT-RESPONSE "
        "(chargedAmount 10000)",
    },
    "refundRequest": {
        "value": refund_envelope,
        "source": "x402 client.refund_channel with a capturing fetch: GET probe without "
        "headers, then the same URL with only PAYMENT-SIGNATURE",
    },
    "facilitatorRefundSettle": {
        "value": facilitator_body(refund_to_facilitator, refund_pp.accepted),
        "source": "x402 server.settle.handle_enrich_settlement_payload merged into the "
        "client refund payload (server holds receiverAuthorizer key 2); " + BODY_SOURCE,
    },
    "facilitatorClaimSettle": {
        "value": facilitator_body(claim_pp, manager_requirements),
        "source": "x402 channel_manager_common.build_claim_payment_payload; " + BODY_SOURCE,
    },
    "facilitatorSettleSettle": {
        "value": facilitator_body(settle_pp, manager_requirements),
        "source": "x402 channel_manager_common.build_settle_payment_payload; " + BODY_SOURCE,
    },
}

if FAILURES:
    for failure in FAILURES:
        print(f"batch_vectors.py: check failed: {failure}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(result, indent=2))
