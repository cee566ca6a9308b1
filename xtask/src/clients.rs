//! The client recipes of docs/clients.md, which run in the tests: the
//! Node recipe's npm packages, installed from its own lockfile.
//!
//! The Node recipe (`examples/clients/node/buy_stream.mjs`) is an ES module,
//! and ES modules find packages only in a `node_modules` beside them or
//! above (`NODE_PATH` does not apply), so its packages live in
//! `examples/clients/node/node_modules`, installed with `npm ci` exactly as
//! `package-lock.json` pins them: what a user of the recipe runs too. The
//! Python recipe's packages go with the x402 Python SDK into `target/tools/py`.

use std::path::Path;
use std::process::Command;

use super::{root, serde_json_version, step};

/// The Node recipe's directory, relative to the workspace root.
pub const NODE_RECIPE: &str = "examples/clients/node";

/// The `websockets` package the Python recipe uses, pinned.
pub const WEBSOCKETS_PY: &str = "17.4";

/// Whether every dependency `package.json` names is installed at exactly
/// its pinned version.
fn node_recipe_installed(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("package.json")) else {
        return false;
    };
    let Ok(manifest) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let Some(deps) = manifest["dependencies"].as_object() else {
        return false;
    };
    deps.iter().all(|(name, pinned)| {
        std::fs::read_to_string(dir.join("node_modules").join(name).join("package.json"))
            .ok()
            .and_then(|t| serde_json_version(&t))
            .is_some_and(|v| Some(v.as_str()) == pinned.as_str())
    })
}

/// Installs the Node recipe's packages (`npm ci`) when any is missing or of
/// another version.
pub fn node_recipe() -> bool {
    let dir = root().join(NODE_RECIPE);
    if node_recipe_installed(&dir) {
        return true;
    }
    let mut c = Command::new("npm");
    c.args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir);
    step(
        "install the Node client recipe's packages (npm ci: @x402/fetch, @x402/evm, viem, ws)",
        &mut c,
    )
}
