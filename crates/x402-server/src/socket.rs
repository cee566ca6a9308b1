//! One paid socket: hello, catch-up from the replay buffer, live events
//! while paid, the endpoint's notices, and the close.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use x402_session::{ConnId, Connected, Quote, ServerTransmit};
use x402_types::{ClientMessage, CloseCode, ErrorCode, ServerMessage};

use crate::http::IpGuard;
use crate::hub::{Frame, Hub, SourceState};
use crate::state::{AppState, now};

pub(crate) struct Connection {
    state: Arc<AppState>,
    conn: ConnId,
    hub: Arc<Hub>,
    live: broadcast::Receiver<Frame>,
    rx: mpsc::Receiver<ServerTransmit>,
    next: u64,
    /// Paid time as the endpoint last said (refreshed on each of its transmits).
    until: Option<Instant>,
    /// Frames being written together (kept to reuse its allocation).
    batch: Vec<Frame>,
    /// The session's quote (in-band vouchers are paid under it).
    quote: Quote,
    /// The channel paying this connection, once known (`voucher-needed`).
    channel: Arc<crate::in_band::SocketChannel>,
    guard: IpGuard,
}

/// What woke a socket's task, other than a live event.
enum Control {
    Closing(tokio::sync::watch::Receiver<bool>, bool),
    Source(tokio::sync::watch::Receiver<SourceState>, SourceState),
    Mail(Option<ServerTransmit>),
    Client(Option<Result<Message, axum::Error>>),
}

/// The next value of a watch, with the receiver back to wait for the one
/// after; once the sender is gone, never (nothing more will change).
async fn next_change<T: Clone>(
    mut rx: tokio::sync::watch::Receiver<T>,
) -> (tokio::sync::watch::Receiver<T>, T) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    let v = rx.borrow_and_update().clone();
    (rx, v)
}

/// At most this many event frames go into one flush.
const MAX_BATCH: usize = 64;

enum Step {
    Continue,
    Close(Option<CloseCode>),
    /// The client closed: send the close reply the WebSocket layer queued.
    Answer,
}

type Sink = WebSocket;

