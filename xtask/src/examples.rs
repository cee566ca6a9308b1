//! `cargo xtask examples` (and the step of `cargo xtask ci` after the tests): every
//! `examples/*` of the workspace and the README's command lines run against a local
//! `atomicstream serve`, each bounded, each required to exit 0 and print events.
//!
//! - The README's "library in ten lines" block must equal the body of
//!   `crates/atomicstream/examples/ten_lines.rs` between its `README` markers.
//! - Examples get `ATOMICSTREAM_BASE_URL` (the server under test), `X402_PRIVATE_KEY` (the
//!   anvil development key) and `--events N`; each stops by itself (a budget, a slice limit,
//!   or after N events) within [`EXAMPLE_TIMEOUT`].
//! - The README's `cargo run --release -- ...` lines (The command line) run with the built
//!   binary, the server's URL for `http://127.0.0.1:4021`, and `stream` bounded by
//!   `--duration`; `serve` is the server under test itself.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo_cmd, root, step};

/// The anvil development key (account 0): it pays the embedded facilitator, which checks
/// signatures and settles nothing.
const DEV_KEY: &str = atomicstream_testkit::DEV_KEY;
/// The address the README's commands name; replaced by the server under test.
const README_BASE: &str = "http://127.0.0.1:4021";
/// Events an example that takes `--events` prints before it stops.
const EVENTS: &str = "20";
/// Seconds the README's `stream` command runs (`--duration`).
const STREAM_SECONDS: &str = "3";
/// The longest an example or command may run.
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(40);

