//! Debian's `chromium` for the browser-page test
//! (`crates/atomicstream-cli/tests/cli/browser.rs`): installed with apt-get
//! when missing, with a font so the screenshot has readable text.

use std::process::Command;

/// Debian's packages: the browser and the fonts the page names.
const PACKAGES: &[&str] = &["chromium", "fonts-dejavu-core"];

fn chromium_version() -> Option<String> {
    let out = Command::new("chromium").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "Chromium 148.0.7778.167 built on Debian GNU/Linux 12 (bookworm)"
    (out.status.success() && text.starts_with("Chromium")).then_some(text)
}

fn fonts_present() -> bool {
    std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file()
}

/// Makes sure `chromium` runs; installs it (apt-get, as root or through sudo) when not.
pub(crate) fn chromium() -> bool {
    if let Some(v) = chromium_version()
        && fonts_present()
    {
        eprintln!("xtask: {v}");
        return true;
    }
    if !crate::apt_install("chromium", PACKAGES) {
        return false;
    }
    match chromium_version() {
        Some(v) => {
            eprintln!("xtask: {v}");
            true
        }
        None => {
            eprintln!("xtask: chromium is still not runnable after apt-get install");
            false
        }
    }
}
