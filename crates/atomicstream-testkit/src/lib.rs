#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long one start may take before it is given up.
const START_WITHIN: Duration = Duration::from_secs(20);
/// Starts on fresh ports before giving up (each retry means a parallel test
/// took the port in the window).
const ATTEMPTS: usize = 8;

/// A `redis-server` child of this process on `127.0.0.1`, killed (and its
/// scratch directory removed) on drop.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
    persistent: bool,
}

impl Redis {
    /// A server without persistence.
    ///
    /// # Panics
    /// When `redis-server` is missing or does not start: a test that needs
    /// it never skips.
    pub fn start() -> Redis {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Redis::start`] that says why instead of panicking (for tools such as
    /// the soak, which report and exit).
    pub fn try_start() -> Result<Redis, String> {
        Self::start_fresh(false)
    }

    /// A server that appends every write to its file and syncs it (as an
    /// operator who wants restarts to lose nothing runs it).
    ///
    /// # Panics
    /// As [`Redis::start`].
    pub fn start_persistent() -> Redis {
        Self::start_fresh(true).unwrap_or_else(|e| panic!("{e}"))
    }

    fn start_fresh(persistent: bool) -> Result<Redis, String> {
        let bin = find_redis_server().ok_or(NOT_FOUND)?;
        if !bin.is_file() {
            return Err(format!(
                "{}: no such file (X402_REDIS_SERVER)",
                bin.display()
            ));
        }
        let dir = scratch("redis");
        let mut why = String::new();
        for _ in 0..ATTEMPTS {
            match Self::spawn(&bin, free_port(), dir.clone(), persistent) {
                Ok(r) => return Ok(r),
                Err(e) => why = e,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(format!(
            "redis-server did not start in {ATTEMPTS} attempts: {why}"
        ))
    }

    /// `kill -9`, then a start on the same port and data.
    ///
    /// # Panics
    /// When it does not come back (for instance, another process took the
    /// port meanwhile).
    pub fn restart(mut self) -> Redis {
        let (port, persistent) = (self.port, self.persistent);
        // The directory lives on in the new server; dropping kills (`-9`) and
        // reaps the old one.
        let dir = std::mem::take(&mut self.dir);
        drop(self);
        Self::spawn(&redis_server_bin(), port, dir, persistent)
            .unwrap_or_else(|e| panic!("redis-server did not restart on port {port}: {e}"))
    }

    fn spawn(bin: &Path, port: u16, dir: PathBuf, persistent: bool) -> Result<Redis, String> {
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        if persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        match wait_until_owned(&mut child, port) {
            Ok(()) => Ok(Redis {
                child,
                port,
                dir,
                persistent,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends a signal (`"-STOP"`, `"-CONT"`, ...) with `kill`.
    ///
    /// # Panics
    /// When `kill` fails.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {}", self.child.id());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits until the Redis answering on `port` is `child`; an error when the
/// child exits, another process answers, or nothing answers in time.
fn wait_until_owned(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_WITHIN;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}); port {port} taken?"));
        }
        match process_id(port) {
            Some(pid) if pid == child.id() => return Ok(()),
            Some(other) => return Err(format!("port {port} is served by process {other}")),
            None if Instant::now() > deadline => {
                return Err(format!("no answer on port {port} within {START_WITHIN:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The `process_id` of the Redis answering on `port` (`INFO server`), if one
/// answers.
fn process_id(port: u16) -> Option<u32> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"INFO server\r\n").ok()?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).ok()?;
    // A bulk string: `$LEN\r\n` then LEN bytes (an error reply while loading is `-...`).
    let len: usize = head.strip_prefix('$')?.trim().parse().ok()?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    parse_process_id(&String::from_utf8_lossy(&body))
}

fn parse_process_id(info: &str) -> Option<u32> {
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

const NOT_FOUND: &str = "redis-server not found: these tests need a real Redis. \
     `cargo xtask tools` installs Debian's redis-server (apt-get install redis-server)";

/// `redis-server`: `X402_REDIS_SERVER`, then `PATH`, then the usual system
/// directories (Debian puts it in `/usr/bin`).
///
/// # Panics
/// When it is nowhere: these tests need a real Redis.
pub fn redis_server_bin() -> PathBuf {
    find_redis_server().expect(NOT_FOUND)
}

fn find_redis_server() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("X402_REDIS_SERVER") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/bin".into(),
            "/usr/sbin".into(),
            "/usr/local/bin".into(),
        ])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// A loopback port that was free a moment ago. Only for children that cannot
/// bind port 0 themselves and report it; check who answers on it (as
/// [`Redis::start`] does).
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// anvil's first development key, the one key the tests sign with. It is
/// public (every anvil funds it on start): never use it for anything of value.
pub const DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// The address of [`DEV_KEY`], EIP-55 checksummed (`x402-payer`'s known-answer
/// test derives it from the key).
pub const DEV_ADDRESS: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

/// A fresh scratch directory under the system's temporary directory.
///
/// # Panics
/// When it cannot be created.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "atomicstream-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

/// The official x402 Python SDK's install (`target/tools/py`, put on `PYTHONPATH`),
/// found from the workspace root.
///
/// # Panics
/// When it is not installed: the interop tests need it (`cargo xtask tools`).
pub fn x402_python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tools/py");
    assert!(
        py.join("x402").is_dir(),
        "the official x402 Python SDK is not installed in {}: run `cargo xtask tools`",
        py.display()
    );
    py
}

/// The sum of the samples in `metrics` (a `/metrics` answer, Prometheus
/// text) whose line starts with `name` and contains `labels` (`""`: any).
/// Comment lines start with `#`, so they never match a metric's name.
///
/// ```
/// let text = "# TYPE x counter\nx_total{stream=\"a\"} 2\nx_total{stream=\"b\"} 3\n";
/// assert_eq!(atomicstream_testkit::metric_sum(text, "x_total", ""), 5);
/// assert_eq!(atomicstream_testkit::metric_sum(text, "x_total", "stream=\"b\""), 3);
/// assert_eq!(atomicstream_testkit::metric_sum(text, "y_total", ""), 0);
/// ```
pub fn metric_sum(metrics: &str, name: &str, labels: &str) -> u128 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u128>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_id_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\ntcp_port:6379\r\n";
        assert_eq!(parse_process_id(info), Some(4242));
        assert_eq!(
            parse_process_id("# Server\r\nredis_version:7.0.15\r\n"),
            None
        );
        assert_eq!(parse_process_id("process_id:x\r\n"), None);
    }