impl Connection {
    /// The upgrade completed: connect the session (not before), then serve.
    pub(crate) async fn open(
        state: Arc<AppState>,
        socket: WebSocket,
        quote: Quote,
        from: Option<u64>,
        hub: Arc<Hub>,
        guard: IpGuard,
        channel: Option<x402_types::B256>,
    ) {
        let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(64);
        let live = hub.subscribe();
        state
            .mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conn, tx);
        let head = hub.head();
        let connected = state.connect(&quote, conn, from, head).await;
        let mut sink = socket;
        let c = match connected {
            Ok(c) => c,
            Err(r) => {
                // Paid time ran out between the check and the 101.
                state
                    .mailboxes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&conn);
                let code = if r.code == ErrorCode::StoreUnavailable {
                    1013 // try again later
                } else {
                    CloseCode::PaymentExpired.code()
                };
                let frame = CloseFrame {
                    code,
                    reason: "".into(),
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    sink.send(Message::Close(Some(frame))),
                )
                .await;
                return;
            }
        };
        let until = state.core().deliver_until(conn);
        let c2 = Connection {
            state,
            conn,
            hub,
            live,
            rx,
            next: c.start,
            until,
            batch: Vec::new(),
            quote,
            channel: crate::in_band::SocketChannel::new(channel),
            guard,
        };
        c2.run(sink, c).await;
    }

    async fn send(&self, ws: &mut Sink, text: impl Into<Utf8Bytes>) -> bool {
        let t = self.state.cfg.limits.write_timeout();
        matches!(
            tokio::time::timeout(t, ws.send(Message::Text(text.into()))).await,
            Ok(Ok(()))
        )
    }

    /// Writes event frames with one flush (one write to the socket for a burst,
    /// not one per event; each frame's text is shared, not copied) and counts them.
    async fn send_frames(&mut self, ws: &mut Sink, frames: &[Frame]) -> bool {
        let Some(last) = frames.last() else {
            return true;
        };
        let t = self.state.cfg.limits.write_timeout();
        let write = async {
            for f in frames {
                ws.feed(Message::Text(f.text.clone())).await?;
            }
            ws.flush().await
        };
        // Nearly every write completes at once: the write timeout's timer (a
        // clock read and a timer entry per send) only when it does not.
        let mut write = std::pin::pin!(write);
        let written = match futures::poll!(write.as_mut()) {
            Poll::Ready(r) => r.is_ok(),
            Poll::Pending => matches!(tokio::time::timeout(t, write).await, Ok(Ok(()))),
        };
        if !written {
            return false;
        }
        let n = frames.len() as u64;
        self.state.metrics.events_sent.inc_by(n);
        self.next = last.seq + 1;
        true
    }

    async fn notice(&self, ws: &mut Sink, code: ErrorCode, count: u64) -> bool {
        self.state
            .metrics
            .events_dropped
            .get_or_create(&crate::metrics::OutcomeLabel {
                outcome: if code == ErrorCode::EventsSkipped {
                    "unpaid".into()
                } else {
                    "evicted".into()
                },
            })
            .inc_by(count);
        let message = match code {
            ErrorCode::EventsSkipped => {
                format!("{count} events were published while this session was not paid")
            }
            _ => format!("{count} events were evicted from the replay buffer"),
        };
        let m = ServerMessage::Error {
            code,
            message,
            count: Some(count),
        };
        self.send(ws, m.to_json()).await
    }

    /// The source failed: say so (paid time keeps running; events resume
    /// when the source does). Nothing to say when it is live.
    async fn on_source(&self, ws: &mut Sink, state: SourceState) -> Step {
        let SourceState::Down(reason) = state else {
            return Step::Continue;
        };
        let m = ServerMessage::Error {
            code: ErrorCode::SourceUnavailable,
            message: format!("events stopped: {reason}"),
            count: None,
        };
        if self.send(ws, m.to_json()).await {
            Step::Continue
        } else {
            Step::Close(None)
        }
    }

    fn deliverable(&self) -> bool {
        self.until.is_some_and(|u| now() < u)
    }

    /// Sends what the buffer holds from `next`, if paid.
    async fn catch_up(&mut self, ws: &mut Sink) -> bool {
        if !self.deliverable() {
            return true;
        }
        let c = self.hub.catch_up(self.next);
        if c.lost > 0 && !self.notice(ws, ErrorCode::EventsLost, c.lost).await {
            return false;
        }
        for chunk in c.frames.chunks(MAX_BATCH) {
            if !self.send_frames(ws, chunk).await {
                return false;
            }
        }
        true
    }

    async fn run(mut self, mut tx: Sink, c: Connected) {
        let close = 'outer: {
            if !self
                .send(&mut tx, ServerMessage::Hello(c.hello).to_json())
                .await
            {
                break 'outer None;
            }
            if c.skipped > 0
                && !self
                    .notice(&mut tx, ErrorCode::EventsSkipped, c.skipped)
                    .await
            {
                break 'outer None;
            }
            if c.lost > 0 && !self.notice(&mut tx, ErrorCode::EventsLost, c.lost).await {
                break 'outer None;
            }
            if !self.catch_up(&mut tx).await {
                break 'outer None;
            }
            let mut closing = self.state.closing.subscribe();
            let already = *closing.borrow_and_update();
            if already {
                break 'outer Some(CloseCode::Other(1012));
            }
            // A buyer is told when the source fails (and at once if it has).
            let mut source = self.hub.watch_source();
            source.mark_changed();
            // The two watches are awaited by futures kept across wakes: a
            // `changed()` made anew on each wake registers with the watch's
            // waiter list and leaves it again, per socket and per event.
            let mut closing = Box::pin(next_change(closing));
            let mut source = Box::pin(next_change(source));
            // The control inputs (shutdown, the source's state, the mailbox,
            // the client's frames) are polled only after one of them woke,
            // through one gate: nearly every wake is a live event, which then
            // costs no poll of the others (see `gate`).
            let control_gate = crate::gate::Gate::new();
            loop {
                let control = std::future::poll_fn(|cx| {
                    control_gate.poll(cx, |c| {
                        if let Poll::Ready((rx, now)) = closing.as_mut().poll(c) {
                            return Poll::Ready(Control::Closing(rx, now));
                        }
                        if let Poll::Ready((rx, state)) = source.as_mut().poll(c) {
                            return Poll::Ready(Control::Source(rx, state));
                        }
                        if let Poll::Ready(t) = self.rx.poll_recv(c) {
                            return Poll::Ready(Control::Mail(t));
                        }
                        // One socket for both directions (no split, no lock per frame).
                        tx.poll_next_unpin(c).map(Control::Client)
                    })
                });
                let step = tokio::select! {
                    // Control first, without a random draw on each wake: a
                    // steady stream of events never holds back a close, a
                    // renewal or a client's frame.
                    biased;
                    c = control => match c {
                        Control::Closing(rx, now_closing) => {
                            closing.set(next_change(rx));
                            if now_closing {
                                Step::Close(Some(CloseCode::Other(1012)))
                            } else {
                                Step::Continue
                            }
                        }
                        Control::Source(rx, state) => {
                            source.set(next_change(rx));
                            self.on_source(&mut tx, state).await
                        }
                        Control::Mail(Some(t)) => self.on_transmit(&mut tx, t).await,
                        Control::Mail(None) => Step::Close(None),
                        Control::Client(msg) => self.on_client(&mut tx, msg).await,
                    },
                    frame = self.live.recv() => self.on_live(&mut tx, frame).await,
                };
                match step {
                    Step::Continue => {}
                    Step::Close(code) => break 'outer code,
                    Step::Answer => {
                        // A metered session's unused charge goes back before the
                        // close is answered: a client that refunds its channel
                        // once closed sees the metered total.
                        self.stop();
                        self.state.return_unused(&self.quote.id).await;
                        let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
                        break 'outer None;
                    }
                }
            }
        };
        if let Some(code) = close {
            let frame = CloseFrame {
                code: code.code(),
                reason: "".into(),
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(Some(frame))))
                    .await;
        }
        self.stop();
        self.state.return_unused(&self.quote.id).await;
    }

    /// The socket is done: no more transmits, and the core knows (a second call
    /// does nothing).
    fn stop(&self) {
        self.state
            .mailboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.conn);
        let conn = self.conn;
        self.state.with_core(|ep, now| ep.disconnect(now, conn));
    }

    async fn on_live(
        &mut self,
        tx: &mut Sink,
        frame: Result<Frame, broadcast::error::RecvError>,
    ) -> Step {
        match frame {
            Ok(f) if f.seq < self.next => Step::Continue,
            Ok(f) if f.seq == self.next => {
                if !self.deliverable() {
                    return Step::Continue; // held in the buffer until renewed
                }
                // Take what else is already published, in order, into one write.
                let mut batch = std::mem::take(&mut self.batch);
                batch.clear();
                let mut expect = f.seq + 1;
                batch.push(f);
                let mut after = None;
                // Nothing more published yet (the steady state): no need to ask.
                let more = self.hub.sent_live() > expect;
                while more && batch.len() < MAX_BATCH {
                    match self.live.try_recv() {
                        Ok(f) if f.seq < expect => {}
                        Ok(f) if f.seq == expect => {
                            expect += 1;
                            batch.push(f);
                        }
                        Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {
                            after = Some(Err(broadcast::error::RecvError::Lagged(0)));
                            break;
                        }
                        Err(broadcast::error::TryRecvError::Closed) => {
                            after = Some(Err(broadcast::error::RecvError::Closed));
                            break;
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                    }
                }
                let sent = self.send_frames(tx, &batch).await;
                self.batch = batch;
                match (sent, after) {
                    (false, _) => Step::Close(None),
                    (true, None) => Step::Continue,
                    // Behind, or the stream ended: handled as if received now.
                    (true, Some(next)) => Box::pin(self.on_live(tx, next)).await,
                }
            }
            // Behind (slow consumer or held while unpaid): serve from the replay buffer.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                if self.catch_up(tx).await {
                    Step::Continue
                } else {
                    Step::Close(None)
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                let _ = self
                    .send(
                        tx,
                        ServerMessage::End {
                            reason: "stream ended".into(),
                        }
                        .to_json(),
                    )
                    .await;
                Step::Close(Some(CloseCode::Normal))
            }
        }
    }

    async fn on_client(
        &mut self,
        tx: &mut Sink,
        msg: Option<Result<Message, axum::Error>>,
    ) -> Step {
        match msg {
            Some(Ok(Message::Text(t))) => match ClientMessage::parse(t.as_str()) {
                ClientMessage::Ping if !self.send(tx, ServerMessage::Pong.to_json()).await => {
                    Step::Close(None)
                }
                ClientMessage::Voucher { payment } => {
                    crate::in_band::spawn_voucher(
                        self.state.clone(),
                        self.conn,
                        self.guard.ip(),
                        self.quote.clone(),
                        self.channel.clone(),
                        payment,
                    );
                    Step::Continue
                }
                _ => Step::Continue,
            },
            // The client closes: complete the handshake (its close echoed), as RFC 6455 asks.
            Some(Ok(Message::Close(_))) => Step::Answer,
            None => Step::Close(None),
            Some(Ok(_)) => Step::Continue,
            Some(Err(e)) => {
                let too_big = e.to_string().to_ascii_lowercase().contains("too long")
                    || e.to_string().contains("size");
                Step::Close(too_big.then_some(CloseCode::TooBig))
            }
        }
    }

    async fn on_transmit(&mut self, tx: &mut Sink, t: ServerTransmit) -> Step {
        self.until = self.state.core().deliver_until(self.conn);
        match t {
            ServerTransmit::Message { msg, .. } => {
                let renewed = matches!(
                    msg,
                    ServerMessage::Renewed { .. } | ServerMessage::VoucherAccepted { .. }
                );
                let expiring = match &msg {
                    ServerMessage::Expiring { expires_at, .. } => Some(*expires_at),
                    _ => None,
                };
                if !self.send(tx, msg.to_json()).await {
                    return Step::Close(None);
                }
                if let Some(at) = expiring
                    && let Some(m) =
                        crate::in_band::voucher_needed(&self.state, &self.quote, &self.channel, at)
                            .await
                    && !self.send(tx, m.to_json()).await
                {
                    return Step::Close(None);
                }
                if renewed && !self.catch_up(tx).await {
                    return Step::Close(None);
                }
                Step::Continue
            }
            ServerTransmit::Skip { seq, .. } => {
                if self.next < seq {
                    let n = seq - self.next;
                    self.next = seq;
                    if !self.notice(tx, ErrorCode::EventsSkipped, n).await {
                        return Step::Close(None);
                    }
                }
                Step::Continue
            }
            ServerTransmit::Close { code, .. } => Step::Close(Some(code)),
        }
    }
}
