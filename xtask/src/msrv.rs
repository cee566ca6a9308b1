//! `rust-version` is true (a step of `cargo xtask ci`): no locked dependency needs a newer rustc
//! than the workspace declares (`[workspace.package] rust-version`, inherited by the members).
//!
//! The needs are the `rust-version` each locked package declares (`cargo metadata`, every
//! feature and every target). Only the declaration is checked here: no older toolchain is
//! installed to build with. Our own code's use of newer std APIs is clippy's
//! `incompatible_msrv` lint, which reads the same `rust-version`.

use std::collections::BTreeSet;
use std::fmt;
use std::process::Command;

use crate::{cargo, root};

/// A rustc version as `rust-version` spells it (`1.91`, `1.91.0`); missing parts are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RustVersion(u64, u64, u64);

impl RustVersion {
    /// `None` unless it is one to three dot-separated numbers.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.').map(|p| p.parse::<u64>().ok());
        let major = parts.next()??;
        let minor = parts.next().unwrap_or(Some(0))?;
        let patch = parts.next().unwrap_or(Some(0))?;
        if parts.next().is_some() {
            return None;
        }
        Some(RustVersion(major, minor, patch))
    }
}

impl fmt::Display for RustVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RustVersion(major, minor, 0) => write!(f, "{major}.{minor}"),
            RustVersion(major, minor, patch) => write!(f, "{major}.{minor}.{patch}"),
        }
    }
}

/// A locked package and the rustc it says it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) rust_version: RustVersion,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} needs rustc {}",
            self.name, self.version, self.rust_version
        )
    }
}

/// The needs above `declared`, highest first (then by name).
pub(crate) fn newer_than(declared: RustVersion, needs: &[Need]) -> Vec<&Need> {
    let mut over: Vec<&Need> = needs.iter().filter(|n| n.rust_version > declared).collect();
    over.sort_by(|a, b| {
        b.rust_version
            .cmp(&a.rust_version)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.version.cmp(&b.version))
    });
    over
}

/// From `cargo metadata` JSON: the members' declared `rust-version` (they must agree) and the
/// need of every other package that declares one.
pub(crate) fn from_metadata(meta: &serde_json::Value) -> Result<(RustVersion, Vec<Need>), String> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .ok_or("cargo metadata: no workspace_members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let packages = meta["packages"]
        .as_array()
        .ok_or("cargo metadata: no packages")?;
    let mut declared = BTreeSet::new();
    let mut needs = Vec::new();
    for p in packages {
        let Some(text) = p["rust_version"].as_str() else {
            continue;
        };
        let name = p["name"].as_str().unwrap_or("?");
        let version = p["version"].as_str().unwrap_or("?");
        let rust_version = RustVersion::parse(text)
            .ok_or_else(|| format!("{name} {version}: rust-version `{text}` is not a version"))?;
        if p["id"].as_str().is_some_and(|id| members.contains(id)) {
            declared.insert(rust_version);
        } else {
            needs.push(Need {
                name: name.to_string(),
                version: version.to_string(),
                rust_version,
            });
        }
    }
    let mut declared = declared.into_iter();
    match (declared.next(), declared.next()) {
        (Some(v), None) => Ok((v, needs)),
        (None, _) => Err("no workspace member declares a rust-version".into()),
        (Some(a), Some(b)) => Err(format!(
            "the members declare different rust-versions ({a}, {b}): inherit [workspace.package]'s"
        )),
    }
}

