//! What `atomicstream stream` shows on stderr: a live status line on a
//! terminal (indicatif), plain lines when stderr is a file or a pipe, JSON
//! lines with `--status-json`, nothing but the end with `--quiet`. Events go to
//! stdout in every mode.

use std::time::{Duration, Instant};

use atomicstream::transport::Progress;
use atomicstream::{Amount, ClientEvent};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How status is shown.
pub enum Mode {
    /// A live line on the terminal.
    Live(ProgressBar),
    /// One line per change (stderr is not a terminal).
    Plain,
    /// JSON lines for programs and agents.
    Json,
    /// Nothing but the end.
    Quiet,
}

/// The status display of one stream.
pub struct Ui {
    mode: Mode,
    verbose: bool,
    stream: String,
    budget: Amount,
    started: Instant,
    last: (u64, u64, u64),
}

/// A unix time as local clock time and what is left: `14:37:37, 4m59s left`.
pub fn when(unix: u64) -> String {
    use chrono::TimeZone;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let clock = i64::try_from(unix)
        .ok()
        .and_then(|u| chrono::Local.timestamp_opt(u, 0).single())
        .map_or_else(|| unix.to_string(), |t| t.format("%H:%M:%S").to_string());
    if unix >= now {
        format!("{clock}, {} left", span(Duration::from_secs(unix - now)))
    } else {
        format!("{clock}, {} ago", span(Duration::from_secs(now - unix)))
    }
}

/// `4m59s`, `1h02m`, `12s`, `0.8s`.
pub fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{:.1}s", d.as_secs_f64()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

impl Ui {
    /// The display for `stream` (`quiet` wins over `json`; a terminal gets the live line).
    pub fn new(stream: &str, budget: Amount, quiet: bool, json: bool, verbose: bool) -> Ui {
        use std::io::IsTerminal;
        let mode = if quiet {
            Mode::Quiet
        } else if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.enable_steady_tick(Duration::from_millis(200));
            Mode::Live(pb)
        } else {
            Mode::Plain
        };
        Ui {
            mode,
            verbose,
            stream: stream.to_string(),
            budget,
            started: Instant::now(),
            last: (u64::MAX, u64::MAX, u64::MAX),
        }
    }

    /// An amount in USDC (with atomic units under `--verbose`).
    pub fn usdc(&self, a: &Amount) -> String {
        if self.verbose {
            format!("{} USDC ({a} atomic units)", a.to_display(6))
        } else {
            format!("{} USDC", a.to_display(6))
        }
    }

    /// A session event (not data).
    pub fn event(&self, e: &ClientEvent) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Plain => eprintln!("{}", self.describe(e)),
            Mode::Live(pb) => pb.println(self.describe(e)),
            Mode::Json => {
                if let Some(j) = json_event(e) {
                    eprintln!("{j}");
                }
            }
        }
    }

    /// The status, refreshed (the live line) or written when it changed (JSON).
    pub fn status(&mut self, p: &Progress) {
        let events_rate = p.events as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        match &self.mode {
            Mode::Live(pb) => pb.set_message(format!(
                "{}  slice {}  {} left  spent {} of {}  {} events ({:.1}/s)  {} reconnects",
                self.stream,
                p.slices,
                span(p.remaining()),
                self.usdc(&p.paid),
                self.usdc(&self.budget),
                p.events,
                events_rate,
                p.reconnects
            )),
            Mode::Json => {
                let key = (p.slices, p.reconnects, p.renew_retries);
                if key != self.last {
                    self.last = key;
                    eprintln!(
                        "{}",
                        serde_json::json!({
                            "type": "status",
                            "stream": self.stream,
                            "slice": p.slices,
                            "secondsLeft": p.remaining().as_secs(),
                            "spent": p.paid.to_display(6),
                            "spentAtomic": p.paid.to_string(),
                            "budget": self.budget.to_display(6),
                            "events": p.events,
                            "reconnects": p.reconnects,
                            "renewRetries": p.renew_retries,
                        })
                    );
                }
            }
            Mode::Plain | Mode::Quiet => {}
        }
    }

    /// The end: the live line goes, the summary and the reason stay.
    pub fn end(&self, summary: &str, ended: &str, code: u8) {
        if let Mode::Live(pb) = &self.mode {
            pb.finish_and_clear();
        }
        match &self.mode {
            Mode::Json => eprintln!(
                "{}",
                serde_json::json!({"type": "ended", "summary": summary, "reason": ended, "exit": code})
            ),
            Mode::Quiet => eprintln!("ended: {ended} (exit {code})"),
            _ => {
                eprintln!("summary: {summary}");
                eprintln!("ended: {ended} (exit {code})");
            }
        }
    }

    /// An event in words.
    pub fn describe(&self, e: &ClientEvent) -> String {
        match e {
            ClientEvent::Hello(h) => format!(
                "connected: session {}, {}-second slices, paid until {}{}",
                h.session_id.chars().take(8).collect::<String>(),
                h.slice_seconds,
                when(h.expires_at),
                if h.resumed { " (resumed)" } else { "" }
            ),
            ClientEvent::PaymentAccepted { slice, settlement } => match settlement {
                Some(s) if !s.transaction.is_empty() => {
                    format!("paid slice {slice} (transaction {})", s.transaction)
                }
                _ => format!("paid slice {slice}"),
            },
            ClientEvent::PaymentPending { slice, retry_after } => format!(
                "slice {slice}: the server is still settling the payment; asking again in {}",
                span(*retry_after)
            ),
            ClientEvent::PaymentRefused {
                slice,
                status,
                code,
                ..
            } => format!("the server refused the payment for slice {slice} ({status} {code})"),
            ClientEvent::Renewed { expires_at, slices } => {
                format!(
                    "renewed: {slices} slices bought, paid until {}",
                    when(*expires_at)
                )
            }
            ClientEvent::Expiring { seconds_left } => {
                format!("paid time runs out in {seconds_left}s")
            }
            ClientEvent::Expired => "paid time ran out".into(),
            ClientEvent::Resumed { missed } => {
                format!("resumed where it stopped ({missed} events could not be replayed)")
            }
            ClientEvent::EventsLost { count } => {
                format!("{count} events were lost (evicted from the server's replay buffer)")
            }
            ClientEvent::EventsSkipped { count } => {
                format!("{count} events published while unpaid were skipped")
            }
            ClientEvent::Duplicate { seq } => format!("duplicate event {seq} dropped"),
            ClientEvent::Reconnecting { attempt, delay } => format!(
                "connection lost: reconnecting in {} (attempt {attempt})",
                span(*delay)
            ),
            other => format!("{other:?}"),
        }
    }
}

