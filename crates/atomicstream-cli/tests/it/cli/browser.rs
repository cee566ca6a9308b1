//! The browser page at `/` in headless Chromium (Debian's `chromium`, which
//! `cargo xtask tools` installs): it lists the catalog and shows a paid
//! token's live events. Driven over the DevTools protocol, since live
//! WebSocket traffic does not follow `--virtual-time-budget`. Saves a
//! screenshot to `target/test-artifacts/browser-page.png`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{KEY, bin, run, server};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 1100;

/// `CHROMIUM`, else `chromium` on the PATH or in /usr/bin.
fn chromium_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium not found: run `cargo xtask tools` (installs Debian's chromium \
                 package), or set CHROMIUM to a Chromium binary"
            )
        })
}

/// A headless Chromium this test started; ended (and its profile removed) on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // `Browser.close` was asked for; wait a little, then make sure.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Starts Chromium with a fresh profile; returns it and its DevTools address.
fn launch() -> (Browser, String) {
    let profile = atomicstream_testkit::scratch("chromium");
    let mut child = Command::new(chromium_bin())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            &format!("--window-size={WIDTH},{HEIGHT}"),
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start chromium ({e}): run `cargo xtask tools`"));
    let stderr = child.stderr.take().unwrap();
    let browser = Browser { child, profile };
    // Chromium prints its DevTools address on stderr; the reader keeps
    // draining the pipe afterwards so Chromium never blocks on it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return (browser, url.trim().to_string());
                }
                seen.push(line);
            }
            Err(_) => panic!(
                "chromium gave no DevTools address within 30 s; its stderr:\n{}",
                seen.join("\n")
            ),
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools protocol connection to the browser, attached to one page.
struct Cdp {
    ws: Socket,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Cdp {
            ws,
            next: 0,
            session: None,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let ws = &mut self.ws;
        let reply = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if v["id"] == id {
                            return v;
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("the DevTools socket ended: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("DevTools: no answer to {method} within 20 s"));
        assert!(reply.get("error").is_none(), "DevTools {method}: {reply}");
        reply["result"].clone()
    }

    /// Opens `url` in a new page and attaches to it.
    async fn open(&mut self, url: &str) {
        let t = self.call("Target.createTarget", json!({"url": url})).await;
        let a = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": t["targetId"], "flatten": true}),
            )
            .await;
        self.session = Some(a["sessionId"].as_str().unwrap().to_string());
        // The window's frame takes some of --window-size: fix the viewport itself.
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls the page's state until `done` holds; panics with the last state after `secs`.
    async fn wait_for(&mut self, secs: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.eval(PROBE).await;
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the page did not show {what} within {secs} s; it shows: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// What the page shows, read from its DOM.
const PROBE: &str = r"(() => {
  const q = (s) => [...document.querySelectorAll(s)];
  const t = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
  return {
    streams: q('#catalog-rows tr.item').map((r) => r.dataset.stream),
    buy: q('#catalog-rows tr.buy code').map((c) => c.textContent),
    seqs: q('#event-rows tr.ev').map((r) => Number(r.dataset.seq)),
    data: q('#event-rows tr.ev td.data').slice(0, 3).map((c) => c.textContent),
    state: t('state'), stream: t('stat-stream'), paidUntil: t('paid-until'),
    timeLeft: t('time-left'), notice: t('notice'),
    injected: document.getElementById('pwn') !== null,
  };
})()";

fn decode_base64(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => panic!("not base64: {c:#x}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap());
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Seconds in the page's "time left" (`4:32`, `1:04:32` or `45 s`).
fn seconds(text: &str) -> Option<u64> {
    if let Some(s) = text.strip_suffix(" s") {
        return s.parse().ok();
    }
    text.split(':')
        .try_fold(0u64, |acc, p| Some(acc * 60 + p.parse::<u64>().ok()?))
}

/// Buys one slice of `id` as a browser user would before opening the page:
/// the token from the schema's `websocketEndpoint`, a payment signed by
/// `atomicstream pay`, POSTed to the renew URL. Returns the token.
async fn paid_token(http: &reqwest::Client, base: &str, id: &str) -> String {
    let r = http
        .get(format!("{base}/v2/schema/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let body = r.text().await.unwrap();
    let token = token_of(&serde_json::from_str(&body).unwrap());
    let dir = atomicstream_testkit::scratch("browser-pay");
    let file = dir.join("schema.json");
    std::fs::write(&file, &body).unwrap();
    let mut c = bin();
    c.arg("pay").arg(&file).env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let (name, value) = line.trim().split_once(": ").unwrap();
    let r = http
        .post(format!("{base}/v2/renew/{id}?t={token}"))
        .header(name, value)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    token
}

/// The token in a 402 schema's `websocketEndpoint`.
fn token_of(schema: &Value) -> String {
    let endpoint = schema["websocketEndpoint"].as_str().unwrap();
    endpoint.split_once("?t=").unwrap().1.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn page_shows_catalog_and_live_events_in_chromium() {
    let chromium = chromium_bin();
    assert!(
        Command::new(&chromium)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "{} does not run: run `cargo xtask tools`",
        chromium.display()
    );
    let base = server().await;
    let http = reqwest::Client::new();

    // The page: one self-contained file under a strict CSP.
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.headers().contains_key("content-security-policy"));
    let html = r.text().await.unwrap();
    for banned in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "<script src",
        "<link",
    ] {
        assert!(!html.contains(banned), "the page uses {banned}");
    }

    let token = paid_token(&http, &base, "btc-usd").await;
    let (browser, devtools) = tokio::task::spawn_blocking(launch).await.unwrap();
    let mut cdp = Cdp::connect(&devtools).await;
    cdp.open(&format!("{base}/#stream=btc-usd&t={token}")).await;

    // The catalog, and live events newest first.
    let s = cdp
        // 60 events (6 s of btc-usd): the burst of events published since the
        // payment has left the page's 5 s rate window by then.
        .wait_for(40, "60 live events", |s| {
            s["state"] == "live" && s["seqs"].as_array().is_some_and(|a| a.len() >= 60)
        })
        .await;
    let streams: Vec<&str> = s["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(streams, ["btc-usd", "demo-fast", "eth-usd"], "{s:#}");
    assert_eq!(
        s["buy"][0],
        format!("atomicstream stream btc-usd --base-url {base}"),
        "{s:#}"
    );
    let seqs: Vec<u64> = s["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(seqs.len() >= 60 && seqs.len() <= 200, "{s:#}");
    assert!(
        seqs.windows(2).all(|w| w[0] == w[1] + 1),
        "newest on top, none missing: {seqs:?}"
    );
    assert!(
        s["data"][0].as_str().unwrap().contains("symbol BTC-USD"),
        "{s:#}"
    );
    assert_eq!(s["stream"], "btc-usd");
    // One 300 s slice was bought a few seconds ago.
    let left = seconds(s["timeLeft"].as_str().unwrap()).unwrap();
    assert!((200..=300).contains(&left), "{s:#}");
    let until = s["paidUntil"].as_str().unwrap();
    assert!(until.len() == 8 && until.matches(':').count() == 2, "{s:#}");

    // The screenshot: a real PNG of the window, with more than a blank page in it.
    let shot = cdp
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = decode_base64(shot["data"].as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (WIDTH, HEIGHT));
    assert!(
        png.len() > 40_000,
        "a near-empty screenshot: {} bytes",
        png.len()
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("browser-page.png"), &png).unwrap();

    // Paid time that runs out: demo-fast sells 4 s slices; the server says
    // `expired`, then closes 4402 after its grace, and the page says so.
    let short = paid_token(&http, &base, "demo-fast").await;
    cdp.call(
        "Page.navigate",
        json!({"url": format!("{base}/#stream=demo-fast&t={short}")}),
    )
    .await;
    let s = cdp
        .wait_for(30, "the expiry message", |s| {
            s["state"] == "closed 4402"
                && s["notice"]
                    .as_str()
                    .is_some_and(|n| n.contains("Paid time expired"))
        })
        .await;
    assert!(!s["seqs"].as_array().unwrap().is_empty(), "{s:#}");
    assert_eq!(s["timeLeft"], "none", "{s:#}");

    // A token without paid time: the page says so (the browser only sees the
    // socket refused; the page asks the server why).
    let r = http
        .get(format!("{base}/v2/schema/btc-usd"))
        .send()
        .await
        .unwrap();
    let unpaid = token_of(&r.json().await.unwrap());
    cdp.call(
        "Page.navigate",
        json!({"url": format!("{base}/#stream=btc-usd&t={unpaid}")}),
    )
    .await;
    cdp.wait_for(20, "the unpaid-token message", |s| {
        s["state"] == "refused"
            && s["notice"]
                .as_str()
                .is_some_and(|n| n.contains("no paid time"))
    })
    .await;

    // A malformed token, and a stream id made of markup: shown as text, never parsed.
    cdp.call(
        "Page.navigate",
        json!({"url": format!("{base}/#stream=btc-usd&t=not-a-token")}),
    )
    .await;
    cdp.wait_for(20, "the invalid-token message", |s| {
        s["notice"]
            .as_str()
            .is_some_and(|n| n.contains("not valid here"))
    })
    .await;
    let markup = "<b id=pwn>x</b>";
    let fragment: String = format!("stream={markup}&t=abc")
        .bytes()
        .map(|b| match b {
            b'<' => "%3C".to_string(),
            b'>' => "%3E".to_string(),
            b' ' => "%20".to_string(),
            _ => char::from(b).to_string(),
        })
        .collect();
    cdp.call(
        "Page.navigate",
        json!({"url": format!("{base}/#{fragment}")}),
    )
    .await;
    let s = cdp
        .wait_for(20, "the unknown-stream message", |s| {
            s["notice"]
                .as_str()
                .is_some_and(|n| n.contains("no such stream"))
        })
        .await;
    assert_eq!(s["stream"], markup, "{s:#}");
    assert_eq!(s["injected"], false, "{s:#}");

    // Let Chromium shut down by itself (its renderers with it); the drop
    // waits for that, then kills what is left.
    let close = json!({"id": 0, "method": "Browser.close"});
    let _ = cdp.ws.send(Message::text(close.to_string())).await;
    tokio::task::spawn_blocking(move || drop(browser))
        .await
        .unwrap();
}