/// The step: prints what is wrong; returns whether the declaration holds.
pub fn check() -> bool {
    eprintln!("\n==> rust-version holds for every locked dependency");
    let out = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--all-features"])
        .current_dir(root())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            eprintln!("xtask msrv: cargo metadata failed with {}: {err}", o.status);
            return false;
        }
        Err(e) => {
            eprintln!("xtask msrv: cargo metadata could not start: {e}");
            return false;
        }
    };
    let parsed = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map_err(|e| format!("cargo metadata: {e}"))
        .and_then(|meta| from_metadata(&meta));
    let (declared, needs) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("xtask msrv: {e}");
            return false;
        }
    };
    let over = newer_than(declared, &needs);
    if let Some(highest) = over.first() {
        const SHOWN: usize = 12;
        for n in over.iter().take(SHOWN) {
            eprintln!("xtask msrv: rust-version {declared} is not true: {n}");
        }
        if over.len() > SHOWN {
            eprintln!("xtask msrv: ... and {} more", over.len() - SHOWN);
        }
        eprintln!(
            "xtask msrv: raise [workspace.package] rust-version in Cargo.toml to {} (or lock older dependencies)",
            highest.rust_version
        );
        return false;
    }
    let top = needs.iter().max_by_key(|n| n.rust_version);
    match top {
        Some(n) => eprintln!(
            "xtask msrv: rust-version {declared} holds for {} locked packages (highest: {n})",
            needs.len()
        ),
        None => eprintln!("xtask msrv: rust-version {declared}: no dependency declares one"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> RustVersion {
        RustVersion::parse(text).unwrap_or_else(|| panic!("{text} parses"))
    }

    fn need(name: &str, rust_version: &str) -> Need {
        Need {
            name: name.into(),
            version: "1.0.0".into(),
            rust_version: v(rust_version),
        }
    }

    #[test]
    fn versions_parse_and_compare_as_numbers() {
        assert_eq!(v("1.91"), RustVersion(1, 91, 0));
        assert_eq!(v("1.91"), v("1.91.0"));
        assert!(v("1.85.1") > v("1.85"));
        // Numeric, not textual: 1.100 is newer than 1.91, 1.9 older.
        assert!(v("1.100") > v("1.91"));
        assert!(v("1.9") < v("1.88"));
        assert!(v("2") > v("1.200.3"));
        for bad in ["", "1.", "v1.91", "1.x", "1.91.0.1", "1.-2", " 1.91"] {
            assert_eq!(RustVersion::parse(bad), None, "{bad:?}");
        }
        assert_eq!(v("1.91").to_string(), "1.91");
        assert_eq!(v("1.85.1").to_string(), "1.85.1");
    }

    #[test]
    fn only_newer_needs_are_named_highest_first() {
        let needs = [
            need("alloy", "1.91"),
            need("serde", "1.61"),
            need("equal", "1.88"),
            need("equal-patch", "1.88.0"),
            need("patch", "1.88.1"),
            need("tokio", "1.90"),
            need("axum", "1.91"),
        ];
        let names = |declared: &str| -> Vec<String> {
            newer_than(v(declared), &needs)
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(
            names("1.88"),
            [
                "alloy 1.0.0 needs rustc 1.91",
                "axum 1.0.0 needs rustc 1.91",
                "tokio 1.0.0 needs rustc 1.90",
                "patch 1.0.0 needs rustc 1.88.1",
            ]
        );
        assert!(names("1.91").is_empty());
        assert!(names("1.95").is_empty());
    }

    fn meta(packages: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "workspace_members": ["path+file:///w/a#0.1.0", "path+file:///w/xtask#0.1.0"],
            "packages": packages,
        })
    }

    #[test]
    fn metadata_gives_the_members_declaration_and_the_others_needs() {
        let m = meta(serde_json::json!([
            {"id": "path+file:///w/a#0.1.0", "name": "a", "version": "0.1.0", "rust_version": "1.88"},
            {"id": "path+file:///w/xtask#0.1.0", "name": "xtask", "version": "0.1.0", "rust_version": null},
            {"id": "registry+x#alloy@1.8.3", "name": "alloy", "version": "1.8.3", "rust_version": "1.91"},
            {"id": "registry+x#old@0.1.0", "name": "old", "version": "0.1.0", "rust_version": null},
        ]));
        let (declared, needs) = from_metadata(&m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(declared, v("1.88"));
        assert_eq!(
            needs,
            [Need {
                name: "alloy".into(),
                version: "1.8.3".into(),
                rust_version: v("1.91"),
            }]
        );
        let over = newer_than(declared, &needs);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].to_string(), "alloy 1.8.3 needs rustc 1.91");
    }

    #[test]
    fn metadata_without_one_declaration_or_with_a_bad_version_is_an_error() {
        let none = meta(serde_json::json!([
            {"id": "path+file:///w/a#0.1.0", "name": "a", "version": "0.1.0", "rust_version": null},
        ]));
        assert!(from_metadata(&none).is_err_and(|e| e.contains("no workspace member")));
        let two = meta(serde_json::json!([
            {"id": "path+file:///w/a#0.1.0", "name": "a", "version": "0.1.0", "rust_version": "1.88"},
            {"id": "path+file:///w/xtask#0.1.0", "name": "xtask", "version": "0.1.0", "rust_version": "1.91"},
        ]));
        assert!(from_metadata(&two).is_err_and(|e| e.contains("1.88, 1.91")));
        let bad = meta(serde_json::json!([
            {"id": "path+file:///w/a#0.1.0", "name": "a", "version": "0.1.0", "rust_version": "1.88"},
            {"id": "registry+x#odd@1.0.0", "name": "odd", "version": "1.0.0", "rust_version": "latest"},
        ]));
        assert!(from_metadata(&bad).is_err_and(|e| e.contains("odd 1.0.0: rust-version `latest`")));
        assert!(from_metadata(&serde_json::json!({})).is_err());
    }

    /// The check itself, on this workspace (also a step of `cargo xtask ci`).
    #[test]
    fn this_workspace_declares_a_true_rust_version() {
        assert!(check(), "see the xtask msrv lines above");
    }
}