fn json_event(e: &ClientEvent) -> Option<serde_json::Value> {
    use serde_json::json;
    Some(match e {
        ClientEvent::Hello(h) => json!({"type": "hello", "sessionId": h.session_id,
            "sliceSeconds": h.slice_seconds, "expiresAt": h.expires_at, "resumed": h.resumed}),
        ClientEvent::PaymentAccepted { slice, settlement } => {
            json!({"type": "paid", "slice": slice,
            "transaction": settlement.as_ref().map(|s| s.transaction.clone())})
        }
        ClientEvent::PaymentPending { slice, retry_after } => {
            json!({"type": "pending", "slice": slice, "retryAfter": retry_after.as_secs()})
        }
        ClientEvent::PaymentRefused {
            slice,
            status,
            code,
            maybe_spent,
        } => json!({"type": "refused", "slice": slice, "status": status, "code": code,
            "maybeSpent": maybe_spent}),
        ClientEvent::Renewed { expires_at, slices } => {
            json!({"type": "renewed", "slices": slices, "expiresAt": expires_at})
        }
        ClientEvent::Expiring { seconds_left } => {
            json!({"type": "expiring", "secondsLeft": seconds_left})
        }
        ClientEvent::Expired => json!({"type": "expired"}),
        ClientEvent::Resumed { missed } => json!({"type": "resumed", "missed": missed}),
        ClientEvent::EventsLost { count } => json!({"type": "events_lost", "count": count}),
        ClientEvent::EventsSkipped { count } => json!({"type": "events_skipped", "count": count}),
        ClientEvent::Reconnecting { attempt, delay } => {
            json!({"type": "reconnecting", "attempt": attempt, "delayMs": delay.as_millis() as u64})
        }
        _ => return None,
    })
}
