//! `atomicstream serve` in its own process, what it uses (CPU, resident set), and opening
//! many paid sockets on it (rows 4c and 5).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use x402_server::DEV_PAY_TO;

use crate::fixture::{Ws, quote, signer_payer};

/// CPU seconds (user, system) a process has used so far, from /proc.
pub(crate) fn cpu_secs(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the name.
    let tick = 100.0; // USER_HZ on Linux
    (
        f.get(11).copied().unwrap_or(0.0) / tick,
        f.get(12).copied().unwrap_or(0.0) / tick,
    )
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `atomicstream serve` in its own process (so its resident set and its cores'
/// work are its own) with one stream `id` and the given source (TOML inline table).
pub(crate) struct ServerProcess {
    child: std::process::Child,
    pub(crate) base: String,
    dir: std::path::PathBuf,
}

impl ServerProcess {
    pub(crate) async fn start(id: &str, source: &str) -> Result<ServerProcess, String> {
        Self::start_with(id, source, "", "").await
    }

    /// The same, with TOML lines added to `[limits]` (`limits`) and after the stream's
    /// keys (`stream`, e.g. a `[streams.channel]` table).
    pub(crate) async fn start_with(
        id: &str,
        source: &str,
        limits: &str,
        stream: &str,
    ) -> Result<ServerProcess, String> {
        let exe = std::env::var("ATOMICSTREAM_BIN")
            .unwrap_or_else(|_| "target/release/atomicstream".into());
        // A port the OS says is free now (a fixed one collided with a socket in TIME_WAIT).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port: {e}"))?;
        let dir =
            std::env::temp_dir().join(format!("atomicstream-bench-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let cfg = dir.join("server.toml");
        let _ = std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\nsecret = \"bench-secret-bench-secret-bench-secret\"\n[facilitator]\nkind = \"embedded\"\n[limits]\nmax_connections_per_ip = 1000000\npayments_per_ip_per_minute = 1000000\nmax_sessions = 1000000\n{limits}[[streams]]\nid = \"{id}\"\nprice_per_minute = \"0.06\"\nslice_seconds = 3600\npay_to = \"{DEV_PAY_TO}\"\nmax_timeout_seconds = 3600\nsource = {source}\n{stream}"
            ),
        );
        let child = std::process::Command::new(&exe)
            .args(["serve", "--config", cfg.to_str().unwrap_or_default()])
            .env("RUST_LOG", "error")
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("{exe}: {e} (run `cargo build --release` first)"))?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let server = ServerProcess { child, base, dir };
        for _ in 0..100 {
            if http
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{exe}: the server did not answer on {}",
            server.base
        ))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens `n` paid sockets on stream `id` (schema, signature, paid upgrade
/// each), `parallel` at a time; sockets use a small read buffer, as a
/// client holding thousands of them would.
pub(crate) async fn open_paid(base: &str, id: &str, n: usize, parallel: usize) -> (Vec<Ws>, usize) {
    open_paid_then(base, id, n, parallel, |ws| ws).await
}

/// As [`open_paid`], handing each socket to `then` as soon as it is open (a
/// reader started there drains it while the others are still opening).
pub(crate) async fn open_paid_then<T>(
    base: &str,
    id: &str,
    n: usize,
    parallel: usize,
    then: impl FnMut(Ws) -> T,
) -> (Vec<T>, usize) {
    let http = reqwest::Client::new();
    let payer = Arc::new(signer_payer());
    open_many(n, parallel, then, |_| {
        let (http, payer) = (http.clone(), payer.clone());
        async move {
            let (schema, offer) = quote(&http, base, id).await;
            let pay = payer.sign(&offer).ok()?.to_header();
            let mut req = schema
                .websocket_endpoint
                .as_str()
                .into_client_request()
                .ok()?;
            req.headers_mut()
                .insert("PAYMENT-SIGNATURE", pay.parse().ok()?);
            tokio_tungstenite::connect_async_with_config(req, Some(small_buffer()), true)
                .await
                .ok()
                .map(|(ws, _)| ws)
        }
    })
    .await
}

/// tungstenite zero-fills the read buffer before every read: keep it near the frame size
/// (~170 B) so the load generator leaves the cores to the server.
pub(crate) fn small_buffer() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(512)
}

/// Opens `n` sockets with `open`, `parallel` at a time, handing each to
/// `then` as soon as it is open: what `then` made of them, and how many failed.
pub(crate) async fn open_many<T, F, Fut>(
    n: usize,
    parallel: usize,
    mut then: impl FnMut(Ws) -> T,
    open: F,
) -> (Vec<T>, usize)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Option<Ws>>,
{
    let opened: Vec<Option<T>> = futures::stream::iter(0..n)
        .map(open)
        .buffer_unordered(parallel)
        .map(|o| o.map(&mut then))
        .collect()
        .await;
    let failed = opened.iter().filter(|o| o.is_none()).count();
    (opened.into_iter().flatten().collect(), failed)
}
