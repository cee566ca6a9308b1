//! The built binary against the real server on loopback.

use std::process::{Command, Output};

use x402_server::{Config, ServerBuilder};

mod browser;
mod clients;
mod failures;
mod resume;
mod terminal;
mod withdraw;

const KEY: &str = atomicstream_testkit::DEV_KEY;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_atomicstream"));
    c.env_remove("X402_PRIVATE_KEY")
        .env_remove("ATOMICSTREAM_BASE_URL")
        .env("RUST_LOG", "warn");
    c
}

async fn run(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

async fn server() -> String {
    let mut cfg = Config::demo("127.0.0.1:0".parse().unwrap());
    cfg.secret = Some("cli-test-secret-cli-test-secret-cli-test".into());
    let s = ServerBuilder::new(cfg).bind().await.unwrap();
    let base = s.http_base().to_string();
    s.spawn();
    base
}

/// `--version` is the tool's version on every command; the protocol
/// version has its own flag.
#[test]
fn version_is_the_tools_everywhere() {
    for args in [
        &["--version"][..],
        &["schema", "--version"],
        &["stream", "--version"],
    ] {
        let out = bin().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        // `atomicstream 0.1.0`, `atomicstream-schema 0.1.0`, ...
        assert!(
            text.starts_with("atomicstream")
                && text
                    .trim()
                    .ends_with(&format!(" {}", env!("CARGO_PKG_VERSION"))),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn help_documents_commands_and_exit_codes() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "schema",
        "stream",
        "pay",
        "serve",
        "facilitator",
        "keygen",
        "demo",
        "Exit codes",
        "3  the spending policy",
    ] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }
    let out = bin().args(["stream", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("--max-per-slice")
            && text.contains("--budget")
            && text.contains("--key-file")
    );
    // Usage errors exit 2.
    assert_eq!(
        bin().arg("no-such-command").output().unwrap().status.code(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_human_and_json() {
    let base = server().await;
    let mut c = bin();
    c.args(["schema", "btc-usd", "--base-url", &base]);
    let out = run(c).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0.05 USDC per slice of 300 s"), "{text}");
    let mut c = bin();
    c.args([
        "schema",
        "btc-usd",
        "--base-url",
        &base,
        "--json",
        "--protocol",
        "v1",
    ]);
    let out = run(c).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], "1");
    assert_eq!(v["paymentDetails"]["network"], "base-sepolia");
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_prints_json_lines_and_stops_after_slices() {
    let base = server().await;
    for v in ["v1", "v2"] {
        let mut c = bin();
        c.args([
            "stream",
            "demo-fast",
            "--base-url",
            &base,
            "--protocol",
            v,
            "--slices",
            "2",
        ])
        .env("X402_PRIVATE_KEY", KEY);
        let out = run(c).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert!(lines.len() > 50, "{} lines", lines.len());
        let mut last = None;
        for l in &lines {
            let j: serde_json::Value = serde_json::from_str(l).expect("every stdout line is JSON");
            let seq = j["seq"].as_u64().unwrap();
            if let Some(p) = last {
                assert_eq!(seq, p + 1);
            }
            last = Some(seq);
            assert!(j["data"].is_object());
        }
        assert!(
            err.contains("summary: 2 slices bought, 0.008 USDC paid"),
            "{err}"
        );
        assert!(
            err.contains("ended: the requested number of slices was bought and used (exit 0)"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reaching_the_budget_exits_0_and_missing_key_exits_2() {
    let base = server().await;
    let mut c = bin();
    c.args([
        "stream",
        "demo-fast",
        "--base-url",
        &base,
        "--budget",
        "0.004",
    ])
    .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    let err = String::from_utf8_lossy(&out.stderr);
    // Reaching one's own budget after buying slices is a normal end.
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("1 slices bought")
            && err.contains("the spending policy declined the next slice after 0.004 USDC of a 0.004 USDC budget")
            && err.contains("(exit 0)")
            && !err.contains("PaymentDeclined {"),
        "{err}"
    );
    // Per-slice cap below the price: refused before any signature.
    let mut c = bin();
    c.args([
        "stream",
        "btc-usd",
        "--base-url",
        &base,
        "--max-per-slice",
        "0.01",
    ])
    .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    assert_eq!(out.status.code(), Some(3));
    // The refusal is said in USDC and names the flag to change.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.01 USDC") && err.contains("--max-per-slice"),
        "{err}"
    );
    let mut c = bin();
    c.args(["stream", "demo-fast", "--base-url", &base]);
    let out = run(c).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("X402_PRIVATE_KEY") && err.contains("(exit 2)"),
        "{err}"
    );
    // Nothing listening: transport failure, 5.
    let mut c = bin();
    c.args(["stream", "demo-fast", "--base-url", "http://127.0.0.1:9"])
        .env("X402_PRIVATE_KEY", KEY);
    assert_eq!(run(c).await.status.code(), Some(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn pay_output_is_accepted_by_the_server() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let base = server().await;
    let dir = std::env::temp_dir().join(format!("atomicstream-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for v in ["v1", "v2"] {
        let r = reqwest::get(format!("{base}/{v}/schema/btc-usd"))
            .await
            .unwrap();
        let required = r
            .headers()
            .get("PAYMENT-REQUIRED")
            .map(|h| h.to_str().unwrap().to_string());
        let body = r.text().await.unwrap();
        let schema = x402_types::Schema::from_json(body.as_bytes()).unwrap();
        // v1: the body; v2: the header line as curl prints it (lower-case
        // name: header names are case-insensitive).
        let input = if v == "v1" {
            body.clone()
        } else {
            format!("payment-required: {}\n", required.unwrap())
        };
        let file = dir.join(format!("{v}.402"));
        std::fs::write(&file, input).unwrap();
        let mut c = bin();
        c.args(["pay", file.to_str().unwrap()])
            .env("X402_PRIVATE_KEY", KEY);
        let out = run(c).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        let (name, value) = line.trim().split_once(": ").unwrap();
        assert_eq!(
            name,
            if v == "v1" {
                "X-PAYMENT"
            } else {
                "PAYMENT-SIGNATURE"
            }
        );
        let mut req = schema
            .websocket_endpoint
            .as_str()
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        let (_ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("the server accepts the payment");
        assert_eq!(resp.status(), 101);
    }
    // Over the cap: exit 3, nothing printed.
    let mut c = bin();
    c.args([
        "pay",
        dir.join("v1.402").to_str().unwrap(),
        "--max-per-slice",
        "0.001",
    ])
    .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keygen_writes_a_private_file() {
    let dir = std::env::temp_dir().join(format!("atomicstream-keygen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dev.key");
    let _ = std::fs::remove_file(&path);
    let out = bin()
        .args(["keygen", "--out", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let addr = String::from_utf8(out.stdout).unwrap();
    let key = std::fs::read_to_string(&path).unwrap();
    let signer = x402_payer::LocalSigner::from_hex(&key).unwrap();
    assert_eq!(signer.to_string(), addr.trim());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Never overwrites.
    assert_eq!(
        bin()
            .args(["keygen", "--out", path.to_str().unwrap()])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_runs_and_exits_0() {
    let out = bin().arg("demo").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("slices bought     4"), "{err}");
    assert!(err.contains("retried with the same payload: 1"), "{err}");
    let reconnects: u64 = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("reconnects"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(reconnects >= 1, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_cleanly_with_a_summary() {
    let base = server().await;
    let mut c = bin();
    c.args(["stream", "btc-usd", "--base-url", &base])
        .env("X402_PRIVATE_KEY", KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id().to_string();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let killed = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("summary: 1 slices bought")
            && err.contains("ended: stopped: interrupted (Ctrl-C)")
            // Most of the 300-second slice is left: the way to keep it is named.
            && err.contains("run with --session-file FILE to keep it for --resume")
            && err.contains("(exit 0)"),
        "{err}"
    );
    // Every stdout line is a complete JSON event even though it was interrupted.
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
}

#[test]
fn demo_on_a_local_chain_moves_usdc_and_shows_the_transactions() {
    let out = bin().args(["demo", "--chain"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("4 settlements on chain"), "{err}");
    // The lost renewal answer cost nothing: four slices, paid once each.
    assert!(err.contains("slices bought     4"), "{err}");
    assert!(err.contains("amount paid       0.016 USDC"), "{err}");
    let hashes = err
        .lines()
        .filter(|l| {
            let t = l.trim();
            t.len() == 66 && t.starts_with("0x")
        })
        .count();
    assert_eq!(hashes, 4, "{err}");
    assert!(
        err.contains("payer") && err.contains("now has 0.984 USDC"),
        "{err}"
    );
    assert!(err.contains("has 0.016 USDC"), "{err}");
}

#[test]
fn demo_with_a_channel_deposits_once_and_refunds_the_rest() {
    let out = bin()
        .args(["demo", "--chain", "--scheme", "batch-settlement"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // One deposit of 12 slices (0.048 USDC), four slices bought, billed per second:
    // the paid time left when the blip dropped the socket went back to the channel.
    assert!(
        err.contains("deposited 0.048 USDC once into channel 0x"),
        "{err}"
    );
    assert!(err.contains("paid by an off-chain voucher"), "{err}");
    assert!(err.contains("slices bought     4"), "{err}");
    let usdc = |after: &str| -> u64 {
        let i = err
            .find(after)
            .unwrap_or_else(|| panic!("no {after:?} in {err}"))
            + after.len();
        let text: String = err[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        x402_types::Amount::from_display(&text, 6)
            .unwrap()
            .atomic()
            .to_u64()
            .unwrap()
    };
    let charged = usdc("charged           ");
    assert!((12_000..=16_000).contains(&charged), "{err}");
    assert_eq!(charged % 1_000, 0, "whole seconds at 0.001 USDC: {err}");
    assert_eq!(usdc("the payer lost "), charged, "{err}");
    assert_eq!(usdc("the payee gained "), charged, "{err}");
    assert_eq!(
        usdc("  refund            "),
        48_000 - charged,
        "the deposit less the charge came back: {err}"
    );
    assert!(
        err.contains(&format!("USDC for {} s of stream", charged / 1_000)),
        "{err}"
    );
    // Without a chain there is no channel to open.
    let out = bin()
        .args(["demo", "--scheme", "batch-settlement"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --chain"));
}

/// Runs the binary on a pseudo-terminal (Python's `pty`, in every CI image) and returns what the
/// terminal received.
fn on_terminal(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)")
        .arg(env!("CARGO_BIN_EXE_atomicstream"))
        .args(args)
        .env("X402_PRIVATE_KEY", KEY)
        .env("COLUMNS", "200")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("python3 runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_a_live_status_line_and_a_readable_end() {
    let base = server().await;
    let (code, screen) = tokio::task::spawn_blocking(move || {
        on_terminal(&["stream", "demo-fast", "--base-url", &base, "--slices", "2"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{screen}");
    // The live line: stream, slice number, time left, spent of budget, events and rate, reconnects.
    assert!(screen.contains("demo-fast  slice "), "{screen}");
    assert!(screen.contains(" left  spent 0.00"), "{screen}");
    assert!(screen.contains(" USDC of "), "{screen}");
    assert!(screen.contains("/s)  0 reconnects"), "{screen}");
    // Words, local clock times and USDC; no Debug dumps, no raw unix times.
    assert!(screen.contains("paid until "), "{screen}");
    assert!(screen.contains(" left"), "{screen}");
    assert!(
        screen.contains("ended: the requested number of slices was bought and used (exit 0)"),
        "{screen}"
    );
    assert!(
        !screen.contains("SliceLimit") && !screen.contains("Hello("),
        "{screen}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_json_and_quiet_for_programs() {
    let base = server().await;
    let mut c = bin();
    c.args([
        "stream",
        "demo-fast",
        "--base-url",
        &base,
        "--slices",
        "1",
        "--status-json",
    ])
    .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let types: Vec<&str> = lines.iter().filter_map(|l| l["type"].as_str()).collect();
    assert!(
        types.contains(&"hello") && types.contains(&"expired"),
        "{types:?}"
    );
    let status = lines
        .iter()
        .find(|l| l["type"] == "status")
        .expect("a status line");
    assert_eq!(status["slice"], 1, "{status}");
    assert_eq!(status["spent"], "0.004", "{status}");
    let end = lines.last().unwrap();
    assert_eq!(
        (end["type"].as_str(), end["exit"].as_u64()),
        (Some("ended"), Some(0))
    );
    let mut c = bin();
    c.args([
        "stream",
        "demo-fast",
        "--base-url",
        &base,
        "--slices",
        "1",
        "--quiet",
    ])
    .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ended: "), "{err}");
}

#[test]
fn config_example_is_valid_and_check_names_each_problem() {
    let out = bin().args(["config", "example"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let example = String::from_utf8(out.stdout).unwrap();
    let dir = std::env::temp_dir().join(format!("cfgcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, &example).unwrap();
    let out = bin()
        .args(["serve", "--check", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("valid (1 streams"), "{err}");
    // No facilitator, a short secret, a negative price: three problems, each with its field.
    let bad_text = example
        .replace("[facilitator]\nkind = \"embedded\"", "")
        .replace(
            "# secret = \"change me: at least thirty-two bytes of random text\"",
            "secret = \"short\"",
        )
        .replace("price_per_minute = \"0.01\"", "price_per_minute = \"-1\"");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, bad_text).unwrap();
    let out = bin()
        .args(["serve", "--check", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("3 problems"), "{err}");
    for field in [
        "  - facilitator: ",
        "  - secret: ",
        "  - streams[0] (btc-usd).price_per_minute: ",
    ] {
        assert!(err.contains(field), "{field} missing in {err}");
    }
    // A Redis store without a shared secret: instances could not read each other's tokens.
    let redis_text = example.replace(
        "# [store]\n# kind = \"redis\"\n# url = \"redis://127.0.0.1:6379\"",
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"",
    );
    assert_ne!(redis_text, example, "the example shows the [store] section");
    let redis = dir.join("redis.toml");
    std::fs::write(&redis, redis_text).unwrap();
    let out = bin()
        .args(["serve", "--check", "--config", redis.to_str().unwrap()])
        .env_remove("X402_SERVER_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("  - secret: instances sharing a store"),
        "{err}"
    );
    // A misspelt key: its path and the key meant.
    let typo = dir.join("typo.toml");
    std::fs::write(
        &typo,
        example.replace("slice_seconds = 300", "slice_secnds = 300"),
    )
    .unwrap();
    let out = bin()
        .args(["serve", "--check", "--config", typo.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`streams[0].slice_secnds` (did you mean `slice_seconds`?)"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn log_format_json_writes_json_lines() {
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let warn = err
        .lines()
        .find(|l| l.contains("NOTHING IS SETTLED"))
        .unwrap_or_else(|| panic!("{err}"));
    let v: serde_json::Value = serde_json::from_str(warn).expect("a JSON log line");
    assert_eq!(v["level"], "WARN", "{v}");
    // Only JSON: the banner too is one JSON line, nothing plain in between.
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
    }
    assert!(err.contains("atomicstream server started"), "{err}");
}

/// `stream … | head -3`: once the reader has gone, no further slice is
/// bought (a closed stdout stops the session within a status tick, long
/// before the next renewal of a 4-second slice).
#[tokio::test]
async fn a_reader_that_left_is_never_paid_for_again() {
    use std::io::BufRead;
    let base = server().await;
    let out = tokio::task::spawn_blocking(move || {
        let mut c = bin();
        c.args([
            "stream",
            "demo-fast",
            "--base-url",
            &base,
            "--budget",
            "0.50",
        ])
        .env("X402_PRIVATE_KEY", KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            let stdout = child.stdout.take().unwrap();
            let mut lines = std::io::BufReader::new(stdout).lines();
            for _ in 0..3 {
                assert!(lines.next().unwrap().unwrap().contains("\"seq\""));
            }
            // `head` exits: the pipe's reading end closes here.
        }
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(15),
                "still streaming for a reader that left"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("1 slices bought"), "{err}");
}

/// A stream id the server does not sell is a usage error (exit 2) that
/// names the ids it sells; `atomicstream streams` lists them with prices.
#[tokio::test]
async fn an_unknown_stream_lists_the_catalog_and_streams_prints_it() {
    let base = server().await;
    let mut c = bin();
    c.args(["stream", "btc-usdd", "--base-url", &base])
        .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sells no stream `btc-usdd`")
            && err.contains("btc-usd, demo-fast, eth-usd")
            && err.contains("nothing was paid"),
        "{err}"
    );
    let mut c = bin();
    c.args(["schema", "nope", "--base-url", &base]);
    assert_eq!(run(c).await.status.code(), Some(2));
    let mut c = bin();
    c.args(["streams", "--base-url", &base]);
    let out = run(c).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["btc-usd", "demo-fast", "eth-usd"], "{text}");
    assert!(text.contains("0.06 USDC per minute, 4 s slices"), "{text}");
}
