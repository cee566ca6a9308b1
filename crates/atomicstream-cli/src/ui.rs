//! What `atomicstream stream` shows on stderr: a live status line on a
//! terminal (indicatif), plain lines when stderr is a file or a pipe, JSON
//! lines with `--status-json`, nothing but the end with `--quiet`. Events go to
//! stdout in every mode, in batches ([`Lines`]); when stdout is the same terminal
//! as the live line, the line is cleared around each batch so the two never mix.
//!
//! Colour: `--color` and NO_COLOR decide ([`color_for`]); the live line itself has none.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use atomicstream::Progress;
use atomicstream::{Amount, ClientEvent};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::ColorWhen;

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

static COLOR: OnceLock<ColorWhen> = OnceLock::new();

/// Records `--color` for the whole run (the first call wins).
pub fn set_color(c: ColorWhen) {
    let _ = COLOR.set(c);
}

/// Whether output to `stream` (stderr, stdout) may carry ANSI colour: `--color`, then
/// NO_COLOR (any non-empty value disables it), then whether it is a terminal.
pub fn color_for(stream: &impl IsTerminal) -> bool {
    COLOR.get().copied().unwrap_or(ColorWhen::Auto).enabled(
        stream.is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// How often a batch of events is written out (and the live line redrawn around it).
const BATCH_EVERY: Duration = Duration::from_millis(100);
/// A batch larger than this is written at once.
const BATCH_BYTES: usize = 8 * 1024;

/// Event lines bound for stdout, collected and written in batches (a few times a
/// second, so 20 events a second scroll smoothly). With stdout on the terminal that
/// shows the live line, each batch is written with the line cleared and drawn again
/// after it (indicatif's `suspend`): an event never lands on, or under, a status line.
pub struct Lines<W: Write> {
    out: W,
    pending: Vec<u8>,
    last: Instant,
    /// One past the last event in `pending`, and one past the last event
    /// actually written out (where a resumed run starts).
    pending_next: Option<u64>,
    written_next: Option<u64>,
}

impl<W: Write> Lines<W> {
    /// Lines for `out` (stdout, locked).
    pub fn new(out: W) -> Lines<W> {
        Lines {
            out,
            pending: Vec::with_capacity(BATCH_BYTES),
            last: Instant::now(),
            pending_next: None,
            written_next: None,
        }
    }

    /// Adds the line of event `seq`.
    pub fn push_event(&mut self, line: &str, seq: u64) {
        self.push(line);
        self.pending_next = Some(seq.saturating_add(1));
    }

    /// One past the last event written out and flushed, if any: events
    /// still in the batch, or lost with a failed write, are not counted.
    pub fn written(&self) -> Option<u64> {
        self.written_next
    }

    /// Adds one line (without its newline).
    pub fn push(&mut self, line: &str) {
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
    }

    /// Whether the batch should be written now.
    pub fn due(&self) -> bool {
        self.pending.len() >= BATCH_BYTES
            || (!self.pending.is_empty() && self.last.elapsed() >= BATCH_EVERY)
    }

    /// Writes the batch and flushes. An error means the reader left (a closed pipe):
    /// the caller stops before the next payment.
    pub fn flush(&mut self, ui: &Ui) -> io::Result<()> {
        self.last = Instant::now();
        if self.pending.is_empty() {
            return self.out.flush();
        }
        let (out, pending) = (&mut self.out, &self.pending);
        let r = ui.around_stdout(|| out.write_all(pending).and_then(|()| out.flush()));
        self.pending.clear();
        if r.is_ok() && self.pending_next.is_some() {
            self.written_next = self.pending_next;
        }
        r
    }
}

/// The status display of one stream.
pub struct Ui {
    mode: Mode,
    /// Stdout is the terminal the live line is drawn on.
    shared_terminal: bool,
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
    atomicstream::session::human(d)
}

impl Ui {
    /// The display for `stream` (`quiet` wins over `json`; a terminal gets the live line).
    pub fn new(stream: &str, budget: Amount, quiet: bool, json: bool, verbose: bool) -> Ui {
        let mode = if quiet {
            Mode::Quiet
        } else if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            let pb = live_bar(ProgressDrawTarget::stderr());
            pb.enable_steady_tick(Duration::from_millis(200));
            Mode::Live(pb)
        } else {
            Mode::Plain
        };
        let shared = matches!(mode, Mode::Live(_)) && std::io::stdout().is_terminal();
        Ui::with_mode(mode, shared, stream, budget, verbose)
    }

    fn with_mode(
        mode: Mode,
        shared_terminal: bool,
        stream: &str,
        budget: Amount,
        verbose: bool,
    ) -> Ui {
        Ui {
            mode,
            shared_terminal,
            verbose,
            stream: stream.to_string(),
            budget,
            started: Instant::now(),
            last: (u64::MAX, u64::MAX, u64::MAX),
        }
    }

    /// Runs `write` (a write to stdout) with the live line cleared when stdout shares
    /// its terminal, and draws the line again after it.
    pub fn around_stdout<R>(&self, write: impl FnOnce() -> R) -> R {
        match &self.mode {
            Mode::Live(pb) if self.shared_terminal => pb.suspend(write),
            _ => write(),
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
        describe(e)
    }
}

/// A session event in words, with local clock times (`demo` prints these too).
pub fn describe(e: &ClientEvent) -> String {
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
        ClientEvent::PaymentRefused { .. } => e.to_string(),
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
        ClientEvent::SourceUnavailable { message } => {
            format!(
                "the server says the stream's source failed: {message} (paid time keeps running)"
            )
        }
        ClientEvent::EventsSkipped { count } => {
            format!("{count} events published while unpaid were skipped")
        }
        ClientEvent::Duplicate { seq } => format!("duplicate event {seq} dropped"),
        ClientEvent::Reconnecting { attempt, delay } => format!(
            "connection lost: reconnecting in {} (attempt {attempt})",
            span(*delay)
        ),
        other => other.to_string(),
    }
}

/// The live line: a spinner and the status message, no colour.
fn live_bar(target: ProgressDrawTarget) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, target);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb
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
        ClientEvent::SourceUnavailable { message } => {
            json!({"type": "source_unavailable", "message": message})
        }
        ClientEvent::Reconnecting { attempt, delay } => {
            json!({"type": "reconnecting", "attempt": attempt, "delayMs": delay.as_millis() as u64})
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A small terminal: fixed width, autowrap with the pending-wrap rule of real
    /// terminals (a line filled to the last column wraps on the next character), `\n`
    /// as CR LF (the tty's onlcr). Both the live line and stdout write to it.
    #[derive(Debug)]
    struct Screen {
        width: usize,
        rows: Vec<Vec<char>>,
        row: usize,
        col: usize,
        wrap: bool,
    }

    impl Screen {
        fn put(&mut self, c: char) {
            match c {
                '\n' => {
                    self.row += 1;
                    self.col = 0;
                    self.wrap = false;
                }
                '\r' => {
                    self.col = 0;
                    self.wrap = false;
                }
                c => {
                    if self.wrap {
                        self.row += 1;
                        self.col = 0;
                        self.wrap = false;
                    }
                    while self.rows.len() <= self.row {
                        self.rows.push(Vec::new());
                    }
                    let r = &mut self.rows[self.row];
                    while r.len() <= self.col {
                        r.push(' ');
                    }
                    r[self.col] = c;
                    if self.col + 1 == self.width {
                        self.wrap = true;
                    } else {
                        self.col += 1;
                    }
                }
            }
        }

        fn lines(&self) -> Vec<String> {
            self.rows
                .iter()
                .map(|r| r.iter().collect::<String>().trim_end().to_string())
                .filter(|l| !l.is_empty())
                .collect()
        }
    }

    #[derive(Debug, Clone)]
    struct Tty(Arc<Mutex<Screen>>);

    impl Tty {
        fn screen(&self) -> std::sync::MutexGuard<'_, Screen> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl indicatif::TermLike for Tty {
        fn width(&self) -> u16 {
            self.screen().width as u16
        }
        fn move_cursor_up(&self, n: usize) -> io::Result<()> {
            let mut s = self.screen();
            s.row = s.row.saturating_sub(n);
            s.wrap = false;
            Ok(())
        }
        fn move_cursor_down(&self, n: usize) -> io::Result<()> {
            let mut s = self.screen();
            s.row += n;
            s.wrap = false;
            Ok(())
        }
        fn move_cursor_right(&self, n: usize) -> io::Result<()> {
            let mut s = self.screen();
            s.col = (s.col + n).min(s.width - 1);
            Ok(())
        }
        fn move_cursor_left(&self, n: usize) -> io::Result<()> {
            let mut s = self.screen();
            s.col = s.col.saturating_sub(n);
            s.wrap = false;
            Ok(())
        }
        fn write_line(&self, line: &str) -> io::Result<()> {
            self.write_str(line)?;
            self.write_str("\n")
        }
        fn write_str(&self, text: &str) -> io::Result<()> {
            let mut s = self.screen();
            text.chars().for_each(|c| s.put(c));
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            let mut s = self.screen();
            let row = s.row;
            if let Some(r) = s.rows.get_mut(row) {
                r.clear();
            }
            s.col = 0;
            s.wrap = false;
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Write for Tty {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut s = self.screen();
            String::from_utf8_lossy(buf).chars().for_each(|c| s.put(c));
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Streams 5 batches of events to a terminal that shows the live line, as
    /// `stream` does, and reads the screen after each: `shared` is whether the
    /// display knows stdout is that terminal.
    fn run(shared: bool) -> Vec<Vec<String>> {
        let tty = Tty(Arc::new(Mutex::new(Screen {
            width: 100,
            rows: Vec::new(),
            row: 0,
            col: 0,
            wrap: false,
        })));
        let pb = live_bar(ProgressDrawTarget::term_like_with_hz(
            Box::new(tty.clone()),
            200,
        ));
        let mut ui = Ui::with_mode(
            Mode::Live(pb),
            shared,
            "demo-fast",
            Amount::from(20_000u64),
            false,
        );
        let mut out = Lines::new(tty.clone());
        let mut screens = Vec::new();
        for batch in 0..5u64 {
            ui.status(&Progress {
                slices: batch + 1,
                events: batch * 4,
                ..Progress::default()
            });
            for i in 0..4 {
                out.push(&format!("{{\"seq\":{}}}", batch * 4 + i));
            }
            out.flush(&ui).expect("the screen takes every write");
            screens.push(tty.screen().lines());
        }
        screens
    }

    /// Each line of the screen is either an event or the live line, the live line
    /// shows once and last, and the events are all there, in order.
    fn clean(screen: &[String], events: u64) -> Result<(), String> {
        let is_status = |l: &String| l.contains("demo-fast") && l.contains("slice");
        let status: Vec<usize> = (0..screen.len())
            .filter(|&i| is_status(&screen[i]))
            .collect();
        if status != [screen.len() - 1] {
            return Err(format!(
                "the live line must show once, at the bottom: {screen:#?}"
            ));
        }
        let want: Vec<String> = (0..events).map(|n| format!("{{\"seq\":{n}}}")).collect();
        if screen[..screen.len() - 1] != want[..] {
            return Err(format!("events mixed with the live line: {screen:#?}"));
        }
        Ok(())
    }

    #[test]
    fn events_never_share_a_line_with_the_live_line() {
        for (i, screen) in run(true).iter().enumerate() {
            clean(screen, 4 * (i as u64 + 1)).unwrap_or_else(|e| panic!("batch {i}: {e}"));
        }
    }

    #[test]
    fn the_screen_check_sees_what_writing_past_the_live_line_does() {
        // Without clearing the line around writes, stale status lines stay between the
        // events: the check above would catch a display that forgot to.
        let screens = run(false);
        assert!(
            (0..screens.len()).any(|i| clean(&screens[i], 4 * (i as u64 + 1)).is_err()),
            "{screens:#?}"
        );
    }

    #[test]
    fn lines_are_batched_until_due() {
        let mut out = Lines::new(Vec::new());
        out.push("{\"seq\":1}");
        assert!(!out.due(), "one line is kept for the next batch");
        let ui = Ui::with_mode(Mode::Quiet, false, "s", Amount::from(1u64), false);
        out.flush(&ui).expect("a Vec takes every write");
        assert_eq!(out.out, b"{\"seq\":1}\n");
        for _ in 0..1000 {
            out.push("{\"seq\":2}");
        }
        assert!(out.due(), "8 KiB is written at once");
    }

    /// The resume point counts only events that reached the reader.
    #[test]
    fn written_counts_only_what_was_flushed() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let ui = Ui::with_mode(Mode::Quiet, false, "s", Amount::from(1u64), false);
        let mut out = Lines::new(Vec::new());
        out.push_event("{\"seq\":7}", 7);
        assert_eq!(out.written(), None, "still in the batch");
        out.flush(&ui).unwrap();
        assert_eq!(out.written(), Some(8));
        let mut gone = Lines::new(Closed);
        gone.push_event("{\"seq\":9}", 9);
        assert!(gone.flush(&ui).is_err());
        assert_eq!(
            gone.written(),
            None,
            "a failed write is not a written event"
        );
    }

    #[test]
    fn color_follows_the_flag_then_no_color_then_the_terminal() {
        use std::ffi::OsStr;
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        assert!(ColorWhen::Auto.enabled(true, None));
        assert!(
            ColorWhen::Auto.enabled(true, empty),
            "an empty NO_COLOR is unset"
        );
        assert!(!ColorWhen::Auto.enabled(true, set));
        assert!(
            !ColorWhen::Auto.enabled(false, None),
            "no colour into a pipe"
        );
        assert!(
            ColorWhen::Always.enabled(false, set),
            "the flag overrides NO_COLOR"
        );
        assert!(!ColorWhen::Never.enabled(true, None));
    }
}
