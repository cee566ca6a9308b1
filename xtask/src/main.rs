//! Project automation. `cargo xtask <verb>`:
//!
//! - `ci`: the gate (rust-version, fmt, clippy, tests, docs). Fuzzing is `cargo xtask fuzz`
//!   (cargo-fuzz needs minutes to install, so it is not part of the gate).
//! - `bench`: benchmarks with baselines, writes `target/bench/report.json`.
//! - `soak [seconds]`: bounded load and fault run against the reference server.
//! - `fuzz <target|all> [seconds]`: cargo-fuzz runs (installs cargo-fuzz if missing).
//! - `examples`: every `examples/*` and the README's commands against a local server
//!   (also a step of `ci`, after the tests).
//! - `deploy`: checks `deploy/` (the systemd unit and the Dockerfile; also a step of `ci`).
//! - `demo`: the embedded demo.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod browser;
mod clients;
mod deploy;
mod examples;
mod msrv;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

thread_local! {
    /// Where this thread's steps write (a background job's log); unset: the terminal.
    static STEP_LOG: std::cell::RefCell<Option<std::fs::File>> = const { std::cell::RefCell::new(None) };
}

/// Prints a line of a step: to this thread's log if it has one, else to stderr.
fn say(line: &str) {
    use std::io::Write;
    let logged = STEP_LOG.with(|l| match l.borrow_mut().as_mut() {
        Some(f) => {
            let _ = writeln!(f, "{line}");
            true
        }
        None => false,
    });
    if !logged {
        eprintln!("{line}");
    }
}

/// Runs a step, printing it first and its time after; returns whether it succeeded.
fn step(name: &str, cmd: &mut Command) -> bool {
    say(&format!("\n==> {name}: {cmd:?}"));
    STEP_LOG.with(|l| {
        if let Some(f) = l.borrow().as_ref()
            && let (Ok(out), Ok(err)) = (f.try_clone(), f.try_clone())
        {
            cmd.stdout(out).stderr(err);
        }
    });
    let started = std::time::Instant::now();
    let status = cmd.current_dir(root()).status();
    let took = started.elapsed().as_secs_f64();
    match status {
        Ok(s) if s.success() => {
            say(&format!("<== {name}: {took:.1} s"));
            true
        }
        Ok(s) => {
            say(&format!(
                "xtask: step `{name}` failed with {s} after {took:.1} s"
            ));
            false
        }
        Err(e) => {
            say(&format!("xtask: step `{name}` could not start: {e}"));
            false
        }
    }
}

/// Installs the test tools on a thread of its own, its steps written to `log`: the
/// downloads overlap the first builds, which need none of them.
fn tools_in_background(log: PathBuf) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(f) = std::fs::File::create(&log) {
            STEP_LOG.with(|l| *l.borrow_mut() = Some(f));
        }
        tools()
    })
}

/// A cargo command. xtask runs whole builds (CI, benches, examples), where
/// incremental compilation saves nothing and costs about as much disk as the
/// build itself (1.4 GiB of 3.4 GiB on a clean CI run); a CI machine once ran
/// out of disk on it. A caller's own `CARGO_INCREMENTAL` wins.
fn cargo_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(cargo());
    c.args(args);
    if std::env::var_os("CARGO_INCREMENTAL").is_none() {
        c.env("CARGO_INCREMENTAL", "0");
    }
    c
}

/// Pinned npm packages the tests use: anvil (a local EVM node) and solc-js.
const NPM_TOOLS: &[(&str, &str)] = &[("@foundry-rs/anvil", "1.7.1"), ("solc", "0.8.37")];

