//! The session's deadlines, one table (as quinn-proto's `TimerTable`):
//! [`poll_timeout`](super::ClientSession::poll_timeout) is its earliest entry
//! and [`handle_timeout`](super::ClientSession::handle_timeout) dispatches the
//! expired ones by [`Timer`].

use std::time::Instant;

/// A kind of deadline. At most one of each is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Give up waiting for the server after the last paid time (no more payments wanted).
    End,
    /// Nothing heard on the live socket for `idle_timeout`: the peer is gone.
    Idle,
    /// Time to ping the live socket (every `keep_alive`).
    KeepAlive,
    /// Send the same signed renewal again.
    RenewRetry,
    /// Paid time is down to the renew margin: pay for the next slice.
    Renew,
    /// Try the connection (or the schema) again.
    Reconnect,
}

impl Timer {
    /// Every timer, in the order `handle_timeout` serves expired ones: the
    /// end first (nothing else matters after it), a dead socket before what
    /// would use it.
    pub(super) const VALUES: [Timer; 6] = [
        Timer::End,
        Timer::Idle,
        Timer::KeepAlive,
        Timer::RenewRetry,
        Timer::Renew,
        Timer::Reconnect,
    ];

    fn index(self) -> usize {
        match self {
            Timer::End => 0,
            Timer::Idle => 1,
            Timer::KeepAlive => 2,
            Timer::RenewRetry => 3,
            Timer::Renew => 4,
            Timer::Reconnect => 5,
        }
    }
}

/// When each [`Timer`] fires, if armed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct TimerTable {
    at: [Option<Instant>; Timer::VALUES.len()],
}

impl TimerTable {
    /// Arms `timer` at `at` (re-arming moves it).
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer.index()] = Some(at);
    }

    /// Disarms `timer`.
    pub(super) fn stop(&mut self, timer: Timer) {
        self.at[timer.index()] = None;
    }

    /// When `timer` fires, if armed.
    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer.index()]
    }

    /// Whether `timer` is armed.
    pub(super) fn is_set(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }

    /// Whether `timer` is armed and due at `now`.
    pub(super) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// The earliest armed deadline.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }

    /// Disarms every timer.
    pub(super) fn stop_all(&mut self) {
        *self = TimerTable::default();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_table_answers_its_earliest_deadline() {
        let t0 = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next_timeout(), None);
        t.set(Timer::Reconnect, t0 + Duration::from_secs(5));
        t.set(Timer::KeepAlive, t0 + Duration::from_secs(15));
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(5)));
        assert!(t.is_expired(Timer::Reconnect, t0 + Duration::from_secs(5)));
        assert!(!t.is_expired(Timer::KeepAlive, t0 + Duration::from_secs(5)));
        t.stop(Timer::Reconnect);
        assert!(!t.is_set(Timer::Reconnect));
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(15)));
        // Re-arming moves the deadline, earlier or later.
        t.set(Timer::KeepAlive, t0 + Duration::from_secs(1));
        assert_eq!(t.get(Timer::KeepAlive), Some(t0 + Duration::from_secs(1)));
        t.stop_all();
        assert_eq!(t.next_timeout(), None);
        // Every timer has its own slot.
        for (i, timer) in Timer::VALUES.into_iter().enumerate() {
            t.set(timer, t0 + Duration::from_secs(i as u64));
        }
        for (i, timer) in Timer::VALUES.into_iter().enumerate() {
            assert_eq!(t.get(timer), Some(t0 + Duration::from_secs(i as u64)));
        }
    }
}
