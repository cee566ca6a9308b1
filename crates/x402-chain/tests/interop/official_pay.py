"""Signs an x402 v2 payment with the official x402 Python SDK (pinned in
`cargo xtask tools`). Reads a v2 PaymentRequired JSON on stdin and a private
key in X402_SDK_KEY; prints the PaymentPayload JSON (wire form) on stdout."""
import json
import os
import sys

from eth_account import Account
from x402 import x402ClientSync
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.schemas import PaymentRequired

required = PaymentRequired.model_validate(json.load(sys.stdin))
client = x402ClientSync()
client.register("eip155:*", ExactEvmScheme(Account.from_key(os.environ["X402_SDK_KEY"])))
payload = client.create_payment_payload(required)
print(payload.model_dump_json(by_alias=True, exclude_none=True))
