//! The client recipes of docs/clients.md, run end to end against the real
//! server: `examples/clients/python/buy_stream.py` (the official x402 Python
//! SDK) and `examples/clients/node/buy_stream.mjs` (`@x402/fetch`) each pay
//! the first slice through the renew URL, read the plain WebSocket, renew on
//! `expiring`, and stop after a number of events that needs two slices.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::KEY;

/// The recipes' stream: 20 events a second in 9-second slices, so the
/// `expiring` notice comes 3 s ahead (a third of a slice) and a recipe on a
/// loaded machine has time to sign and settle its renewal without a gap.
const STREAM: &str = "recipe";

/// Events asked of each recipe: 200 at 20 a second need a second slice.
const EVENTS: usize = 200;

/// A recipe must be done by then (it needs about 6 s).
const DEADLINE: Duration = Duration::from_secs(40);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `c` to its end, killing it after `DEADLINE`; stdout and stderr are
/// read on their own threads so a chatty child never blocks on a full pipe.
fn run_bounded(mut c: Command, what: &str) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} could not start: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap()).to_string();
            panic!("{what} did not finish within {DEADLINE:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// A server selling the demo catalog and [`STREAM`].
async fn recipe_server() -> String {
    let mut cfg = x402_server::Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some("recipe-test-secret-recipe-test-secret".into());
    let mut s = cfg.streams[0].clone();
    s.id = STREAM.into();
    s.slice_seconds = 9;
    s.price_per_minute = "0.06".into();
    s.source = x402_server::SourceConfig::Synthetic {
        rate: 20.0,
        symbol: "BTC-USD".into(),
        pad: 0,
    };
    cfg.streams.push(s);
    let server = x402_server::ServerBuilder::new(cfg).bind().await.unwrap();
    let base = server.http_base().to_string();
    server.spawn();
    base
}

/// Runs one recipe against a fresh server and checks it: exit 0, `EVENTS`
/// events in order and without a gap (the renewal came in time), and at
/// least two slices paid, as the recipe says and the server counted.
async fn recipe_buys_and_renews(what: &str, mut c: Command) {
    let base = recipe_server().await;
    c.args([&base, STREAM, "--events", &EVENTS.to_string()])
        .env("X402_PRIVATE_KEY", KEY);
    let name = what.to_string();
    let out = tokio::task::spawn_blocking(move || run_bounded(c, &name))
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{what}:\n{err}");
    let mut seqs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{what}: stdout line {line:?} is not JSON: {e}"));
        assert_eq!(v["type"], "event", "{what}: {line}");
        assert!(v["data"].is_object(), "{what}: {line}");
        seqs.push(v["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seqs.len(), EVENTS, "{what}:\n{err}");
    for w in seqs.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "{what}: events out of order or lost:\n{err}"
        );
    }
    let paid = err.matches("buy_stream: paid slice ").count() as u64;
    assert!(
        paid >= 2 && err.contains("expiring:"),
        "{what}: no renewal on `expiring`:\n{err}"
    );
    assert!(
        err.contains(&format!("summary: {EVENTS} events, {paid} slices paid")),
        "{what}:\n{err}"
    );
    assert_eq!(
        crate::credited(&base, Some(STREAM)).await,
        paid,
        "{what}: the server's count of slices paid"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_recipe_with_the_official_sdk_buys_and_renews() {
    let py = repo().join("target/tools/py");
    assert!(
        py.join("x402").exists() && py.join("httpx").exists() && py.join("websockets").exists(),
        "the x402 Python SDK or `websockets` is not installed in target/tools/py: run `cargo xtask tools`"
    );
    let mut c = Command::new("python3");
    c.arg(repo().join("examples/clients/python/buy_stream.py"))
        .env("PYTHONPATH", &py);
    recipe_buys_and_renews("the Python recipe", c).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_recipe_with_x402_fetch_buys_and_renews() {
    let dir = repo().join("examples/clients/node");
    let modules = dir.join("node_modules");
    assert!(
        ["@x402/fetch", "@x402/evm", "viem", "ws"]
            .iter()
            .all(|m| modules.join(m).join("package.json").exists()),
        "the Node recipe's packages are not installed in examples/clients/node/node_modules: run `cargo xtask tools`"
    );
    let mut c = Command::new("node");
    c.arg(dir.join("buy_stream.mjs"));
    recipe_buys_and_renews("the Node recipe", c).await;
}
