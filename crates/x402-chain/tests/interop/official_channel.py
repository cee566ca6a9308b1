"""A stock x402 `batch-settlement` buyer, written with the official x402 Python SDK
(pinned in `cargo xtask tools`), against our server's renew URL.

Reads {"renew": <renew URL>, "rpc": <chain JSON-RPC URL>, "network": "eip155:<id>",
"requests": N, "refund": bool, "storage": <directory>} on stdin and the payer's private key in X402_SDK_KEY. The SDK's
client (batch-settlement only, so it picks that offer over `exact`) sends the
request, reads the 402, deposits on its first payment and pays every later one with
a cumulative voucher; with "refund", it then closes the channel cooperatively
(`scheme.refund`, which GETs the URL). Prints {"requests": [per request the HTTP
status, the JSON body and the decoded PAYMENT-RESPONSE], "refund": the refund's
settle response}. An SDK error fails the script."""
import base64
import json
import os
import sys

from eth_account import Account
from x402 import x402ClientSync
from x402.http.clients.requests import x402_requests
from x402.mechanisms.evm.batch_settlement.client import (
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeOptions,
    FileChannelStorageOptions,
    FileClientChannelStorage,
)
from x402.mechanisms.evm.batch_settlement.client.refund import RefundOptions
from x402.mechanisms.evm.signers import EthAccountSignerWithRPC

given = json.load(sys.stdin)
account = Account.from_key(os.environ["X402_SDK_KEY"])
signer = EthAccountSignerWithRPC(account, rpc_url=given["rpc"])
# The SDK's file storage: a later run (the refund) knows the channel's charged total.
storage = FileClientChannelStorage(FileChannelStorageOptions(directory=given["storage"]))
scheme = BatchSettlementEvmScheme(signer, BatchSettlementEvmSchemeOptions(storage=storage))
client = x402ClientSync().register(given["network"], scheme)
# The test token is not one of the SDK's known assets.
client.set_spend_controls(False)
session = x402_requests(client)

out = []
for _ in range(given["requests"]):
    r = session.post(given["renew"], timeout=30)
    receipt = r.headers.get("PAYMENT-RESPONSE")
    try:
        body = r.json()
    except ValueError:
        body = r.text
    out.append(
        {
            "status": r.status_code,
            "body": body,
            "receipt": json.loads(base64.b64decode(receipt)) if receipt else None,
        }
    )
refund = None
if given.get("refund"):
    answer = scheme.refund(given["renew"], RefundOptions())
    refund = answer.model_dump(by_alias=True, exclude_none=True, mode="json")
print(json.dumps({"requests": out, "refund": refund}))
