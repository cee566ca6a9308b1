//! Row family 8: instructions per operation, counted by callgrind.

use serde_json::{Value, json};
use x402_payer::verify_exact;
use x402_types::{PaymentRequirements, ServerMessage};

use crate::fixture::{bench_offer, event_frame, hex_key, payload, signer_payer};
use crate::report::{Report, Row};

/// The operations whose instructions `bench_counts` counts, `n` times each.
/// Run as `atomicstream-bench count <op> <n>` under callgrind.
pub(crate) fn count_op(op: &str, n: u64) {
    use k256::ecdsa::{SigningKey, VerifyingKey};
    let payer = signer_payer();
    let (req, offer) = bench_offer();
    let key = SigningKey::from_slice(&hex_key()).unwrap_or_else(|_| unreachable!("constant key"));
    let signed = payer.sign(&offer).unwrap_or_else(|e| panic!("{e}"));
    let reqs = PaymentRequirements::V2(req.to_v2());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let digest = [7u8; 32];
    let (sig, rid) = key
        .sign_prehash_recoverable(&digest)
        .unwrap_or_else(|e| panic!("{e}"));
    let large_data = payload(4096, 1);
    let (small, large) = (
        event_frame(123_456, &payload_small()),
        event_frame(123_456, &large_data),
    );
    let payload = signed;
    for i in 0..n {
        match op {
            "sign" => {
                let _ = std::hint::black_box(payer.sign(std::hint::black_box(&offer)));
            }
            "sign-bare" => {
                let mut d = digest;
                d[0] = i as u8;
                let _ = std::hint::black_box(key.sign_prehash_recoverable(&d));
            }
            "verify" => {
                let _ =
                    std::hint::black_box(verify_exact(std::hint::black_box(&payload), &reqs, now));
            }
            "verify-bare" => {
                let _ =
                    std::hint::black_box(VerifyingKey::recover_from_prehash(&digest, &sig, rid));
            }
            "parse-small" => {
                let _ = std::hint::black_box(ServerMessage::parse(std::hint::black_box(&small)));
            }
            "parse-small-bare" => {
                let _ = std::hint::black_box(serde_json::from_str::<Value>(std::hint::black_box(
                    &small,
                )));
            }
            "parse-large" => {
                let _ = std::hint::black_box(ServerMessage::parse(std::hint::black_box(&large)));
            }
            "parse-large-bare" => {
                let _ = std::hint::black_box(serde_json::from_str::<Value>(std::hint::black_box(
                    &large,
                )));
            }
            _ => {}
        }
    }
}

fn payload_small() -> Value {
    json!({"type":"trade","symbol":"BTC-USD","price":101.25,"size":0.5,"side":"buy"})
}

/// Instructions `op` takes, counted by callgrind: a run of `n` minus a run of
/// none, divided by `n`, so start-up and set-up cancel out. Deterministic for
/// a given binary and input, whatever else the machine is doing.
fn callgrind_per_op(op: &str, n: u64) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let run = |n: u64| -> Option<f64> {
        let out = std::process::Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&exe)
            .args(["count", op, &n.to_string()])
            .output()
            .ok()?;
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines()
            .find_map(|l| {
                l.split_once("Collected :")
                    .map(|(_, v)| v.trim().to_string())
            })?
            .parse()
            .ok()
    };
    let (zero, many) = (run(0)?, run(n)?);
    Some((many - zero) / n as f64)
}

pub(crate) fn bench_counts(r: &mut Report) {
    let ops = [
        (
            "sign",
            "sign EIP-3009 payment via Payer",
            "bare k256 sign_prehash_recoverable",
            200,
            0.9,
        ),
        (
            "verify",
            "verify payment (all checks + recovery)",
            "bare k256 recover_from_prehash",
            200,
            0.9,
        ),
        (
            "parse-small",
            "parse event frame (~130 B)",
            "serde_json::Value parse",
            5_000,
            0.9,
        ),
        (
            "parse-large",
            "parse event frame (~4 KiB)",
            "serde_json::Value parse",
            2_000,
            0.9,
        ),
    ];
    for (op, name, base, n, target) in ops {
        match (
            callgrind_per_op(op, n),
            callgrind_per_op(&format!("{op}-bare"), n),
        ) {
            (Some(ours), Some(bare)) => {
                // Fewer instructions is better: the ratio is bare / ours, as throughput would be.
                let ratio = bare / ours;
                r.rows.push(Row {
                    name: format!("8. instructions per op: {name}"),
                    value: ours,
                    unit: "instr",
                    baseline: Some((format!("{base} (callgrind)"), bare)),
                    ratio: Some(ratio),
                    target: format!("bare/ours >= {target}"),
                    met: Some(ratio >= target),
                });
            }
            _ => r.plain(
                &format!("8. instructions per op: {name}"),
                f64::NAN,
                "instr",
                "valgrind not installed (apt-get install valgrind)",
                None,
            ),
        }
    }
}
