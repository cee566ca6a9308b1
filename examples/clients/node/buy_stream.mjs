#!/usr/bin/env node
// Buy an AtomicStream x402 stream with the official x402 TypeScript SDK (@x402/fetch).
//
//   npm ci        # in this directory: @x402/fetch, @x402/evm, viem, ws at the versions in package-lock.json
//   X402_PRIVATE_KEY=0x... node buy_stream.mjs http://127.0.0.1:4021 demo-fast --events 100
//
// The flow (docs/clients.md):
//   1. GET  {base}/v2/schema/{id}: a 402 by design. Its JSON body's `websocketEndpoint`
//      is ws://host/v2/stream/{id}?t=TOKEN. Do not pay this URL: it answers 402 again.
//   2. POST {base}/v2/renew/{id}?t=TOKEN through the SDK's paying fetch: it answers
//      402 + PAYMENT-REQUIRED, the SDK signs, retries with PAYMENT-SIGNATURE, and the
//      token now holds one paid slice.
//   3. Open a plain WebSocket to `websocketEndpoint` (no header): `hello`, then `event`s.
//   4. On `expiring`, POST the renew URL again (a fresh payment) for the next slice.
//   5. Stop after --events events or --seconds seconds, or at the stream's `end`.
//
// Events go to stdout, one JSON object per line (the `event` messages as received);
// what happens goes to stderr. Exit 0 when the goal is reached or the stream ends,
// 1 on a refused payment or a lost connection, 2 on a usage error.

