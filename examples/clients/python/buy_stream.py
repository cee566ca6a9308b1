#!/usr/bin/env python3
"""Buy an AtomicStream x402 stream with the official x402 Python SDK.

    pip install "x402[evm,httpx]==2.25.0" "websockets==17.4"
    X402_PRIVATE_KEY=0x... python3 buy_stream.py http://127.0.0.1:4021 demo-fast --events 100

The flow (docs/clients.md):
  1. GET  {base}/v2/schema/{id}: a 402 by design. Its JSON body's `websocketEndpoint`
     is ws://host/v2/stream/{id}?t=TOKEN. Do not pay this URL: it answers 402 again.
  2. POST {base}/v2/renew/{id}?t=TOKEN through the SDK's paying client: it answers
     402 + PAYMENT-REQUIRED, the SDK signs, retries with PAYMENT-SIGNATURE, and the
     token now holds one paid slice.
  3. Open a plain WebSocket to `websocketEndpoint` (no header): `hello`, then `event`s.
  4. On `expiring`, POST the renew URL again (a fresh payment) for the next slice.
  5. Stop after --events events or --seconds seconds, or at the stream's `end`.

Events go to stdout, one JSON object per line (the `event` messages as received);
what happens goes to stderr. Exit 0 when the goal is reached or the stream ends,
1 on a refused payment or a lost connection, 2 on a usage error.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from eth_account import Account
from websockets.asyncio.client import connect
from x402 import x402Client
from x402.http import decode_payment_response_header
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact import ExactEvmScheme


def log(*parts):
    print("buy_stream:", *parts, file=sys.stderr, flush=True)


def renew_url_of(ws_url):
    """ws://host/v2/stream/{id}?t=T -> http://host/v2/renew/{id}?t=T (same token)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}[parts.scheme]
    head, sep, tail = parts.path.rpartition("/stream/")
    if not sep:
        raise ValueError(f"not a stream URL: {ws_url}")
    return urlunsplit((scheme, parts.netloc, f"{head}/renew/{tail}", parts.query, ""))


class Buyer:
    def __init__(self, http, renew_url, max_slices):
        self.http = http  # the SDK's paying httpx client
        self.renew_url = renew_url
        self.max_slices = max_slices
        self.paid = 0

    async def pay_slice(self):
        """POST the renew URL; the SDK answers the 402 with a signed payment."""
        if self.paid >= self.max_slices:
            log(f"not renewing: --max-slices {self.max_slices} reached")
            return False
        r = await self.http.post(self.renew_url)
        if r.status_code != 200:
            # 202 payment_pending, 409 horizon_exceeded, 402 payment_invalid, ...
            raise RuntimeError(f"renew answered {r.status_code}: {r.text}")
        body = r.json()
        self.paid += 1
        settled = r.headers.get("PAYMENT-RESPONSE")
        tx = decode_payment_response_header(settled).transaction if settled else ""
        log(
            f"paid slice {self.paid}: the session holds {body.get('slices')} slices,"
            f" paid until {body.get('expiresAt')}" + (f", transaction {tx}" if tx else "")
        )
        return True


async def buy(args, key):
    # The official client: the exact scheme on every EVM network, with a per-payment cap.
    client = x402Client()
    client.register("eip155:*", ExactEvmScheme(signer=EthAccountSigner(Account.from_key(key))))
    client.set_spend_controls({"max_amount_per_payment": "$" + args.max_per_slice})

    base = args.base_url.rstrip("/")
    # 1. The schema, with a plain client: it is a 402 by design and is never paid.
    async with httpx.AsyncClient(timeout=30) as plain:
        r = await plain.get(f"{base}/v2/schema/{quote(args.stream, safe='')}")
    if r.status_code != 402:
        raise RuntimeError(f"schema answered {r.status_code}: {r.text}")
    schema = r.json()
    ws_url = schema["websocketEndpoint"]
    details = schema["paymentDetails"]
    log(
        f"{args.stream}: {schema['pricing']['pricePerSlice']} {schema['pricing']['currency']}"
        f" per slice of {schema['pricing']['estimatedDuration']} s on {details['network']}"
    )

    events, last_seq = 0, None
    deadline = time.monotonic() + args.seconds if args.seconds else None
    renewal = None
    async with x402HttpxClient(client, timeout=30) as http:
        buyer = Buyer(http, renew_url_of(ws_url), args.max_slices)
        # 2. Pay the first slice through the renew URL.
        await buyer.pay_slice()
        # 3. A plain WebSocket with the token alone.
        async with connect(ws_url, max_size=1 << 20, close_timeout=2) as ws:
            while True:
                if renewal is not None and renewal.done():
                    renewal.result()  # a failed renewal ends the run
                if args.events and events >= args.events:
                    log(f"done: {events} events")
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    log(f"done: {args.seconds} s")
                    break
                try:
                    raw = await asyncio.wait_for(ws.recv(), left)
                except asyncio.TimeoutError:
                    continue
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "event":
                    seq = msg["seq"]
                    if last_seq is not None and seq <= last_seq:
                        raise RuntimeError(f"event {seq} after {last_seq}")
                    last_seq = seq
                    events += 1
                    print(json.dumps(msg), flush=True)
                elif kind == "hello":
                    log(f"hello: {msg['sliceSeconds']} s slices, paid until {msg['expiresAt']}")
                elif kind == "expiring":
                    # 4. Renew in the background so events keep flowing; one at a time.
                    log(f"expiring: {msg['secondsLeft']} s left")
                    if renewal is None or renewal.done():
                        renewal = asyncio.create_task(buyer.pay_slice())
                elif kind == "renewed":
                    log(f"renewed: paid until {msg['expiresAt']}")
                elif kind == "expired":
                    log("paid time ran out")
                    if buyer.paid >= buyer.max_slices:
                        break
                elif kind == "end":
                    log(f"the stream ended: {msg.get('reason')}")
                    break
                elif kind == "error":
                    log(f"notice {msg.get('code')}: {msg.get('message')}")
                # Unknown types are ignored, as the protocol asks.
        if renewal is not None:
            await renewal  # never abandon a payment half-way
    log(f"summary: {events} events, {buyer.paid} slices paid")


def main():
    p = argparse.ArgumentParser(description="Buy an AtomicStream stream with the x402 SDK")
    p.add_argument("base_url", help="the server, e.g. http://127.0.0.1:4021")
    p.add_argument("stream", help="stream id, e.g. demo-fast")
    p.add_argument("--events", type=int, default=0, help="stop after this many events")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds")
    p.add_argument("--max-slices", type=int, default=10, help="never pay more slices")
    p.add_argument("--max-per-slice", default="0.05", help="USDC cap per payment")
    args = p.parse_args()
    key = os.environ.get("X402_PRIVATE_KEY")
    if not key:
        p.error("set X402_PRIVATE_KEY to the payer's private key (0x...)")
    if not args.events and not args.seconds:
        p.error("give --events N or --seconds S")
    try:
        asyncio.run(buy(args, key))
    except Exception as e:  # noqa: BLE001 - a recipe: say what failed and exit 1
        log(f"failed: {type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
