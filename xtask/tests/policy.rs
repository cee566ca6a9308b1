//! Repository policy checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// The pure crates stay free of runtimes, sockets and HTTP stacks (quinn-proto's discipline):
/// their normal dependency trees, as `cargo tree` resolves them, contain none of these.
#[test]
fn pure_crates_have_no_io_dependencies() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    for krate in ["x402-types", "x402-session"] {
        let out = Command::new(env!("CARGO"))
            .args([
                "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
            ])
            .current_dir(root)
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
                assert_ne!(name, banned, "{krate} depends on {banned}");
            }
        }
    }
}