import { parseArgs } from "node:util";
import { decodePaymentResponseHeader, wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { ExactEvmScheme } from "@x402/evm";
import { privateKeyToAccount } from "viem/accounts";
import WebSocket from "ws"; // Node 20 has no global WebSocket; browsers use their own

const log = (...parts) => console.error("buy_stream:", ...parts);

/** ws://host/v2/stream/{id}?t=T -> http://host/v2/renew/{id}?t=T (same token). */
function renewUrlOf(wsUrl) {
  const u = new URL(wsUrl);
  const i = u.pathname.lastIndexOf("/stream/");
  if (i < 0) throw new Error(`not a stream URL: ${wsUrl}`);
  u.pathname = `${u.pathname.slice(0, i)}/renew/${u.pathname.slice(i + "/stream/".length)}`;
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  return u.toString();
}

function usage(message) {
  console.error(`buy_stream: ${message}
usage: node buy_stream.mjs BASE_URL STREAM_ID (--events N | --seconds S) [--max-slices M] [--max-per-slice USDC]`);
  process.exit(2);
}

const { values: opts, positionals } = (() => {
  try {
    return parseArgs({
      allowPositionals: true,
      options: {
        events: { type: "string", default: "0" },
        seconds: { type: "string", default: "0" },
        "max-slices": { type: "string", default: "10" },
        "max-per-slice": { type: "string", default: "0.05" },
      },
    });
  } catch (e) {
    return usage(e.message);
  }
})();
if (positionals.length !== 2) usage("give BASE_URL and STREAM_ID");
const [baseUrl, streamId] = positionals;
const wantEvents = Number(opts.events);
const wantSeconds = Number(opts.seconds);
const maxSlices = Number(opts["max-slices"]);
if (!(wantEvents > 0) && !(wantSeconds > 0)) usage("give --events N or --seconds S");
const key = process.env.X402_PRIVATE_KEY;
if (!key) usage("set X402_PRIVATE_KEY to the payer's private key (0x...)");

let paid = 0;
/** POST the renew URL; the SDK answers the 402 with a signed payment. */
async function paySlice(payingFetch, renewUrl) {
  if (paid >= maxSlices) {
    log(`not renewing: --max-slices ${maxSlices} reached`);
    return false;
  }
  const r = await payingFetch(renewUrl, { method: "POST" });
  const text = await r.text();
  if (r.status !== 200) {
    // 202 payment_pending, 409 horizon_exceeded, 402 payment_invalid, ...
    throw new Error(`renew answered ${r.status}: ${text}`);
  }
  const body = JSON.parse(text);
  paid += 1;
  const settled = r.headers.get("PAYMENT-RESPONSE");
  const tx = settled ? decodePaymentResponseHeader(settled).transaction : "";
  log(
    `paid slice ${paid}: the session holds ${body.slices} slices, paid until ${body.expiresAt}` +
      (tx ? `, transaction ${tx}` : ""),
  );
  return true;
}

async function main() {
  // The official client: the exact scheme on every EVM network, with a per-payment cap.
  const client = x402Client.fromConfig({
    schemes: [{ network: "eip155:*", client: new ExactEvmScheme(privateKeyToAccount(key)) }],
    spendControls: { maxAmountPerPayment: `$${opts["max-per-slice"]}` },
  });
  const payingFetch = wrapFetchWithPayment(fetch, client);

  const base = baseUrl.replace(/\/+$/, "");
  // 1. The schema, with plain fetch: it is a 402 by design and is never paid.
  const r = await fetch(`${base}/v2/schema/${encodeURIComponent(streamId)}`);
  const schema = await r.json().catch(() => ({}));
  if (r.status !== 402 || !schema.websocketEndpoint) {
    throw new Error(`schema answered ${r.status}: ${JSON.stringify(schema)}`);
  }
  const wsUrl = schema.websocketEndpoint;
  const renewUrl = renewUrlOf(wsUrl);
  const { pricing, paymentDetails } = schema;
  log(
    `${streamId}: ${pricing.pricePerSlice} ${pricing.currency} per slice of ` +
      `${pricing.estimatedDuration} s on ${paymentDetails.network}`,
  );

  // 2. Pay the first slice through the renew URL.
  await paySlice(payingFetch, renewUrl);

  // 3. A plain WebSocket with the token alone.
  const ws = new WebSocket(wsUrl, { maxPayload: 1 << 20 });
  let events = 0;
  let lastSeq = null;
  let renewal = null; // the renewal in flight, one at a time
  await new Promise((resolve, reject) => {
    let finished = false;
    const finish = (err) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      ws.close(1000);
      // Never abandon a payment half-way: wait for a renewal in flight.
      Promise.resolve(renewal).then(() => (err ? reject(err) : resolve()), reject);
    };
    const timer =
      wantSeconds > 0
        ? setTimeout(() => {
            log(`done: ${wantSeconds} s`);
            finish();
          }, wantSeconds * 1000)
        : null;
    ws.on("error", (e) => finish(e));
    ws.on("close", (code, reason) =>
      finish(new Error(`the socket closed: ${code} ${reason.toString()}`)),
    );
    ws.on("message", (raw) => {
      let msg;
      try {
        msg = JSON.parse(raw.toString());
      } catch (e) {
        return finish(e);
      }
      switch (msg.type) {
        case "event":
          if (lastSeq !== null && msg.seq <= lastSeq) {
            return finish(new Error(`event ${msg.seq} after ${lastSeq}`));
          }
          lastSeq = msg.seq;
          events += 1;
          process.stdout.write(JSON.stringify(msg) + "\n");
          if (wantEvents > 0 && events >= wantEvents) {
            log(`done: ${events} events`);
            finish();
          }
          break;
        case "hello":
          log(`hello: ${msg.sliceSeconds} s slices, paid until ${msg.expiresAt}`);
          break;
        case "expiring":
          // 4. Renew in the background so events keep flowing; a failure ends the run.
          log(`expiring: ${msg.secondsLeft} s left`);
          if (renewal === null) {
            renewal = paySlice(payingFetch, renewUrl).then(
              () => {
                renewal = null;
              },
              (e) => finish(e),
            );
          }
          break;
        case "renewed":
          log(`renewed: paid until ${msg.expiresAt}`);
          break;
        case "expired":
          log("paid time ran out");
          if (paid >= maxSlices) finish();
          break;
        case "end":
          log(`the stream ended: ${msg.reason}`);
          finish();
          break;
        case "error":
          log(`notice ${msg.code}: ${msg.message}`);
          break;
        default: // unknown types are ignored, as the protocol asks
      }
    });
  });
  log(`summary: ${events} events, ${paid} slices paid`);
}

main().then(
  () => process.exit(0),
  (e) => {
    log(`failed: ${e.message ?? e}`);
    process.exit(1);
  },
);
