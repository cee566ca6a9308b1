//! Row family 4c: fan-out to 10,000 paid sessions with the server in its own process,
//! beside the same sockets on a bare tokio-tungstenite broadcast server in its own process
//! (`bare_server.rs`), in the same run, alternating rounds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use x402_types::ServerMessage;

use crate::bare_server::{BareProcess, open_bare};
use crate::fixture::Ws;
use crate::process::{ServerProcess, cpu_secs, open_paid_then, rss_kib};
use crate::report::{Report, percentile};

/// 10,000 paid sessions at 10 events/s each (100,000 events/s out of the
/// server), the server in its own process: every session must receive every
/// event of a 100-event window, in order; latency is the event's publication
/// stamp to its receipt.
/// One round of the fan-out with the server in its own process.
struct FanoutRound {
    /// Server CPU seconds (user, system) over the window.
    cpu_secs: (f64, f64),
    open_secs: f64,
    failed: usize,
    count: u64,
    out_of_order: usize,
    unfinished: usize,
    p50: f64,
    p99: f64,
    /// Server (user, system) and clients (user, system) in cores.
    cpu: (f64, f64, f64, f64),
    rss_mib: f64,
}

/// Which server a round runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// `atomicstream serve`, paid sockets.
    Ours,
    /// The bare broadcast server, plain sockets.
    Bare,
}

/// A server process of either side.
enum Proc {
    Ours(ServerProcess),
    Bare(BareProcess),
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Ours(s) => s.pid(),
            Proc::Bare(s) => s.pid(),
        }
    }
}

/// One socket's reader: the latency of each event of the window (`start`,
/// unknown until the window is set, and the `window` events after it), and
/// whether they came in order; events before the window only advance `latest`.
async fn read_window(
    mut ws: Ws,
    latest: Arc<std::sync::atomic::AtomicU64>,
    start: Arc<std::sync::atomic::AtomicU64>,
    window: u64,
) -> (Vec<f32>, bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut lats: Vec<f32> = Vec::with_capacity(window as usize);
    let mut next_expected: Option<u64> = None;
    let mut in_order = true;
    while let Some(Ok(m)) = ws.next().await {
        let Message::Text(t) = m else { continue };
        let Ok(ServerMessage::Event(e)) = ServerMessage::parse(t.as_str()) else {
            continue;
        };
        let a = start.load(Relaxed);
        if e.seq < a {
            // Only before the window: one shared atomic for 10,000 tasks,
            // written only by the first reader to see each event.
            if e.seq > latest.load(Relaxed) {
                latest.fetch_max(e.seq, Relaxed);
            }
            continue;
        }
        if e.seq >= a + window {
            break;
        }
        if next_expected.is_some_and(|x| x != e.seq) || (next_expected.is_none() && e.seq != a) {
            in_order = false;
        }
        next_expected = Some(e.seq + 1);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        lats.push((now_ms - e.ts.unwrap_or(0) as f64) as f32);
    }
    (lats, in_order)
}

async fn fanout_round(
    side: Side,
    sessions: usize,
    window: u64,
    rate: f64,
) -> Result<FanoutRound, String> {
    // Each socket's reader starts as soon as it is open, as a real client's
    // would: events before the window are drained as they come, so the window
    // measures the steady state, not a backlog queued while the other
    // sockets were still opening (which takes longer for paid sockets).
    let latest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let reader = |ws: Ws| tokio::spawn(read_window(ws, latest.clone(), start.clone(), window));
    let t = Instant::now();
    let (server, (readers, failed)) = match side {
        Side::Ours => {
            let s = ServerProcess::start(
                "f",
                &format!("{{ kind = \"synthetic\", rate = {rate:.1} }}"),
            )
            .await?;
            let opened = open_paid_then(&s.base, "f", sessions, 8, reader).await;
            (Proc::Ours(s), opened)
        }
        Side::Bare => {
            let s = BareProcess::start(rate).await?;
            let opened = open_bare(&s.url, sessions, 8, reader).await;
            (Proc::Bare(s), opened)
        }
    };
    let open_secs = t.elapsed().as_secs_f64();
    // The window starts a second after every socket is open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(server.pid()).unwrap_or(0);
    start.store(
        latest.load(std::sync::atomic::Ordering::Relaxed) + 3,
        std::sync::atomic::Ordering::Relaxed,
    );
    let t = Instant::now();
    let (server_cpu0, me_cpu0) = (cpu_secs(&server.pid().to_string()), cpu_secs("self"));
    let deadline = Duration::from_secs_f64(window as f64 / rate + 15.0);
    let mut lats: Vec<f64> = Vec::with_capacity(sessions * window as usize);
    let (mut count, mut out_of_order, mut unfinished) = (0u64, 0usize, 0usize);
    for h in readers {
        let left = deadline.saturating_sub(t.elapsed());
        match tokio::time::timeout(left, h).await {
            Ok(Ok((l, ok))) => {
                count += l.len() as u64;
                out_of_order += usize::from(!ok);
                lats.extend(l.into_iter().map(f64::from));
            }
            _ => unfinished += 1,
        }
    }
    let rss = rss_kib(server.pid()).unwrap_or(0).max(before);
    let secs = t.elapsed().as_secs_f64();
    let (server_cpu1, me_cpu1) = (cpu_secs(&server.pid().to_string()), cpu_secs("self"));
    drop(server);
    let cores = |a: (f64, f64), b: (f64, f64)| ((b.0 - a.0) / secs, (b.1 - a.1) / secs);
    let (su, ss) = cores(server_cpu0, server_cpu1);
    let (cu, cs) = cores(me_cpu0, me_cpu1);
    Ok(FanoutRound {
        cpu_secs: (server_cpu1.0 - server_cpu0.0, server_cpu1.1 - server_cpu0.1),
        open_secs,
        failed,
        count,
        out_of_order,
        unfinished,
        p50: percentile(&mut lats, 0.5),
        p99: percentile(&mut lats, 0.99),
        cpu: (su, ss, cu, cs),
        rss_mib: rss as f64 / 1024.0,
    })
}

