//! Row family 5: idle paid sessions, memory per session and time to open them.

use std::time::{Duration, Instant};

use crate::process::{ServerProcess, open_paid, rss_kib};
use crate::report::Report;

pub(crate) async fn bench_scale(r: &mut Report, counts: &[usize]) {
    for &n in counts {
        let server = match ServerProcess::start("idle", "{ kind = \"api\" }").await {
            Ok(s) => s,
            Err(e) => {
                r.plain(
                    &format!("5. scale {n}: server did not start ({e})"),
                    f64::NAN,
                    "",
                    "run `cargo build --release` first",
                    Some(false),
                );
                return;
            }
        };
        let before = rss_kib(server.pid()).unwrap_or(0);
        let t = Instant::now();
        let (sockets, failed) = open_paid(&server.base, "idle", n, 1).await;
        let open_secs = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(server.pid()).unwrap_or(0);
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
        r.plain(
            &format!("5. {n} idle paid sessions: memory per session"),
            per / 1024.0,
            "KiB",
            "< 64 KiB",
            Some(per < 64.0 * 1024.0 && failed == 0),
        );
        r.plain(
            &format!("5. {n} idle paid sessions: time to open all ({failed} failed)"),
            open_secs,
            "s",
            "report",
            None,
        );
        drop(sockets);
    }
}