/// Installs the pinned npm tools into `target/tools` when missing or of another version.
fn tools() -> bool {
    let dir = root().join("target/tools");
    let installed = |name: &str, version: &str| {
        std::fs::read_to_string(dir.join("node_modules").join(name).join("package.json"))
            .ok()
            .and_then(|t| serde_json_version(&t))
            .is_some_and(|v| v == version)
    };
    let missing: Vec<String> = NPM_TOOLS
        .iter()
        .filter(|(n, v)| !installed(n, v))
        .map(|(n, v)| format!("{n}@{v}"))
        .collect();
    let _ = std::fs::create_dir_all(&dir);
    if !missing.is_empty() {
        let mut c = Command::new("npm");
        c.args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .args(&missing);
        if !step("install test tools (npm)", &mut c) {
            return false;
        }
    }
    if !redis_server() || !browser::chromium() {
        return false;
    }
    // The official x402 Python SDK, for the interop test of the EVM facilitator: its EVM
    // signer and its HTTP facilitator client (the `clients` extra: httpx); with the
    // `websockets` package, for the Python client recipe (docs/clients.md).
    let py = dir.join("py");
    let websockets = format!("websockets-{}.dist-info", clients::WEBSOCKETS_PY);
    if !py.join(format!("x402-{X402_PY}.dist-info")).exists()
        || !py.join("httpx").exists()
        || !py.join(&websockets).exists()
    {
        let mut c = Command::new("python3");
        c.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--upgrade",
            "--target",
        ])
        .arg(&py)
        .arg(format!("x402[evm,clients]=={X402_PY}"))
        .arg(format!("websockets=={}", clients::WEBSOCKETS_PY));
        if !step("install the official x402 Python SDK (pip)", &mut c) {
            return false;
        }
    }
    // The Node client recipe's packages (@x402/fetch, ...), from its lockfile.
    clients::node_recipe()
}

/// The Redis major version the cluster tests run against (Debian 12's package).
const REDIS_MAJOR: &str = "7.";

fn redis_version() -> Option<String> {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "Redis server v=7.0.15 sha=..."
    let v = text
        .split("v=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_string();
    Some(v)
}

/// `redis-server` for the cluster tests: Debian's package, installed with
/// apt-get when missing (as root, or through sudo).
fn redis_server() -> bool {
    if let Some(v) = redis_version() {
        // Another major version is used, with a word: the tests need only
        // scripts, streams and pub/sub (Redis 6.2 and later).
        if !v.starts_with(REDIS_MAJOR) {
            eprintln!("xtask: redis-server {v} found; the tests expect {REDIS_MAJOR}x");
        }
        return true;
    }
    if !apt_install("redis-server", &["redis-server"]) {
        return false;
    }
    match redis_version() {
        Some(v) => {
            eprintln!("xtask: redis-server {v}");
            true
        }
        None => {
            eprintln!("xtask: redis-server is still not runnable after apt-get install");
            false
        }
    }
}

/// Installs Debian `packages` with apt-get (as root, or through sudo), after
/// an `apt-get update` when the first try fails (a fresh machine may have no
/// package lists yet). `what` names them in the step's line.
pub(crate) fn apt_install(what: &str, packages: &[&str]) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut c = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(packages);
    let name = format!("install {what} (apt-get)");
    step(&name, &mut apt(&install))
        || (step("apt-get update", &mut apt(&["update"])) && step(&name, &mut apt(&install)))
}

/// The official x402 Python SDK version the interop test uses.
const X402_PY: &str = "2.25.0";

/// The `"version"` of a package.json, without a JSON dependency.
fn serde_json_version(text: &str) -> Option<String> {
    let i = text.find("\"version\"")?;
    let rest = &text[i + 9..];
    let start = rest.find('"')? + 1;
    let end = rest[start..].find('"')? + start;
    Some(rest[start..end].to_string())
}

/// Tests run at once under cargo-nextest. Most tests wait on sockets, chains and
/// timers, not on the CPU: on 2 cores, 4 at a time ran the suite in 99 s against
/// 176 s with 2 (and about 200 s for `cargo test`, one binary after another).
const TEST_THREADS: &str = "4";

