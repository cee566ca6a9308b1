//! Row family 6: parsing event frames against `serde_json::Value`.

use std::time::Instant;

use serde_json::{Value, json};
use x402_types::ServerMessage;

use crate::fixture::payload;
use crate::report::{ROUNDS, Report};

pub(crate) fn bench_decode(r: &mut Report) {
    let frame = |data: Value| {
        ServerMessage::Event(x402_types::Event {
            seq: 123_456,
            data: x402_types::EventData::from_value(&data).unwrap_or_else(|_| unreachable!()),
            ts: Some(1_750_000_000_000),
        })
        .to_json()
    };
    let small =
        frame(json!({"type":"trade","symbol":"BTC-USD","price":101.25,"size":0.5,"side":"buy"}));
    let large = frame(payload(4096, 1));
    for (text, n) in [(small, 300_000), (large, 20_000)] {
        let (mut ours, mut bare) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..n {
                let _ = std::hint::black_box(ServerMessage::parse(std::hint::black_box(&text)));
            }
            ours.push(n as f64 / t.elapsed().as_secs_f64());
            let t = Instant::now();
            for _ in 0..n {
                let _ = std::hint::black_box(serde_json::from_str::<Value>(std::hint::black_box(
                    &text,
                )));
            }
            bare.push(n as f64 / t.elapsed().as_secs_f64());
        }
        r.rounds(
            &format!("6. parse event frame ({} B)", text.len()),
            &ours,
            "msg/s",
            "serde_json::Value parse",
            &bare,
            0.9,
        );
    }
}
