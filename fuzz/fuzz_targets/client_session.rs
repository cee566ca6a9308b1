#![no_main]
//! Structure-aware: the bytes choose a sequence of inputs to a client session;
//! text inputs are slices of the fuzz data. Payments asked for are really
//! signed and handed back, so the fuzzer reaches the socket and renewal code.
//! Nothing may panic, and the drain contract and `poll_timeout` monotonicity hold.
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use x402_session::*;
use x402_types::PathVersion;

const SCHEMA: &str = r#"{"protocol":"ws402","version":"2","websocketEndpoint":"wss://h.example/v2/stream/s?t=tok","pricing":{"pricePerSecond":0.001,"currency":"USDC","estimatedDuration":4},"paymentDetails":{"scheme":"exact","network":"base-sepolia","asset":"0x036CbD53842c5426634e7929541eC2318f3dCF7e","payTo":"0x209693Bc6afc0C5328bA36FaF03C514EF312287C","maxAmountRequired":"1000","maxTimeoutSeconds":60},"stream":{"id":"s","title":"","description":""}}"#;
const HELLO: &str = r#"{"type":"hello","sessionId":"a","streamId":"s","version":"2","sliceSeconds":4,"expiresAt":1000004,"serverTime":1000000,"renewUrl":"https://h.example/v2/renew/s?t=tok","resumed":false,"nextSeq":0}"#;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let Ok(mut s) = ClientSession::new(ClientConfig::new("https://h.example", PathVersion::V2, "s"), t0, 1_000_000) else { return };
    let _ = s.open(now);
    let mut http = Vec::new();
    let mut conns = Vec::new();
    let mut asked = Vec::new();
    let payer = x402_payer::EvmExactPayer::new(
        x402_payer::LocalSigner::from_hex("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d").expect("key"),
    );
    let mut floor = now;
    let mut i = 0;
    while i < data.len() {
        // Drain everything first (the contract).
        while let Some(t) = s.poll_transmit() {
            match t {
                Transmit::Http { id, .. } => http.push(id),
                Transmit::WsConnect { conn, .. } => conns.push(conn),
                _ => {}
            }
        }
        while let Some(e) = s.poll_event() {
            if let ClientEvent::PaymentNeeded { slice, offer } = e {
                asked.push((slice, offer));
            }
        }
        if let Some(t) = s.poll_timeout() {
            assert!(t >= floor);
        }
        let op = data[i];
        let len = data.get(i + 1).copied().unwrap_or(0) as usize;
        let chunk = &data[(i + 2).min(data.len())..(i + 2 + len).min(data.len())];
        let text = String::from_utf8_lossy(chunk);
        i += 2 + len;
        now += Duration::from_millis(u64::from(op) * 37);
        floor = now;
        let _ = match op % 10 {
            0 => match http.pop() {
                Some(id) => s.handle_http_response(now, id, HttpResponse { status: 402, headers: vec![], body: SCHEMA.as_bytes().to_vec() }),
                None => s.handle_timeout(now),
            },
            1 => match http.pop() {
                Some(id) => s.handle_http_response(now, id, HttpResponse { status: 200 + u16::from(op % 5) * 100, headers: vec![], body: chunk.to_vec() }),
                None => s.handle_timeout(now),
            },
            2 => match conns.last() {
                Some(&c) => s.handle_ws_upgrade(now, c, Ok(HttpResponse { status: 101, ..Default::default() })),
                None => s.handle_timeout(now),
            },
            3 => match conns.last() {
                Some(&c) => s.handle_ws_message(now, c, HELLO),
                None => s.handle_timeout(now),
            },
            4 => match conns.last() {
                Some(&c) => s.handle_ws_message(now, c, &text),
                None => s.handle_timeout(now),
            },
            5 => match conns.pop() {
                Some(c) => s.handle_ws_closed(now, c, if op & 16 == 0 { None } else { Some(x402_types::CloseCode::from(u16::from(op) * 37)) }),
                None => s.handle_timeout(now),
            },
            6 => match asked.pop() {
                Some((slice, _)) => s.handle_payment_declined(now, slice, text.into_owned(), true),
                None => s.handle_timeout(now),
            },
            8 => match asked.pop() {
                Some((slice, offer)) => match payer.sign(&offer) {
                    Ok(p) => s.handle_payment(now, slice, p),
                    Err(_) => s.handle_timeout(now),
                },
                None => s.handle_timeout(now),
            },
            7 => match http.pop() {
                Some(id) => s.handle_http_error(now, id, TransportFailure::Timeout),
                None => s.handle_timeout(now),
            },
            _ => s.handle_timeout(now),
        };
    }
});