/// The test steps: every test with cargo-nextest when it is installed (CI machines
/// carry it), then the doctests, which nextest does not run; else `cargo test`.
/// Both end with a step named `test`, after which the examples run.
fn test_steps() -> Vec<(&'static str, Command)> {
    let nextest = Command::new(cargo())
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if nextest {
        vec![
            ("doctests", cargo_cmd(&["test", "--workspace", "--doc"])),
            (
                "test",
                cargo_cmd(&[
                    "nextest",
                    "run",
                    "--workspace",
                    "--no-fail-fast",
                    "--test-threads",
                    TEST_THREADS,
                ]),
            ),
        ]
    } else {
        eprintln!("xtask ci: cargo-nextest is not installed: tests run with `cargo test`");
        vec![
            ("doctests", cargo_cmd(&["test", "--workspace", "--doc"])),
            ("test", cargo_cmd(&["test", "--workspace", "--all-targets"])),
        ]
    }
}

/// Free disk space where the build goes, in MiB, from `df` (None when it cannot tell).
fn free_disk_mib() -> Option<u64> {
    let out = Command::new("df").args(["-Pm"]).arg(root()).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// A clean CI run peaks near this much disk (measured on a clean clone).
const CI_DISK_MIB: u64 = 2_500;

fn ci() -> bool {
    let started = std::time::Instant::now();
    match free_disk_mib() {
        Some(free) if free < CI_DISK_MIB => eprintln!(
            "xtask ci: warning: only {free} MiB free on the disk holding the build; a clean run needs about {CI_DISK_MIB} MiB"
        ),
        Some(free) => eprintln!("xtask ci: {free} MiB free on the build's disk"),
        None => {}
    }
    let log = root().join("target/tools-install.log");
    eprintln!(
        "xtask ci: installing the test tools in the background (log: {})",
        log.display()
    );
    let installing = tools_in_background(log.clone());
    let tools_ready = move || {
        let ok = installing.join().unwrap_or(false);
        if !ok {
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
            eprintln!(
                "xtask ci: the test tools (anvil, solc, redis-server, the x402 Python SDK, the client recipes' packages) could not be installed; tests that need them would fail"
            );
        } else {
            eprintln!("\nxtask ci: test tools ready (log: {})", log.display());
        }
        ok
    };
    if !msrv::check() {
        return false;
    }
    let mut doc = cargo_cmd(&["doc", "--workspace", "--no-deps"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    let mut steps: Vec<(&str, Command)> = vec![
        ("fmt", cargo_cmd(&["fmt", "--all", "--check"])),
        (
            "clippy",
            cargo_cmd(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        ),
    ];
    steps.extend(test_steps());
    steps.push(("doc", doc));
    let mut tools_ready = Some(tools_ready);
    for (name, mut cmd) in steps {
        // The tests need the tools; the lint and the build before them do not.
        if name == "doctests"
            && let Some(ready) = tools_ready.take()
            && !ready()
        {
            return false;
        }
        if !step(name, &mut cmd) {
            return false;
        }
        // Every examples/* and the README's commands, run against a local server.
        if name == "test" && !examples::run() {
            return false;
        }
    }
    // deploy/: the systemd unit and the Dockerfile, checked without Docker.
    if !deploy::check() {
        return false;
    }
    eprintln!(
        "\nxtask ci: all steps passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    true
}

/// Builds the release binaries and runs the bench binary with `args`, with a raised file limit.
fn bench_bin(args: &[&str]) -> bool {
    if !step(
        "build",
        &mut cargo_cmd(&[
            "build",
            "--release",
            "-p",
            "atomicstream-bench",
            "-p",
            "atomicstream-cli",
        ]),
    ) {
        return false;
    }
    let root = root();
    let bin = root.join("target/release/atomicstream-bench");
    let cli = root.join("target/release/atomicstream");
    // 10,000 sockets need more descriptors than the usual default of 1024.
    let script = format!(
        "ulimit -n 65536 2>/dev/null || ulimit -n $(ulimit -Hn); exec \"{}\" \"$@\"",
        bin.display()
    );
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(script)
        .arg("bench")
        .args(args)
        .env("ATOMICSTREAM_BIN", cli);
    step("run", &mut c)
}

const FUZZ_TARGETS: &[&str] = &[
    "server_message",
    "schema",
    "payment_header",
    "facilitator_request",
    "amounts",
    "client_session",
    "json_value",
];

/// cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP=1), installing it if missing.
fn fuzz(target: &str, secs: u64) -> bool {
    let have = Command::new(cargo())
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have
        && !step(
            "install cargo-fuzz",
            &mut cargo_cmd(&["install", "cargo-fuzz", "--locked"]),
        )
    {
        return false;
    }
    let targets: Vec<&str> = if target == "all" {
        FUZZ_TARGETS.to_vec()
    } else {
        vec![target]
    };
    for t in targets {
        let corpus = format!("fuzz/corpus/{t}");
        let seeds = format!("fuzz/seeds/{t}");
        let _ = std::fs::create_dir_all(root().join(&corpus));
        let mut c = cargo_cmd(&[
            "fuzz",
            "run",
            t,
            &corpus,
            &seeds,
            "--",
            &format!("-max_total_time={secs}"),
            "-max_len=4096",
        ]);
        c.env("RUSTC_BOOTSTRAP", "1");
        if !step(&format!("fuzz {t}"), &mut c) {
            return false;
        }
    }
    true
}

/// The official x402 TypeScript SDK, pinned, for `bench --peers` only (not the
/// tests): installed into `target/tools/ts-peer` when missing. A failed install
/// is reported by the bench as "not installed", not as a failure.
const TS_PEER: &[(&str, &str)] = &[
    ("@x402/core", "2.27.0"),
    ("@x402/evm", "2.27.0"),
    ("viem", "2.57.20"),
];

fn ts_peer() {
    let dir = root().join("target/tools/ts-peer");
    let installed = TS_PEER.iter().all(|(name, version)| {
        std::fs::read_to_string(dir.join("node_modules").join(name).join("package.json"))
            .ok()
            .and_then(|t| serde_json_version(&t))
            .is_some_and(|v| v == *version)
    });
    if installed {
        return;
    }
    let _ = std::fs::create_dir_all(&dir);
    let mut c = Command::new("npm");
    c.args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .args(TS_PEER.iter().map(|(n, v)| format!("{n}@{v}")));
    if !step("install the x402 TypeScript SDK (npm, for --peers)", &mut c) {
        eprintln!("xtask: the TypeScript peer will be reported as not installed");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ok = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => {
            let rest: Vec<&str> = args[1..].iter().map(String::as_str).collect();
            if rest.contains(&"--peers") {
                ts_peer();
            }
            bench_bin(&rest)
        }
        Some("soak") => {
            let mut rest: Vec<&str> = vec!["soak"];
            if args.get(1).is_none_or(|a| a.starts_with("--")) {
                rest.push("120");
            }
            rest.extend(args[1..].iter().map(String::as_str));
            bench_bin(&rest)
        }
        Some("fuzz") => {
            let target = args.get(1).map(String::as_str).unwrap_or("all");
            let secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
            fuzz(target, secs)
        }
        Some("tools") => tools(),
        Some("examples") => examples::run(),
        Some("deploy") => deploy::check(),
        Some("demo") => step(
            "demo",
            &mut cargo_cmd(&["run", "--release", "-p", "atomicstream-cli", "--", "demo"]),
        ),
        _ => {
            eprintln!(
                "usage: cargo xtask <verb>\n  ci                       fmt, clippy, tests, docs (the gate)\n  bench [--quick] [--peers] benchmarks with baselines -> target/bench/report.json
                           (--peers: payments signed/s by the official x402 SDKs where installed;\n                            --redis: handshake and fan-out again with the state in Redis;\n                            --only a,b: only these sections; the bench binary's --help\n                            lists them: target/release/atomicstream-bench --help)\n  soak [seconds] [--instances N --redis]\n                           bounded load and fault run (default 120 s; several instances share one Redis behind a balancer)\n  fuzz <target|all> [secs] cargo-fuzz; targets: {}\n  tools                    install the pinned test tools (anvil, solc-js, the x402 Python SDK into target/tools;
                           the Node client recipe's packages into examples/clients/node)
  examples                 run every examples/* and the README's commands against a local server (part of ci)
  deploy                   check deploy/ (systemd-analyze on the unit, hadolint and a lint of the Dockerfile,
                           the image's command run with the built binary; part of ci)
  demo                     the embedded demo",
                FUZZ_TARGETS.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
