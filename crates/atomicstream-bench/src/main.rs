//! Benchmarks with baselines measured in the same run, and the soak run.
//! Use through `cargo xtask bench` and `cargo xtask soak`.

mod bare_server;
mod broadcast;
mod channel_sessions;
mod counts;
mod decode;
mod fanout;
mod fanout_process;
mod fixture;
mod handshake;
mod peers;
mod process;
mod receive;
mod report;
mod scale;
mod sign;
mod soak;
mod vouchers;

use broadcast::bench_broadcast;
use channel_sessions::bench_channel_sessions;
use counts::{bench_counts, count_op};
use decode::bench_decode;
use fanout::bench_fanout;
use fanout_process::bench_fanout_process;
use handshake::bench_handshake;
use peers::bench_peers;
use receive::bench_receive;
use report::{Report, print};
use scale::bench_scale;
use sign::bench_signing;
use vouchers::bench_vouchers;

/// mimalloc returns freed pages to the OS, so the soak's resident set measures live memory.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `--help` prints.
const USAGE: &str = "\
atomicstream-bench: benchmarks against baselines measured in the same run (use `cargo xtask bench`)

usage:
  atomicstream-bench [bench] [--quick] [--only a,b] [--peers] [--redis] [row options]
  atomicstream-bench soak [seconds] [--instances N] [--redis]
  atomicstream-bench bare-server RATE PORT     the bare broadcast server of row 4c
  atomicstream-bench count OP N                one operation N times (for callgrind)

sections for --only (all but peers by default):
  {sections}
row options: --fanout-rounds R, --fanout-rates a,b,..  --channel-sessions N, --channel-slices N
";

/// What `--help` prints, with the sections filled in, seven to a line.
fn usage() -> String {
    let lines: Vec<String> = SECTIONS.chunks(7).map(|c| c.join(", ")).collect();
    USAGE.replace("{sections}", &lines.join(",\n  "))
}

/// The value after flag `name`, if given.
fn value_of<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

/// The sections `--only` names.
const SECTIONS: &[&str] = &[
    "sign",
    "parse",
    "counts",
    "receive",
    "receive-large",
    "handshake",
    "fanout",
    "fanout10k",
    "broadcast",
    "scale",
    "vouchers",
    "channels",
    "peers",
];

/// The flags a bench run takes; with their values where they have one.
const FLAGS: &[(&str, bool)] = &[
    ("--quick", false),
    ("--peers", false),
    ("--redis", false),
    ("--only", true),
    ("--fanout-rounds", true),
    ("--fanout-rates", true),
    ("--channel-sessions", true),
    ("--channel-slices", true),
];

