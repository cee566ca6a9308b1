//! `stream --session-file FILE` keeps the session; `stream --resume FILE`
//! takes it up in a later run: events continue from the next seq and the
//! server is paid once while the paid time lasts.

use super::{KEY, bin, run, server};

/// `seq` of every stdout line (each a JSON event).
fn seqs(stdout: &[u8]) -> Vec<u64> {
    std::str::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON event per line");
            v["seq"].as_u64().expect("a seq")
        })
        .collect()
}

#[tokio::test]
async fn a_saved_session_resumes_from_the_next_event_without_paying_again() {
    let base = server().await;
    let dir = atomicstream_testkit::scratch("resume");
    let file = dir.join("session.json");
    let file_arg = file.to_str().unwrap().to_string();

    // Run 1: buys one 300-second slice, stops after 2 s.
    let mut c = bin();
    c.args([
        "stream",
        "btc-usd",
        "--base-url",
        &base,
        "--session-file",
        &file_arg,
        "--duration",
        "2",
    ])
    .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains(&format!("--resume {file_arg}")), "{err}");
    let first = seqs(&out.stdout);
    assert!(!first.is_empty(), "{err}");
    let last = *first.last().unwrap();

    // The file: private, complete, one past the last event printed.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["streamId"], "btc-usd");
    assert_eq!(saved["baseUrl"], base.as_str());
    assert_eq!(saved["protocol"], "v2");
    assert_eq!(saved["slices"], 1);
    assert_eq!(saved["nextSeq"], last + 1);
    assert!(saved["token"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(saved["paidUntil"].as_u64().unwrap() > 0);
    assert_eq!(crate::credited(&base, None).await, 1);

    // Run 2: takes it up, no stream id or URL needed.
    let mut c = bin();
    c.args(["stream", "--resume", &file_arg, "--duration", "2"])
        .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("resuming the saved session"), "{err}");
    assert!(err.contains("0 slices bought"), "{err}");
    let second = seqs(&out.stdout);
    assert!(!second.is_empty(), "{err}");
    assert_eq!(second[0], last + 1, "continues from the next event: {err}");
    assert!(
        second.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none missing"
    );
    assert_eq!(
        crate::credited(&base, None).await,
        1,
        "one payment while the paid time lasts"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["nextSeq"], second.last().unwrap() + 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A saved session whose paid time is over with `--slices 0` (buy none)
/// stops before reaching the server; a file of another stream is a usage error.
#[tokio::test]
async fn an_expired_session_with_slices_0_pays_nothing() {
    let dir = atomicstream_testkit::scratch("resume");
    let file = dir.join("old.json");
    let ticket = serde_json::json!({
        "format": "atomicstream-session/1",
        "baseUrl": "http://127.0.0.1:9",
        "protocol": "v2",
        "streamId": "btc-usd",
        "websocket": "ws://127.0.0.1:9/v2/stream/btc-usd",
        "token": "t0ken",
        "slices": 1,
        "paidUntil": 1_000_000_000u64,
        "nextSeq": 5,
    });
    std::fs::write(&file, ticket.to_string()).unwrap();
    let f = file.to_str().unwrap();
    let mut c = bin();
    c.args(["stream", "--resume", f, "--slices", "0"])
        .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("paid time is over") && err.contains("nothing was paid"),
        "{err}"
    );
    let mut c = bin();
    c.args(["stream", "eth-usd", "--resume", f])
        .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not `eth-usd`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A session the server does not know (a token it refuses) is not paid
/// for again under another name: the run ends with exit 5 and says so.
#[tokio::test]
async fn a_session_the_server_does_not_know_ends_with_exit_5() {
    let base = server().await;
    let dir = atomicstream_testkit::scratch("resume");
    let file = dir.join("forged.json");
    let ws = base.replacen("http://", "ws://", 1);
    let ticket = serde_json::json!({
        "format": "atomicstream-session/1",
        "baseUrl": base,
        "protocol": "v2",
        "streamId": "btc-usd",
        "websocket": format!("{ws}/v2/stream/btc-usd"),
        "token": "not-a-token-of-this-server",
        "slices": 1,
        "paidUntil": 4_000_000_000u64,
        "nextSeq": 5,
    });
    std::fs::write(&file, ticket.to_string()).unwrap();
    let mut c = bin();
    c.args(["stream", "--resume", file.to_str().unwrap(), "--quiet"])
        .env("X402_PRIVATE_KEY", KEY);
    let out = run(c).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("no longer knows the saved session")
            && err.contains("atomicstream stream btc-usd"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(crate::credited(&base, None).await, 0, "nothing paid");
    std::fs::remove_dir_all(&dir).unwrap();
}
