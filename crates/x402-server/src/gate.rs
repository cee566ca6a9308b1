//! Polling a source only after it woke.
//!
//! A socket's task waits on several sources at once (live events, the
//! client's frames, the endpoint's mailbox). `tokio::select!` polls every
//! pending source each time the task wakes, and with 10,000 sockets each such
//! poll touches memory that is no longer in cache: polling the WebSocket's read
//! side even zero-fills tungstenite's read buffer. With 10 events a second per
//! socket, most wakes are for a live event, so the other sources were polled
//! for nothing. A [`Gate`] puts its own waker between a source and the task
//! and skips the poll until that waker has fired (what `FuturesUnordered`
//! does for its futures).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Remembers whether its source woke since it was last polled.
pub(crate) struct Gate {
    flag: Arc<Flag>,
    waker: Waker,
}

impl Gate {
    /// A gate that lets the first poll through.
    pub(crate) fn new() -> Gate {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gate {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Polls the source with `poll` if it woke since its last `Pending`
    /// (or returned `Ready` last time); otherwise returns `Pending` at once.
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Register first: a wake between the check and here is not lost.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let r = poll(&mut Context::from_waker(&self.waker));
        if r.is_ready() {
            // A source that had an item may have more without waking again.
            self.flag.woken.store(true, Ordering::Release);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gated_channel_yields_every_item_and_wakes_the_task() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        let gate = Gate::new();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(x) = std::future::poll_fn(|cx| gate.poll(cx, |c| rx.poll_recv(c))).await
            {
                got.push(x);
            }
            got
        });
        for i in 0..100 {
            tx.send(i).await.unwrap();
            if i % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        assert_eq!(reader.await.unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_source_that_did_not_wake_is_not_polled() {
        let gate = Gate::new();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut polls = 0;
        // First poll goes through and parks.
        let _ = gate.poll(&mut cx, |_| {
            polls += 1;
            Poll::<()>::Pending
        });
        let _ = gate.poll(&mut cx, |_| {
            polls += 1;
            Poll::<()>::Pending
        });
        assert_eq!(polls, 1, "no wake, no poll");
        gate.waker.wake_by_ref();
        let _ = gate.poll(&mut cx, |_| {
            polls += 1;
            Poll::<()>::Pending
        });
        assert_eq!(polls, 2, "polled after its waker fired");
    }
}
