//! The client side, driven as a real driver drives it: the spending policy,
//! a real EIP-3009 signature, reservations committed or held.

use std::sync::atomic::Ordering;
use std::time::Duration;

use x402_session::*;
use x402_types::ClientMessage;

use super::Sim;
use super::link::ToServer;

impl Sim {
    pub fn drain_client(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.client.poll_transmit() {
                progressed = true;
                self.on_client_transmit(t);
            }
            while let Some(e) = self.client.poll_event() {
                progressed = true;
                self.on_client_event(e);
            }
            if !progressed {
                break;
            }
        }
        if let Some(t) = self.client.poll_timeout() {
            assert!(t >= self.last_timeout_floor, "poll_timeout went backwards");
        }
    }

    pub(super) fn on_client_transmit(&mut self, t: Transmit) {
        match t {
            Transmit::Http {
                id,
                method,
                url,
                headers,
            } => {
                let path = url
                    .split_once("://")
                    .map(|(_, r)| r.split_once('/').map(|(_, p)| p).unwrap_or(""))
                    .unwrap_or("");
                let path = path.split('?').next().unwrap_or("");
                self.transcript.push(format!(
                    "{} T http {:?} /{path}{}",
                    self.elapsed(),
                    method,
                    if headers.is_empty() { "" } else { " +payment" }
                ));
                self.open_http.insert(id);
                self.http_deadline
                    .insert(self.now + Duration::from_secs(5), id);
                self.send_to_server(
                    ToServer::Http {
                        id,
                        method,
                        headers,
                    },
                    None,
                );
            }
            Transmit::WsConnect { conn, url, headers } => {
                let from = url
                    .split("from=")
                    .nth(1)
                    .map(|f| format!(" from={f}"))
                    .unwrap_or_default();
                self.transcript.push(format!(
                    "{} T ws-connect{}{}",
                    self.elapsed(),
                    from,
                    if headers.is_empty() { "" } else { " +payment" }
                ));
                self.send_to_server(ToServer::Connect { conn, url, headers }, Some(conn));
            }
            Transmit::WsSend { conn, text } => {
                assert_eq!(
                    ClientMessage::parse(&text),
                    ClientMessage::Ping,
                    "the client sends only pings"
                );
                self.pings.push((self.now, conn));
                self.send_keep_alive(true, conn);
            }
            Transmit::WsClose { conn, code } => {
                self.transcript
                    .push(format!("{} T ws-close {code}", self.elapsed()));
                self.send_to_server(ToServer::Close { conn }, Some(conn));
            }
        }
    }

    pub(super) fn on_client_event(&mut self, e: ClientEvent) {
        let line = match &e {
            ClientEvent::Data(ev) => {
                self.received.push(ev.seq);
                None
            }
            ClientEvent::PaymentNeeded { slice, offer } => {
                let slice = *slice;
                // Server truth: how much paid time remains when we sign.
                let ahead = Duration::from_secs(
                    self.server
                        .endpoint
                        .expires_at("s1")
                        .saturating_sub(self.unix.load(Ordering::SeqCst)),
                );
                self.max_paid_ahead_at_sign = self.max_paid_ahead_at_sign.max(ahead);
                let declined = self.decline_after.is_some_and(|n| slice > n);
                let req = offer.requirement();
                let auth = if declined {
                    Err("declined by test".to_string())
                } else {
                    self.policy
                        .authorize(&req, Some(&self.session_budget))
                        .map_err(|e| e.to_string())
                };
                match auth {
                    Ok(res) => {
                        *self.signatures.entry(slice).or_default() += 1;
                        let allowed =
                            1 + self.abandoned_or_refused.get(&slice).copied().unwrap_or(0);
                        assert!(
                            self.signatures[&slice] <= allowed,
                            "two signatures for slice {slice}"
                        );
                        let payload = self.payer.sign(offer).unwrap();
                        let vb = payload
                            .exact_evm()
                            .unwrap()
                            .authorization
                            .valid_before
                            .to_u64()
                            .unwrap();
                        self.reservations.insert(slice, (res, vb));
                        self.push_event_line(format!("PaymentNeeded slice={slice} -> signed"));
                        self.client
                            .handle_payment(self.now, slice, payload)
                            .unwrap();
                    }
                    Err(msg) => {
                        self.push_event_line(format!("PaymentNeeded slice={slice} -> declined"));
                        self.client
                            .handle_payment_declined(self.now, slice, msg, true)
                            .unwrap();
                    }
                }
                None
            }
            ClientEvent::PaymentAccepted { slice, .. } => {
                if let Some((r, _)) = self.reservations.remove(slice) {
                    r.commit();
                }
                Some(format!("PaymentAccepted slice={slice}"))
            }
            ClientEvent::PaymentRefused {
                slice,
                status,
                code,
                maybe_spent,
            } => {
                *self.abandoned_or_refused.entry(*slice).or_default() += 1;
                if let Some((r, vb)) = self.reservations.remove(slice) {
                    if *maybe_spent {
                        r.commit();
                    } else {
                        self.held.push((vb, r));
                    }
                }
                Some(format!("PaymentRefused slice={slice} {status} {code}"))
            }
            ClientEvent::Hello(h) => Some(format!(
                "Hello slice={}s resumed={} nextSeq={}",
                h.slice_seconds, h.resumed, h.next_seq
            )),
            ClientEvent::Resumed { missed } => Some(format!("Resumed missed={missed}")),
            ClientEvent::Renewed { slices, .. } => Some(format!("Renewed slices={slices}")),
            ClientEvent::Expiring { .. } => Some("Expiring".into()),
            ClientEvent::Expired => Some("Expired".into()),
            ClientEvent::EventsLost { count } => {
                self.reported_lost += count;
                Some(format!("EventsLost {count}"))
            }
            ClientEvent::EventsSkipped { count } => {
                self.reported_lost += count;
                Some(format!("EventsSkipped {count}"))
            }
            ClientEvent::PaymentPending { slice, .. } => {
                Some(format!("PaymentPending slice={slice}"))
            }
            ClientEvent::Duplicate { seq } => Some(format!("Duplicate {seq}")),
            ClientEvent::Reconnecting { attempt, .. } => {
                Some(format!("Reconnecting attempt={attempt}"))
            }
            ClientEvent::Ended(r) => {
                self.ended = Some(r.clone());
                Some(format!("Ended {r:?}"))
            }
            _ => None,
        };
        if let Some(l) = line {
            self.push_event_line(l);
        }
        self.events.push(e);
    }

    pub(super) fn push_event_line(&mut self, l: String) {
        self.transcript.push(format!("{} E {l}", self.elapsed()));
    }
}