/// 10,000 sessions at 10 events/s each (100,000 events/s out of the server), the
/// server in its own process: every session must receive every event of a 100-event
/// window, in order; latency is the event's publication stamp to its receipt. Rounds
/// alternate between our server (paid sockets) and the bare broadcast server (plain
/// sockets), each with a fresh process and fresh sockets; medians are reported with
/// the spread. Then, on `capacity_sessions` sockets, the rate steps up (`rates`,
/// events a second per socket, a window of 5 s or at least 100 events) for each
/// server until a round loses an event or its p99 reaches 100 ms: the largest rate
/// each sustains. No rounds (`--fanout-rounds 0`): the capacity steps only.
pub(crate) async fn bench_fanout_process(
    r: &mut Report,
    sessions: usize,
    window: u64,
    rounds: usize,
    capacity_sessions: usize,
    rates: &[f64],
) {
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..rounds {
        for (side, done) in [(Side::Ours, &mut ours), (Side::Bare, &mut bare)] {
            match fanout_round(side, sessions, window, 10.0).await {
                Ok(x) => done.push(x),
                Err(e) => {
                    r.plain(
                        &format!("4c. fan-out to {sessions} ({side:?}): {e}"),
                        f64::NAN,
                        "",
                        "server",
                        Some(false),
                    );
                    return;
                }
            }
        }
    }
    if rounds > 0 {
        report_rounds(r, sessions, window, &ours, &bare);
    }
    // Capacity: the rate steps up until p99 reaches 100 ms or an event is
    // lost, on `capacity_sessions` sockets: on 2 cores shared with the load
    // generator, fanning one event out to 10,000 sockets takes about 100 ms
    // of both cores for either server, at any rate (2 ev/s included), so at
    // 10,000 no rate passes; with fewer, the step finds where each saturates.
    // A window of 5 seconds (at least 100 events) at each rate.
    let mut sustained = [0.0f64; 2];
    for (i, side) in [Side::Ours, Side::Bare].into_iter().enumerate() {
        for &rate in rates {
            let window = ((rate * 5.0) as u64).max(100);
            match fanout_round(side, capacity_sessions, window, rate).await {
                Ok(x)
                    if x.p99 < 100.0
                        && x.count == capacity_sessions as u64 * window
                        && x.failed + x.unfinished + x.out_of_order == 0 =>
                {
                    sustained[i] = rate;
                    eprintln!(
                        "bench: 4c {side:?} sustains {rate} ev/s (p99 {:.1} ms)",
                        x.p99
                    );
                }
                Ok(x) => {
                    eprintln!(
                        "bench: 4c {side:?} breaks at {rate} ev/s (p99 {:.1} ms, {} of {} events)",
                        x.p99,
                        x.count,
                        capacity_sessions as u64 * window
                    );
                    break;
                }
                Err(e) => {
                    eprintln!("bench: 4c {side:?} at {rate} ev/s: {e}");
                    break;
                }
            }
        }
    }
    r.ratio(
        &format!("4c. fan-out to {capacity_sessions}: largest rate with p99 < 100 ms and no loss"),
        sustained[0],
        "ev/s/socket",
        &format!("bare server (steps {rates:?})"),
        sustained[1],
        0.9,
    );
}

