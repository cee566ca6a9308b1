//! `atomicstream facilitator` as a process: settling on a local anvil chain
//! for payments signed and sent by the official x402 Python SDK, refusing to
//! run `--evm` without a key unless told, and refusing cross-site requests.

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use x402_chain::anvil::{Anvil, BASE_SEPOLIA_USDC, DEV_KEYS};
use x402_types::{Amount, Network, Requirement};

const KEY: &str = "cli-facilitator-key-cli-facilitator-key";
const PRICE: u64 = 10_000;
const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"; // anvil account 2
const SDK_ADDR: &str = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"; // anvil account 3

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_atomicstream"));
    c.env_remove("X402_FACILITATOR_KEY")
        .env_remove("X402_RELAYER_KEY")
        .env("RUST_LOG", "warn");
    c
}

/// A running `atomicstream facilitator`, killed when dropped (a failed
/// assertion leaves no process behind).
struct Facilitator {
    child: Child,
    port: u16,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Facilitator {
    /// Starts it on port 0 and waits until it says where it listens (a port
    /// chosen here could be taken by a parallel test before it binds).
    fn start(args: &[&str]) -> Facilitator {
        let mut child = bin()
            .args(["facilitator", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("X402_RELAYER_KEY", DEV_KEYS[1])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line
                    .split("facilitator API on http://")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                {
                    let _ = tx.send(addr.port());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let port = rx.recv_timeout(Duration::from_secs(30));
        let mut f = Facilitator {
            child,
            port: 0,
            stderr: Some(reader),
        };
        match port {
            Ok(p) => f.port = p,
            Err(_) => panic!("the facilitator never said where it listens: {}", f.stop()),
        }
        f
    }

    /// Stops it; its stderr.
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|r| r.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Facilitator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One raw HTTP/1.1 exchange over loopback: the status and the body.
fn http(port: u16, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

fn post(port: u16, host: &str, headers: &str, body: &str) -> u16 {
    http(
        port,
        &format!(
            "POST /settle HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .0
}

fn requirement() -> Requirement {
    Requirement {
        scheme: "exact".into(),
        network: Network::BASE_SEPOLIA,
        amount: Amount::from(PRICE),
        asset: BASE_SEPOLIA_USDC.into(),
        pay_to: PAY_TO.into(),
        max_timeout_seconds: 120,
        extra: Some(serde_json::json!({"name": "USDC", "version": "2"})),
    }
}

/// The official x402 Python SDK signs the payment `required` asks for and,
/// with its own HTTP facilitator client, verifies it, settles it and settles
/// it again through the facilitator at `port` (see `official_pay.py`).
fn official_sdk_pays(port: u16, required: serde_json::Value) -> serde_json::Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = root.join("target/tools/py");
    assert!(
        py.join("x402").exists() && py.join("httpx").exists(),
        "the official x402 SDK is not installed: run `cargo xtask tools`"
    );
    let input = serde_json::json!({
        "required": required,
        "facilitator": format!("http://127.0.0.1:{port}"),
    });
    let mut child = Command::new("python3")
        .arg(root.join("crates/x402-chain/tests/interop/official_pay.py"))
        .env("PYTHONPATH", &py)
        .env("X402_SDK_KEY", DEV_KEYS[3])
        .env("X402_FACILITATOR_KEY", KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn facilitator_evm_settles_official_sdk_payments_v1_and_v2_and_refuses_their_replays() {
    let anvil = Anvil::start(84532).expect("anvil (run `cargo xtask tools`)");
    let token = anvil.install_test_usdc().await.unwrap();
    anvil
        .mint(token, SDK_ADDR.parse().unwrap(), 1_000_000)
        .await
        .unwrap();
    let payee0 = anvil
        .usdc_balance(token, PAY_TO.parse().unwrap())
        .await
        .unwrap();
    let url = anvil.url();
    let mut f = tokio::task::spawn_blocking(move || {
        Facilitator::start(&[
            "--evm",
            "--rpc-url",
            &url,
            "--network",
            "base-sepolia",
            "--api-key",
            KEY,
        ])
    })
    .await
    .unwrap();
    let port = f.port;
    let supported = tokio::task::spawn_blocking(move || {
        http(
            port,
            &format!("GET /supported HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"),
        )
    })
    .await
    .unwrap();
    assert_eq!(supported.0, 200, "{supported:?}");
    assert!(
        supported.1.contains("eip155:84532") && supported.1.contains("base-sepolia"),
        "{supported:?}"
    );
    assert!(
        supported
            .1
            .contains("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
        "relayer listed: {supported:?}"
    );
    let mut txs = Vec::new();
    for (version, network) in [(1, "base-sepolia"), (2, "eip155:84532")] {
        let required = if version == 1 {
            serde_json::json!({
                "x402Version": 1,
                "error": "payment required",
                "accepts": [requirement().to_v1("ws://h/v1/stream/s", "t")],
            })
        } else {
            serde_json::json!({
                "x402Version": 2,
                "resource": {"url": "ws://h/v2/stream/s", "description": "t", "mimeType": "application/json"},
                "accepts": [requirement().to_v2()],
            })
        };
        let r = tokio::task::spawn_blocking(move || official_sdk_pays(port, required))
            .await
            .unwrap();
        assert_eq!(r["payload"]["x402Version"], version, "{r}");
        assert_eq!(r["verify"]["isValid"], true, "v{version}: {r}");
        assert_eq!(r["settle"]["success"], true, "v{version}: {r}");
        assert_eq!(r["settle"]["network"], network, "v{version}: {r}");
        let tx = r["settle"]["transaction"].as_str().unwrap().to_string();
        assert_eq!(tx.len(), 66, "{r}");
        assert_eq!(r["replay"]["success"], false, "v{version}: {r}");
        assert_eq!(
            r["replay"]["errorReason"], "invalid_exact_evm_nonce_already_used",
            "v{version}: {r}"
        );
        assert_eq!(r["replay"]["transaction"], tx.as_str(), "{r}");
        txs.push(tx);
    }
    let err = f.stop();
    assert!(
        err.contains("bearer key required") && err.contains("relayer 0x70997970"),
        "{err}"
    );
    assert_ne!(txs[0], txs[1]);
    assert_eq!(
        anvil
            .usdc_balance(token, PAY_TO.parse().unwrap())
            .await
            .unwrap(),
        payee0 + x402_chain::EvmU256::from(2 * PRICE),
        "two payments moved money once each; the replays moved nothing"
    );
}

#[test]
fn facilitator_evm_without_a_key_refuses_to_start_unless_told() {
    let out = bin()
        .args([
            "facilitator",
            "--listen",
            "127.0.0.1:0",
            "--evm",
            "--rpc-url",
            "http://127.0.0.1:9",
        ])
        .env("X402_RELAYER_KEY", DEV_KEYS[1])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--api-key") && err.contains("--insecure-no-key"),
        "{err}"
    );
    // A key too short is a usage error before anything listens.
    let out = bin()
        .args([
            "facilitator",
            "--listen",
            "127.0.0.1:0",
            "--api-key",
            "short",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("at least 32 bytes") && !err.contains("facilitator API on"),
        "{err}"
    );
}

#[test]
fn facilitator_evm_without_a_key_warns_and_still_refuses_cross_site_requests() {
    let anvil = Anvil::start(84532).expect("anvil (run `cargo xtask tools`)");
    let mut f = Facilitator::start(&["--evm", "--rpc-url", &anvil.url(), "--insecure-no-key"]);
    let json = "Content-Type: application/json\r\n";
    let body = r#"{"x402Version":2}"#;
    // A web page's "simple" request: text/plain needs no preflight.
    assert_eq!(
        post(f.port, "127.0.0.1", "Content-Type: text/plain\r\n", body),
        415
    );
    // Any request from a page carries its Origin.
    let origin = format!("{json}Origin: https://evil.example\r\n");
    assert_eq!(post(f.port, "127.0.0.1", &origin, body), 403);
    // DNS rebinding: the page's own name in Host.
    assert_eq!(post(f.port, "evil.example", json, body), 421);
    let rebound = format!("evil.example:{}", f.port);
    assert_eq!(post(f.port, &rebound, json, body), 421);
    // A local JSON client is served (a bad body is its own 400).
    assert_eq!(
        post(f.port, &format!("localhost:{}", f.port), json, body),
        400
    );
    let err = f.stop();
    assert!(
        err.contains("INSECURE") && err.contains("spend its gas"),
        "{err}"
    );
}
