"""A stock x402 resource server's side of one payment, written with the
official x402 Python SDK (pinned in `cargo xtask tools`).

Reads {"required": <PaymentRequired, v1 or v2>, "facilitator": <base URL>} on
stdin, the payer's private key in X402_SDK_KEY and the facilitator's bearer key
in X402_FACILITATOR_KEY. The SDK's client signs the payment the 402 answer asks
for; the SDK's own HTTP facilitator client (what stock servers use) verifies
it, settles it, then settles the same payload once more, as a replaying
attacker or a server without a nonce book of its own would. Prints
{"payload", "verify", "settle", "replay"}: the SDK's parsed models, wire form.
A facilitator answer the SDK cannot parse fails the script."""
import json
import os
import sys

from eth_account import Account
from x402 import x402ClientSync
from x402.http.facilitator_client import HTTPFacilitatorClientSync
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.schemas import PaymentRequired
from x402.schemas.v1 import PaymentRequiredV1

given = json.load(sys.stdin)
raw = given["required"]
if raw["x402Version"] == 1:
    required = PaymentRequiredV1.model_validate(raw)
else:
    required = PaymentRequired.model_validate(raw)

client = register_exact_evm_client(x402ClientSync(), Account.from_key(os.environ["X402_SDK_KEY"]))
payload = client.create_payment_payload(required)
requirements = required.accepts[0]

bearer = {"Authorization": "Bearer " + os.environ["X402_FACILITATOR_KEY"]}
facilitator = HTTPFacilitatorClientSync(
    {
        "url": given["facilitator"],
        "create_headers": lambda: {"verify": bearer, "settle": bearer, "supported": bearer},
    }
)


def wire(model):
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


out = {"payload": wire(payload)}
out["verify"] = wire(facilitator.verify(payload, requirements))
out["settle"] = wire(facilitator.settle(payload, requirements))
out["replay"] = wire(facilitator.settle(payload, requirements))
print(json.dumps(out))
