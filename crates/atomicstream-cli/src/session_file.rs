//! `stream --session-file FILE` and `stream --resume FILE`: the session kept
//! in a private file (its token holds paid time) so that a later run uses
//! the paid time left; and the words for a server that cannot be reached.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use atomicstream::{SessionTicket, StreamSession};
pub use x402_payer::write_private;

use crate::args::{ConnArgs, SessionArgs};
use crate::{Fail, usage};

/// What `stream` buys or takes up, and where it keeps the session.
pub struct Target {
    /// Stream id.
    pub stream: String,
    /// Server and protocol (from the file when resuming).
    pub conn: ConnArgs,
    /// The saved session to take up.
    pub resume: Option<SessionTicket>,
    /// Where the session is kept.
    pub file: Option<Saver>,
}

impl Target {
    /// From the command line: `stream ID [--session-file FILE]` or `stream --resume FILE`.
    pub fn new(stream: Option<String>, conn: ConnArgs, s: &SessionArgs) -> Result<Target, Fail> {
        let Some(path) = &s.resume else {
            let stream = stream.ok_or_else(|| usage("give a stream id, or --resume FILE"))?;
            if let Some(p) = &s.session_file {
                check_writable(p)?;
            }
            return Ok(Target {
                stream,
                conn,
                resume: None,
                file: s.session_file.clone().map(Saver::new),
            });
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("--resume {}: {e}", path.display())))?;
        let ticket = SessionTicket::from_json(&text)
            .map_err(|e| usage(format!("--resume {}: {e}", path.display())))?;
        if let Some(id) = stream.filter(|id| *id != ticket.stream_id) {
            return Err(usage(format!(
                "--resume {} holds a session of `{}`, not `{id}`",
                path.display(),
                ticket.stream_id
            )));
        }
        let mut saver = Saver::new(path.clone());
        saver.last = Some(ticket.clone());
        Ok(Target {
            stream: ticket.stream_id.clone(),
            conn: ConnArgs {
                base_url: ticket.base_url.clone(),
                protocol: ticket.version,
            },
            resume: Some(ticket),
            file: Some(saver),
        })
    }

    /// Said before taking up a session: how much paid time it has left.
    /// `None` when nothing needs saying.
    pub fn resume_note(&self, slices: Option<u64>) -> Option<String> {
        let t = self.resume.as_ref()?;
        let left = t.paid_left(unix_now());
        Some(if !left.is_zero() {
            format!(
                "resuming the saved session of {} from event {}: {} of paid time left, used without paying",
                t.stream_id,
                t.next_seq.map_or("(first)".into(), |n| n.to_string()),
                crate::ui::span(left)
            )
        } else if slices == Some(0) {
            return None;
        } else {
            format!(
                "the saved session's paid time is over (it ended at {}): the next slice is \
                 bought on it within --budget and --max-per-slice (--slices 0 buys none)",
                crate::ui::when(t.paid_until)
            )
        })
    }

    /// A resumed session with no paid time left when `--slices 0` forbids buying.
    pub fn nothing_to_resume(&self, slices: Option<u64>) -> Option<String> {
        let t = self.resume.as_ref()?;
        (slices == Some(0) && t.paid_left(unix_now()).is_zero()).then(|| {
            format!(
                "the saved session's paid time is over (it ended at {}) and --slices 0 buys \
                 no more; nothing was paid",
                crate::ui::when(t.paid_until)
            )
        })
    }

    /// An error from opening or resuming the session, in words, with what to check.
    pub fn explain(&self, e: &atomicstream::Error) -> String {
        match e {
            atomicstream::Error::TokenRejected { .. } if self.resume.is_some() => format!(
                "{e}: the server no longer knows the saved session, so its paid time cannot \
                 be used; start a new one with `atomicstream stream {}`",
                self.stream
            ),
            _ if self.resume.is_some() => explain_error(e, "the session file"),
            _ => explain_error(e, "--base-url"),
        }
    }
}

/// Keeps the session's ticket in a file, written (mode 0600, atomically:
/// a temporary file renamed over it) whenever it changes.
pub struct Saver {
    path: PathBuf,
    last: Option<SessionTicket>,
    warned: bool,
}

impl Saver {
    fn new(path: PathBuf) -> Saver {
        Saver {
            path,
            last: None,
            warned: false,
        }
    }

    /// Saves the session's ticket if it changed; `written` is one past the
    /// last event written out (the next one to resume from), if any was.
    /// A write that fails is reported once on stderr; streaming goes on.
    pub fn update(&mut self, session: &StreamSession, written: Option<u64>) {
        let Some(mut t) = session.ticket() else {
            return;
        };
        if let Some(next) = written {
            t = t.with_next_seq(next);
        }
        if self.last.as_ref() == Some(&t) {
            return;
        }
        match write_private(&self.path, t.to_json().as_bytes()) {
            Ok(()) => self.last = Some(t),
            Err(e) if !self.warned => {
                self.warned = true;
                eprintln!(
                    "warning: could not save the session in {}: {e}",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
    }

    /// The end sentence's addition: how to use the paid time left.
    pub fn note(&self) -> Option<String> {
        let t = self.last.as_ref()?;
        let left = t.paid_left(unix_now());
        Some(if left.is_zero() {
            format!(
                "session saved in {} (no paid time left)",
                self.path.display()
            )
        } else {
            format!(
                "{} of paid time left: `atomicstream stream --resume {}` uses it",
                crate::ui::span(left),
                self.path.display()
            )
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The directory of `path` must exist: found out before paying, not after.
fn check_writable(path: &Path) -> Result<(), Fail> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(usage(format!(
            "--session-file {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    if path.is_dir() {
        return Err(usage(format!(
            "--session-file {} is a directory",
            path.display()
        )));
    }
    Ok(())
}

/// An error in words, with what to check when the server could not be reached.
pub fn explain_error(e: &atomicstream::Error, url_flag: &str) -> String {
    let Some(t) = e.transport_error().filter(|_| e.is_unreachable()) else {
        return e.to_string();
    };
    let hint = if t.is_refused() {
        format!("is the server running? check {url_flag}")
    } else if t.is_dns() {
        format!(
            "check the host name in {url_flag}; a local `atomicstream serve` is http://127.0.0.1:4021"
        )
    } else if t.is_tls() {
        format!("does the server speak TLS? a plain server needs http:// in {url_flag}")
    } else if t.is_timeout() {
        format!("is the server up and reachable from here? check {url_flag}")
    } else {
        format!("check {url_flag} and the network")
    };
    format!("{e} ({hint})")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_file_is_private_and_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("as-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.json");
        write_private(&p, b"one").unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(check_writable(&dir.join("missing").join("s.json")).is_err());
        assert!(check_writable(&dir).is_err());
        assert!(check_writable(&p).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