/// The step: check the README block, build, serve, run everything.
pub fn run() -> bool {
    let started = Instant::now();
    let root = root();
    if let Err(e) = readme_block_matches(&root) {
        eprintln!("xtask examples: {e}");
        return false;
    }
    if !step(
        "build examples",
        &mut cargo_cmd(&["build", "--workspace", "--bins", "--examples"]),
    ) {
        return false;
    }
    let examples = match list_examples(&root) {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => {
            eprintln!("xtask examples: cargo metadata lists no examples");
            return false;
        }
        Err(e) => {
            eprintln!("xtask examples: {e}");
            return false;
        }
    };
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap_or_default();
    let commands = readme_commands(&readme);
    if commands.is_empty() {
        eprintln!("xtask examples: no `cargo run --release -- ...` lines under The command line");
        return false;
    }
    let bin = root.join("target/debug/atomicstream");
    let server = match Server::start(&bin) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xtask examples: {e}");
            return false;
        }
    };
    eprintln!("\n==> examples against {}", server.base);
    let mut ok = true;
    for (pkg, name, path) in &examples {
        let mut c = Command::new(path);
        c.args(["--events", EVENTS])
            .env("ATOMICSTREAM_BASE_URL", &server.base)
            .env("X402_PRIVATE_KEY", DEV_KEY);
        let label = format!("example {pkg}/{name}");
        ok &= check(&label, run_bounded(c), is_example_event);
    }
    let scratch = root.join("target/examples-run");
    let _ = std::fs::remove_dir_all(&scratch);
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        eprintln!("xtask examples: cannot create {}: {e}", scratch.display());
        return false;
    }
    for args in commands {
        if args.first().map(String::as_str) == Some("serve") {
            continue; // the server under test is that command
        }
        let mut args: Vec<String> = args
            .into_iter()
            .map(|a| a.replace(README_BASE, &server.base))
            .collect();
        let streams = args.first().map(String::as_str) == Some("stream");
        if streams {
            args.extend(["--duration".into(), STREAM_SECONDS.into()]);
        }
        let mut c = Command::new(&bin);
        c.args(&args)
            .current_dir(&scratch)
            .env_remove("X402_PRIVATE_KEY")
            .env_remove("ATOMICSTREAM_BASE_URL");
        let label = format!("README: atomicstream {}", args.join(" "));
        ok &= if streams {
            check(&label, run_bounded(c), is_json_object)
        } else {
            check(&label, run_bounded(c), |l| !l.trim().is_empty())
        };
    }
    drop(server);
    eprintln!(
        "xtask examples: {} in {:.1} s",
        if ok { "all passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    ok
}

/// What a bounded run produced.
struct Outcome {
    status: Result<std::process::ExitStatus, String>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Exit 0 and at least one stdout line `wanted` accepts.
fn check(label: &str, out: Outcome, wanted: impl Fn(&str) -> bool) -> bool {
    let lines = out.stdout.lines().filter(|l| wanted(l)).count();
    let verdict = match &out.status {
        Ok(s) if !s.success() => Err(format!("exited with {s}")),
        Ok(_) if lines == 0 => Err("exited 0 but printed no event".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.clone()),
    };
    match verdict {
        Ok(()) => {
            eprintln!(
                "  ok   {label}: {lines} lines in {:.1} s",
                out.took.as_secs_f64()
            );
            true
        }
        Err(why) => {
            eprintln!("  FAIL {label}: {why}");
            eprintln!("--- stdout (end)\n{}", tail(&out.stdout));
            eprintln!("--- stderr (end)\n{}", tail(&out.stderr));
            false
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Runs `c` with its output captured, killing it after [`EXAMPLE_TIMEOUT`].
fn run_bounded(mut c: Command) -> Outcome {
    let started = Instant::now();
    let spawned = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(ch) => ch,
        Err(e) => {
            return Outcome {
                status: Err(format!("could not start {c:?}: {e}")),
                stdout: String::new(),
                stderr: String::new(),
                took: started.elapsed(),
            };
        }
    };
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if started.elapsed() > EXAMPLE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "still running after {} s (killed)",
                    EXAMPLE_TIMEOUT.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(format!("wait failed: {e}")),
        }
    };
    Outcome {
        status,
        stdout: out.and_then(|h| h.join().ok()).unwrap_or_default(),
        stderr: err.and_then(|h| h.join().ok()).unwrap_or_default(),
        took: started.elapsed(),
    }
}

/// Reads a pipe to its end on a thread.
fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// An example's event line: `<seq> <data>`.
fn is_example_event(line: &str) -> bool {
    line.split_once(' ')
        .is_some_and(|(seq, data)| seq.parse::<u64>().is_ok() && !data.trim().is_empty())
}

/// The CLI's event line: one JSON object.
fn is_json_object(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object())
}

/// `atomicstream serve` on a free loopback port, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(bin: &Path) -> Result<Server, String> {
        let mut last = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("no free port: {e}"))?
                .port();
            let mut child = Command::new(bin)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(s)) = child.try_wait() {
                    last = format!("atomicstream serve on port {port} exited with {s}");
                    break;
                }
                if healthy(port) {
                    return Ok(Server {
                        child,
                        base: format!("http://127.0.0.1:{port}"),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            if last.is_empty() {
                last = format!("atomicstream serve on port {port} did not answer /healthz");
            }
        }
        Err(last)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /healthz` answers 200.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req =
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Every example target of the workspace: (package, example, built binary).
fn list_examples(root: &Path) -> Result<Vec<(String, String, PathBuf)>, String> {
    let out = Command::new(crate::cargo())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let target_dir = meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut found = Vec::new();
    for p in meta["packages"].as_array().into_iter().flatten() {
        let pkg = p["name"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            let is_example = t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "example"));
            if let (true, Some(name)) = (is_example, t["name"].as_str()) {
                let exe = format!("{name}{}", std::env::consts::EXE_SUFFIX);
                let path = target_dir.join("debug/examples").join(exe);
                found.push((pkg.to_string(), name.to_string(), path));
            }
        }
    }
    Ok(found)
}

const TEN_LINES: &str = "crates/atomicstream/examples/ten_lines.rs";
const BEGIN: &str = "// README begin";
const END: &str = "// README end";

/// The README's ten-line block equals the example's body between its markers.
fn readme_block_matches(root: &Path) -> Result<(), String> {
    let read = |p: &str| {
        std::fs::read_to_string(root.join(p)).map_err(|e| format!("cannot read {p}: {e}"))
    };
    compare_block(&read("README.md")?, &read(TEN_LINES)?)
}

fn compare_block(readme: &str, example: &str) -> Result<(), String> {
    let section = readme
        .split_once("## The library in ten lines")
        .map(|(_, rest)| rest)
        .ok_or("README.md has no `## The library in ten lines` section")?;
    let block: Vec<&str> = section
        .split_once("```rust\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(code, _)| code.lines().collect())
        .ok_or("README.md: no ```rust block under The library in ten lines")?;
    let body = example
        .split_once(BEGIN)
        .and_then(|(_, rest)| rest.split_once(END))
        .map(|(b, _)| b)
        .ok_or(format!("{TEN_LINES}: no `{BEGIN}` ... `{END}` markers"))?;
    // The body's lines, less the indentation of the markers (blank lines stay blank).
    let body: Vec<&str> = body
        .lines()
        .skip(1) // the rest of the BEGIN line
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim_start()))
        .collect();
    let body = &body[..body.len().saturating_sub(1)]; // the END line's indentation
    if block == body {
        return Ok(());
    }
    let n = block
        .iter()
        .zip(body.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(block.len().min(body.len()));
    Err(format!(
        "README.md's ten-line block differs from {TEN_LINES} (between its markers) at line {}:\n  README:  {}\n  example: {}\nchange both together",
        n + 1,
        block.get(n).unwrap_or(&"<end>"),
        body.get(n).unwrap_or(&"<end>")
    ))
}

/// The `cargo run --release -- ...` lines of the README's command-line block, as arguments
/// (comments and a `> file` redirect dropped).
fn readme_commands(readme: &str) -> Vec<Vec<String>> {
    let Some((_, section)) = readme.split_once("## The command line") else {
        return Vec::new();
    };
    let Some(code) = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(c, _)| c)
    else {
        return Vec::new();
    };
    code.lines()
        .filter_map(|l| l.trim().strip_prefix("cargo run --release -- "))
        .map(|rest| {
            let rest = rest.split(" #").next().unwrap_or_default();
            let rest = rest.split(" >").next().unwrap_or_default();
            rest.split_whitespace().map(str::to_string).collect()
        })
        .collect()
}

