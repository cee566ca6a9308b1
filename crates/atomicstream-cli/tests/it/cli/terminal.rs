//! A clean terminal: shell completions, the manual page, and colour that follows
//! `--color` and NO_COLOR (<https://no-color.org>).

use std::process::{Command, Stdio};

use super::bin;

const COMMANDS: [&str; 11] = [
    "streams",
    "schema",
    "stream",
    "pay",
    "serve",
    "config",
    "facilitator",
    "keygen",
    "demo",
    "completions",
    "man",
];

fn stdout_of(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn completions_for_every_shell_name_the_commands() {
    let bash = stdout_of(&["completions", "bash"]);
    assert!(bash.contains("complete -F _atomicstream"), "{bash}");
    for c in COMMANDS {
        assert!(
            bash.contains(&format!("atomicstream,{c})")),
            "bash lacks {c}"
        );
    }
    assert!(bash.contains("--key-file") && bash.contains("--budget"));
    let zsh = stdout_of(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef atomicstream"), "{zsh}");
    for (shell, budget) in [
        ("fish", "-l budget"),
        ("powershell", "'--budget'"),
        ("elvish", "--budget"),
    ] {
        let text = stdout_of(&["completions", shell]);
        assert!(
            text.contains("keygen") && text.contains(budget),
            "{shell}: {text}"
        );
    }
    let out = bin().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_prints_a_roff_page_with_every_command() {
    let man = stdout_of(&["man"]);
    let th = man
        .lines()
        .find(|l| l.starts_with(".TH "))
        .unwrap_or_else(|| panic!("no .TH line:\n{man}"));
    assert!(th.starts_with(".TH atomicstream 1 "), "{th}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH COMMANDS"] {
        assert!(man.contains(section), "man lacks {section}:\n{man}");
    }
    // One page: each command has its subsection, with its own options.
    for c in COMMANDS {
        assert!(
            man.contains(&format!(".SS \"atomicstream {c}\"")),
            "man lacks {c}:\n{man}"
        );
    }
    assert!(man.contains(".SS \"atomicstream config example\""), "{man}");
    assert!(
        man.contains("\\-\\-budget") && man.contains("\\-\\-key\\-file"),
        "{man}"
    );
    assert!(man.contains("Exit codes:"), "{man}");
    // The global options are described once.
    assert_eq!(man.matches("When to colour output").count(), 1, "{man}");
}

#[test]
fn help_mentions_completions_and_the_manual() {
    let help = stdout_of(&["--help"]);
    assert!(help.contains("atomicstream completions bash"), "{help}");
    assert!(help.contains("atomicstream man | man -l -"), "{help}");
    assert!(help.contains("--color"), "{help}");
}

/// Runs the binary on a pseudo-terminal (Python's `pty`), with `env` set, for at most
/// `secs` seconds (then SIGTERM, which a server answers by shutting down), and returns
/// everything the terminal received.
fn on_tty(args: &[&str], env: &[(&str, &str)], secs: u32) -> String {
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg("import pty, sys; sys.exit(pty.spawn(sys.argv[1:]) >> 8)")
        .args(["timeout", "--foreground", &secs.to_string()])
        .arg(env!("CARGO_BIN_EXE_atomicstream"))
        .args(args)
        // A terminal that supports colour, so that only NO_COLOR or --color can turn it off.
        .env("TERM", "xterm-256color")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c
        .output()
        .expect("python3 runs (it is on every CI image; `cargo xtask tools` installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has_esc(text: &str) -> bool {
    text.contains('\u{1b}')
}

/// The help, on a terminal: coloured by default, plain with NO_COLOR (any non-empty value)
/// or `--color never`; `--color always` colours even a pipe.
#[test]
fn help_colour_follows_no_color_and_the_flag() {
    let tty = on_tty(&["--help"], &[], 10);
    assert!(tty.contains("Exit codes"), "{tty}");
    assert!(has_esc(&tty), "a terminal gets colour by default: {tty:?}");
    for (args, env) in [
        (&["--help"][..], &[("NO_COLOR", "1")][..]),
        (&["--help"], &[("NO_COLOR", "yes")]),
        (&["--color", "never", "--help"], &[]),
    ] {
        let text = on_tty(args, env, 10);
        assert!(text.contains("Exit codes"), "{text}");
        assert!(!has_esc(&text), "{args:?} {env:?}: {text:?}");
    }
    let piped = bin()
        .args(["--color", "always", "--help"])
        .output()
        .unwrap();
    assert!(has_esc(&String::from_utf8_lossy(&piped.stdout)));
}

/// `serve`'s log lines: colour only when asked for (`--color always`) or on a terminal,
/// never with NO_COLOR, never into a pipe by default.
#[test]
fn serve_logs_have_no_escape_bytes_with_no_color() {
    // Two seconds, then SIGTERM: the server logs its shutdown (INFO) and exits.
    let serve = |color: &str, env: &[(&str, &str)]| {
        let out = Command::new("timeout")
            .arg("2")
            .arg(env!("CARGO_BIN_EXE_atomicstream"))
            .args(["serve", "--listen", "127.0.0.1:0", "--color", color])
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .expect("timeout (coreutils) runs");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let forced = serve("always", &[("NO_COLOR", "1")]);
    assert!(forced.contains("INFO"), "{forced}");
    assert!(
        has_esc(&forced),
        "--color always colours a pipe: {forced:?}"
    );
    let piped = serve("auto", &[]);
    assert!(!has_esc(&piped), "{piped:?}");
    // On a terminal: coloured unless NO_COLOR says otherwise.
    let tty = on_tty(&["serve", "--listen", "127.0.0.1:0"], &[], 2);
    assert!(tty.contains("INFO"), "{tty}");
    assert!(has_esc(&tty), "{tty:?}");
    let plain = on_tty(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("NO_COLOR", "1")],
        2,
    );
    assert!(plain.contains("INFO"), "{plain}");
    assert!(!has_esc(&plain), "{plain:?}");
}
