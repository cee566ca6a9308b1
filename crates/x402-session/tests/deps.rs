//! The session crate must stay free of runtimes, sockets and HTTP stacks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn no_io_crates_in_normal_dependencies() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "x402-session",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.contains("serde"),
        "cargo tree output looks wrong: {tree}"
    );
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        for banned in [
            "tokio",
            "reqwest",
            "tungstenite",
            "tokio-tungstenite",
            "hyper",
            "async-trait",
            "mio",
            "axum",
        ] {
            assert_ne!(name, banned, "x402-session depends on {banned}");
        }
    }
}