/// The first argument a bench run does not know, if any.
fn unknown_arg(args: &[String]) -> Option<&str> {
    let mut it = args.iter().skip_while(|a| *a == "bench");
    while let Some(a) = it.next() {
        match FLAGS.iter().find(|(f, _)| f == a) {
            Some((_, true)) => {
                it.next();
            }
            Some((_, false)) => {}
            None => return Some(a),
        }
    }
    None
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", usage());
        return;
    }
    if args.first().map(String::as_str) == Some("soak") {
        let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(120);
        let instances = value_of(&args, "--instances")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let redis = args.iter().any(|a| a == "--redis");
        std::process::exit(soak::run(secs, instances, redis).await);
    }
    if args.first().map(String::as_str) == Some("bare-server") {
        // The baseline server of row 4c, in its own process: `bare-server RATE PORT`.
        let rate = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10.0);
        let port = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        bare_server::run(rate, port).await;
        return;
    }
    if args.first().map(String::as_str) == Some("count") {
        let op = args.get(1).map_or("", String::as_str);
        let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        count_op(op, n);
        return;
    }
    if let Some(a) = unknown_arg(&args) {
        eprintln!("atomicstream-bench: unknown argument {a:?}\n\n{}", usage());
        std::process::exit(2);
    }
    let quick = args.iter().any(|a| a == "--quick");
    // `--only a,b`: run only the named sections (SECTIONS); all but peers by default.
    let only: Option<Vec<String>> =
        value_of(&args, "--only").map(|s| s.split(',').map(str::to_string).collect());
    if let Some(bad) = only
        .iter()
        .flatten()
        .find(|n| !SECTIONS.contains(&n.as_str()))
    {
        eprintln!(
            "atomicstream-bench: --only: no section {bad:?}\n\n{}",
            usage()
        );
        std::process::exit(2);
    }
    let run = |name: &str| match &only {
        Some(list) => list.iter().any(|n| n == name),
        None => true,
    };
    let mut r = Report::default();
    if run("sign") {
        eprintln!("bench: signing and verification");
        bench_signing(&mut r);
    }
    if run("parse") {
        eprintln!("bench: decoding");
        bench_decode(&mut r);
    }
    if run("counts") {
        eprintln!("bench: instruction counts (callgrind)");
        bench_counts(&mut r);
    }
    if run("receive") {
        eprintln!("bench: client receive path");
        // Each full round moves about half a second of frames per client.
        bench_receive(&mut r, 100, if quick { 20_000 } else { 500_000 }).await;
        bench_receive(&mut r, 4096, if quick { 5_000 } else { 100_000 }).await;
    }
    if run("receive") || run("receive-large") {
        bench_receive(&mut r, 65_536, if quick { 300 } else { 10_000 }).await;
    }
    if run("handshake") {
        eprintln!("bench: handshake");
        bench_handshake(&mut r, None).await;
    }
    if run("fanout") {
        eprintln!("bench: fan-out");
        for n in [1, 100, 1000] {
            bench_fanout(&mut r, n, None).await;
        }
    }
    if run("fanout") || run("fanout10k") {
        let (n, rounds) = if quick { (2_000, 1) } else { (10_000, 3) };
        let (capacity, rates): (usize, &[f64]) = if quick {
            (500, &[20.0, 40.0])
        } else {
            (2_000, &[50.0, 100.0, 150.0, 200.0, 300.0, 400.0, 500.0])
        };
        // `--fanout-rounds R` and `--fanout-rates a,b,..` (empty: no steps) for
        // experiments on this row alone.
        let rounds = value_of(&args, "--fanout-rounds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(rounds);
        let rates: Vec<f64> = match value_of(&args, "--fanout-rates") {
            Some(v) => match v
                .split(',')
                .filter(|x| !x.is_empty())
                .map(str::parse)
                .collect()
            {
                Ok(rates) => rates,
                Err(e) => {
                    eprintln!(
                        "bench: --fanout-rates {v:?}: {e} (events a second, comma-separated)"
                    );
                    std::process::exit(2);
                }
            },
            None => rates.to_vec(),
        };
        bench_fanout_process(&mut r, n, 100, rounds, capacity, &rates).await;
    }
    // --redis: the same rows with the server's state in a local redis-server.
    let redis = if args.iter().any(|a| a == "--redis") {
        match atomicstream_testkit::Redis::try_start() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("bench: --redis: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    if let Some(redis) = &redis {
        let url = redis.url();
        eprintln!("bench: handshake and fan-out through Redis");
        bench_handshake(&mut r, Some(&url)).await;
        for n in [1, 100, 1000] {
            bench_fanout(&mut r, n, Some(&url)).await;
        }
    }
    if run("broadcast") {
        eprintln!("bench: server broadcast against a bare tokio-tungstenite server");
        let (n_small, n_large) = if quick { (2_000, 500) } else { (10_000, 2_000) };
        bench_broadcast(&mut r, 100, 100, n_small, 5).await;
        bench_broadcast(&mut r, 100, 4096, n_large, 5).await;
    }
    if run("scale") {
        eprintln!("bench: scale (server in its own process)");
        bench_scale(&mut r, if quick { &[1_000] } else { &[1_000, 10_000] }).await;
    }
    if run("vouchers") {
        eprintln!("bench: voucher verification");
        bench_vouchers(&mut r);
    }
    if run("channels") {
        // `--channel-sessions N` (default 10,000; 1,000 with --quick), `--channel-slices S`
        // (default 4: one deposit and three vouchers).
        let flag = |name: &str| value_of(&args, name).and_then(|n| n.parse::<usize>().ok());
        let n = flag("--channel-sessions").unwrap_or(if quick { 1_000 } else { 10_000 });
        let slices = flag("--channel-slices").unwrap_or(4) as u64;
        eprintln!("bench: {n} channel sessions beside {n} exact ones (server in its own process)");
        bench_channel_sessions(&mut r, n, slices).await;
    }
    if args.iter().any(|a| a == "--peers") || only.as_ref().is_some_and(|_| run("peers")) {
        eprintln!("bench: peers (official x402 SDKs, where installed)");
        bench_peers(&mut r);
    }
    let json = print(&r);
    let _ = std::fs::create_dir_all("target/bench");
    let _ = std::fs::write(
        "target/bench/report.json",
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
    eprintln!("wrote target/bench/report.json");
}