fn report_rounds(
    r: &mut Report,
    sessions: usize,
    window: u64,
    ours: &[FanoutRound],
    bare: &[FanoutRound],
) {
    let rounds = ours.len();
    let col = |done: &[FanoutRound], f: &dyn Fn(&FanoutRound) -> f64| -> Vec<f64> {
        done.iter().map(f).collect()
    };
    let med = |v: Vec<f64>| percentile(&mut v.clone(), 0.5);
    let expected = sessions as u64 * window * rounds as u64;
    for (name, done) in [("ours", ours), ("bare", bare)] {
        let count: u64 = done.iter().map(|x| x.count).sum();
        let bad: usize = done
            .iter()
            .map(|x| x.out_of_order + x.unfinished + x.failed)
            .sum();
        r.plain(
            &format!("4c. fan-out to {sessions} at 10 ev/s ({name}): events delivered"),
            count as f64,
            "events",
            &format!(
                "no loss ({count}/{expected} over {rounds} rounds; {bad} sessions failed, out of order or unfinished)"
            ),
            Some(count == expected && bad == 0),
        );
    }
    r.cost_ratio(
        &format!("4c. fan-out to {sessions}: sockets opened in (ours: paid)"),
        med(col(ours, &|x| x.open_secs)),
        "s",
        "bare server: accept and upgrade only",
        med(col(bare, &|x| x.open_secs)),
        f64::INFINITY,
    );
    let p99s = |done: &[FanoutRound]| {
        done.iter()
            .map(|x| format!("{:.1}", x.p99))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (label, f) in [
        ("p50", (|x: &FanoutRound| x.p50) as fn(&FanoutRound) -> f64),
        ("p99", |x: &FanoutRound| x.p99),
    ] {
        r.cost_ratio(
            &format!("4c. fan-out to {sessions} at 10 ev/s: latency {label}"),
            med(col(ours, &f)),
            "ms",
            &format!(
                "bare server, median of rounds (round p99s: ours {}; bare {})",
                p99s(ours),
                p99s(bare)
            ),
            med(col(bare, &f)),
            f64::INFINITY,
        );
    }
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: latency p99 (ours)"),
        med(col(ours, &|x| x.p99)),
        "ms",
        &format!(
            "p99 < 100 ms (median of {rounds} rounds; bare: {:.1} ms)",
            med(col(bare, &|x| x.p99))
        ),
        Some(med(col(ours, &|x| x.p99)) < 100.0),
    );
    let cores = |done: &[FanoutRound]| {
        let (su, ss, cu, cs) = (
            med(col(done, &|x| x.cpu.0)),
            med(col(done, &|x| x.cpu.1)),
            med(col(done, &|x| x.cpu.2)),
            med(col(done, &|x| x.cpu.3)),
        );
        (
            su + ss,
            format!("user {su:.2}, system {ss:.2}; its clients: user {cu:.2}, system {cs:.2}"),
        )
    };
    let ((o_busy, o_how), (b_busy, b_how)) = (cores(ours), cores(bare));
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: server CPU (cores busy)"),
        o_busy,
        "cores",
        &format!("report, median (ours: {o_how}; bare {b_busy:.2} cores: {b_how})"),
        None,
    );
    // Server CPU per delivered event, user and system, microseconds.
    let per = |x: &FanoutRound| (x.cpu_secs.0 + x.cpu_secs.1) * 1e6 / x.count.max(1) as f64;
    let user = |x: &FanoutRound| x.cpu_secs.0 * 1e6 / x.count.max(1) as f64;
    let (o, b) = (med(col(ours, &per)), med(col(bare, &per)));
    r.cost_ratio(
        &format!("4c. fan-out to {sessions} at 10 ev/s: server CPU per delivered event"),
        o,
        "us",
        &format!(
            "bare server (user {:.2} + system {:.2}; ours user {:.2} + system {:.2})",
            med(col(bare, &user)),
            b - med(col(bare, &user)),
            med(col(ours, &user)),
            o - med(col(ours, &user)),
        ),
        b,
        1.2,
    );
    r.plain(
        &format!("4c. fan-out to {sessions} at 10 ev/s: server resident set (ours)"),
        ours.iter().map(|x| x.rss_mib).fold(0.0, f64::max),
        "MiB",
        &format!(
            "report (largest round; bare {:.0} MiB)",
            bare.iter().map(|x| x.rss_mib).fold(0.0, f64::max)
        ),
        None,
    );
}
