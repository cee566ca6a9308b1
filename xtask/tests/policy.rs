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
    // Package names (x402-types is published as atomicstream-x402-types).
    for krate in ["atomicstream-x402-types", "x402-session"] {
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

/// Embedders of the types crate get a small tree: at most 22 crates besides itself
/// (serde, serde_json, base64, hex, tiny-keccak, thiserror and what they need).
#[test]
fn the_types_crate_keeps_a_small_tree() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "atomicstream-x402-types",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(root)
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success());
    let tree = String::from_utf8_lossy(&out.stdout);
    let mut crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "atomicstream-x402-types")
        .collect();
    crates.sort_unstable();
    crates.dedup();
    assert!(
        crates.contains(&"serde"),
        "cargo tree output looks wrong: {tree}"
    );
    assert!(
        crates.len() <= 22,
        "x402-types pulls {} crates: {crates:?}",
        crates.len()
    );
    for heavy in ["url", "idna", "sha3", "tokio", "reqwest"] {
        assert!(!crates.contains(&heavy), "x402-types pulls {heavy}");
    }
}

/// The package names in `pkg`'s normal dependency tree.
fn normal_deps(pkg: &str) -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = Command::new(env!("CARGO"))
        .args([
            "tree", "-p", pkg, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .current_dir(root)
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The settling EVM facilitator implements `x402-facilitator`'s trait and
/// never pulls the stream server (axum routes, redis, prometheus) into a chain
/// crate: its normal dependency tree holds no `x402-server`.
#[test]
fn the_chain_crate_does_not_depend_on_the_server() {
    let names = normal_deps("x402-chain");
    assert!(
        names.iter().any(|n| n == "atomicstream-x402-facilitator"),
        "cargo tree output looks wrong: {names:?}"
    );
    for banned in ["x402-server", "x402-session", "redis", "prometheus-client"] {
        assert!(
            !names.iter().any(|n| n == banned),
            "x402-chain depends on {banned}"
        );
    }
}

/// The transport crate is traits, adapters and fault wrappers: the driver
/// that composes session, payer and policy lives in the facade, so a user
/// swapping a transport pulls no signer.
#[test]
fn the_transport_crate_has_no_payer() {
    let names = normal_deps("x402-transport");
    assert!(
        names.iter().any(|n| n == "x402-session"),
        "cargo tree output looks wrong: {names:?}"
    );
    for banned in ["x402-payer", "k256", "atomicstream"] {
        assert!(
            !names.iter().any(|n| n == banned),
            "x402-transport depends on {banned}"
        );
    }
}