/// crates.io's category slugs (its `src/boot/categories.toml`).
#[cfg(test)]
#[rustfmt::skip]
const CATEGORIES: &[&str] = &[
    "algorithms", "api-bindings", "asynchronous", "authentication", "caching",
    "command-line-interface", "command-line-utilities", "compression", "computer-vision",
    "concurrency", "config", "cryptography", "cryptography::cryptocurrencies", "data-structures",
    "database", "database-implementations", "date-and-time", "development-tools",
    "development-tools::build-utils", "development-tools::cargo-plugins",
    "development-tools::debugging", "development-tools::ffi",
    "development-tools::procedural-macro-helpers", "development-tools::profiling",
    "development-tools::testing", "email", "embedded", "emulators", "encoding",
    "external-ffi-bindings", "filesystem", "game-development", "game-engines", "games",
    "graphics", "gui", "hardware-support", "internationalization", "localization",
    "mathematics", "memory-management", "multimedia", "multimedia::audio",
    "multimedia::encoding", "multimedia::images", "multimedia::video", "network-programming",
    "no-std", "os", "os::linux-apis", "os::macos-apis", "os::unix-apis", "os::windows-apis",
    "parser-implementations", "parsing", "rendering", "rendering::data-formats",
    "rendering::engine", "rendering::graphics-api", "rust-patterns", "science",
    "science::robotics", "simulation", "template-engine", "text-editors", "text-processing",
    "value-formatting", "visualization", "wasm", "web-programming",
    "web-programming::http-client", "web-programming::http-server",
    "web-programming::websocket",
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_readme_block_is_the_ten_line_example() {
        readme_block_matches(&root()).unwrap();
    }

    #[test]
    fn a_drifted_readme_block_is_reported_with_its_line() {
        let example = std::fs::read_to_string(root().join(TEN_LINES)).unwrap();
        let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
        let drifted = readme.replacen("client.open(\"demo-fast\")", "client.open(\"btc-usd\")", 1);
        assert_ne!(drifted, readme, "the README no longer opens demo-fast");
        let err = compare_block(&drifted, &example).unwrap_err();
        assert!(
            err.contains("btc-usd") && err.contains("at line 9"),
            "{err}"
        );
        // A line only the example has is a difference too.
        let longer = example.replacen(END, &format!("println!();\n    {END}"), 1);
        assert!(compare_block(&readme, &longer).is_err());
        assert!(
            compare_block(&readme, "fn main() {}")
                .unwrap_err()
                .contains("markers")
        );
    }

    #[test]
    fn the_readme_command_lines_are_found() {
        let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
        let cmds = readme_commands(&readme);
        let first: Vec<&str> = cmds
            .iter()
            .filter_map(|c| c.first())
            .map(String::as_str)
            .collect();
        for verb in ["serve", "keygen", "streams", "schema", "stream", "--help"] {
            assert!(first.contains(&verb), "no `{verb}` line in {cmds:?}");
        }
        let stream = cmds.iter().find(|c| c[0] == "stream").unwrap();
        assert!(stream.iter().any(|a| a == "--budget"), "{stream:?}");
        assert!(
            stream
                .iter()
                .all(|a| !a.starts_with('>') && !a.starts_with('#')),
            "{stream:?}"
        );
        assert!(stream.iter().any(|a| a == README_BASE), "{stream:?}");
    }

    #[test]
    fn event_lines_are_recognised() {
        assert!(is_example_event(r#"7 {"px":1}"#));
        assert!(!is_example_event("ended: Stopped"));
        assert!(!is_example_event("7"));
        assert!(is_json_object(r#"{"seq":1,"data":{}}"#));
        assert!(!is_json_object("[1]") && !is_json_object("nope"));
    }

    /// Every crate that can be published carries what crates.io and docs.rs show, and its
    /// README (also its rustdoc front page) links nothing by a path inside this repository.
    #[test]
    fn publishable_crates_carry_their_metadata() {
        let out = Command::new(crate::cargo())
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut published = Vec::new();
        for p in meta["packages"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            if p["publish"].as_array().is_some_and(Vec::is_empty) {
                continue; // publish = false
            }
            assert!(
                !["atomicstream-testkit", "atomicstream-bench", "xtask"].contains(&name),
                "{name} is internal: publish = false"
            );
            published.push(name);
            let text = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            assert!(!text("description").is_empty(), "{name}: description");
            assert!(
                text("repository").starts_with("https://"),
                "{name}: repository"
            );
            assert_eq!(
                text("documentation"),
                format!("https://docs.rs/{name}"),
                "{name}"
            );
            let keywords = p["keywords"].as_array().unwrap();
            assert!((1..=5).contains(&keywords.len()), "{name}: 1 to 5 keywords");
            for k in keywords {
                let k = k.as_str().unwrap();
                assert!(
                    k.len() <= 20
                        && k.starts_with(|c: char| c.is_ascii_alphabetic())
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                    "{name}: keyword {k:?}"
                );
            }
            let categories = p["categories"].as_array().unwrap();
            assert!(
                (1..=5).contains(&categories.len()),
                "{name}: 1 to 5 categories"
            );
            for c in categories {
                let c = c.as_str().unwrap();
                assert!(
                    CATEGORIES.contains(&c),
                    "{name}: {c:?} is not a crates.io category"
                );
            }
            let dir = Path::new(p["manifest_path"].as_str().unwrap())
                .parent()
                .unwrap();
            let readme = dir.join(text("readme"));
            let body = std::fs::read_to_string(&readme)
                .unwrap_or_else(|e| panic!("{name}: readme {}: {e}", readme.display()));
            for target in body.split("](").skip(1).filter_map(|r| r.split(')').next()) {
                assert!(
                    target.starts_with("http") || !target.contains('/'),
                    "{name}'s README links {target:?}: use an absolute URL (it is read on docs.rs and crates.io)"
                );
            }
        }
        assert!(published.contains(&"atomicstream"), "{published:?}");
    }
}