    #[test]
    fn a_started_server_is_ours_and_two_never_share_a_port() {
        let a = Redis::start();
        let b = Redis::start();
        assert_ne!(a.port(), b.port());
        assert_eq!(process_id(a.port()), Some(a.child.id()));
        assert_eq!(process_id(b.port()), Some(b.child.id()));
    }

    #[test]
    fn a_taken_port_is_detected_not_shared() {
        let a = Redis::start();
        // A second server pointed at the first one's port must not pass as started.
        let e = Redis::spawn(&redis_server_bin(), a.port(), scratch("taken"), false)
            .expect_err("the port is taken");
        assert!(e.contains("exited") || e.contains("served by"), "{e}");
        assert_eq!(
            process_id(a.port()),
            Some(a.child.id()),
            "the first one still serves"
        );
    }

    #[test]
    fn a_persistent_server_keeps_its_data_across_a_restart() {
        let r = Redis::start_persistent();
        let port = r.port();
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"SET k v\r\n").expect("write");
        let mut ok = [0u8; 5];
        s.read_exact(&mut ok).expect("read");
        assert_eq!(&ok, b"+OK\r\n");
        drop(s);
        let r = r.restart();
        assert_eq!(r.port(), port);
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.write_all(b"GET k\r\n").expect("write");
        let mut v = [0u8; 7];
        s.read_exact(&mut v).expect("read");
        assert_eq!(&v, b"$1\r\nv\r\n");
    }
}
