//! The in-memory facilitator: the real EIP-3009 verifier plus a nonce set,
//! whose answers can be delayed, left pending or (a malicious server) refused
//! after the money moved; and the server's bounded wait for it.

use std::sync::atomic::Ordering;

use x402_payer::verify_exact;
use x402_session::*;
use x402_types::*;

use super::Sim;
use super::server::Waiter;

impl Sim {
    /// A payment header arrived: decide, start settling, park the request.
    pub(super) fn server_pay(&mut self, header: &str, who: Waiter) {
        let payment = PaymentPayload::from_header(self.server.version, header)
            .map_err(|e| Refusal::new(ErrorCode::PaymentInvalid, e.to_string()))
            .and_then(|p| PaymentIn::from_payload(&p).map(|i| (p, i)));
        let payment = match payment {
            Ok((payload, payment)) => payment.with_request(FacilitatorRequest {
                payment_payload: payload,
                payment_requirements: self.requirements(),
            }),
            Err(r) => return self.answer_waiter(who, Err(r)),
        };
        let quote = self.server.quote.clone();
        match self
            .server
            .endpoint
            .handle_payment(self.now, &quote, payment.clone())
        {
            PaymentDecision::Settle(id) => {
                // The decision is final here (no store to commit to): the
                // first attempt leaves through `poll_settle`, as retries do.
                self.server.endpoint.start_settlement(self.now, id);
                self.drain_settle();
            }
            PaymentDecision::Pending { .. } => {}
            PaymentDecision::Credited(_) => return self.answer_waiter(who, Ok(())),
            PaymentDecision::Refused(r) => return self.answer_waiter(who, Err(r)),
        }
        self.server
            .waiting
            .push((self.now + self.server.wait, who, payment));
    }

    /// Runs every settlement attempt the endpoint asks for, with the
    /// facilitator request the payment came with.
    pub(super) fn drain_settle(&mut self) {
        while let Some(job) = self.server.endpoint.poll_settle() {
            let request = job.request.expect("every attempt carries its request");
            assert_eq!((job.session.as_str(), job.stream.as_str()), ("s1", "btc"));
            self.start_settle(job.id, request.payment_payload);
        }
    }

    pub(super) fn start_settle(&mut self, id: SettleId, payload: PaymentPayload) {
        self.msg_counter += 1;
        let at = self.now + self.server.settle_delay;
        self.server
            .settling
            .insert((at, self.msg_counter), (id, payload));
    }

    /// The in-memory facilitator answers: the real verifier, a nonce set,
    /// idempotent for the payload it settled.
    pub(super) fn facilitator_answer(&mut self, id: SettleId, payload: PaymentPayload) {
        let unix = self.unix.load(Ordering::SeqCst);
        let evm = payload.exact_evm().unwrap().clone();
        let outcome = if self.server.settle_and_refuse {
            if self.server.nonces.insert(evm.authorization.nonce) {
                self.server.settled = self
                    .server
                    .settled
                    .checked_add(evm.authorization.value)
                    .unwrap();
                // The money it kept without crediting: not "credited", so the
                // credited == settled check below does not apply to this server.
                self.server.stolen = self
                    .server
                    .stolen
                    .checked_add(evm.authorization.value)
                    .unwrap();
            }
            SettleOutcome::Refused {
                code: ErrorCode::PaymentInvalid,
                message: "refused (but settled)".into(),
            }
        } else if self.server.pending_first > 0 {
            self.server.pending_first -= 1;
            // Broadcast: the money moves now, the answer says "pending".
            if self.server.nonces.insert(evm.authorization.nonce) {
                self.server.settled = self
                    .server
                    .settled
                    .checked_add(evm.authorization.value)
                    .unwrap();
            }
            SettleOutcome::Pending
        } else if self.server.nonces.contains(&evm.authorization.nonce) {
            // Same payload again: the recorded success (as the official v2 facilitator does).
            SettleOutcome::Settled {
                header: None,
                payer: Some(evm.authorization.from),
                amount: Some(evm.authorization.value),
            }
        } else {
            match verify_exact(&payload, &self.requirements(), unix) {
                Ok(from) => {
                    self.server.nonces.insert(evm.authorization.nonce);
                    self.server.settled = self
                        .server
                        .settled
                        .checked_add(evm.authorization.value)
                        .unwrap();
                    SettleOutcome::Settled {
                        header: None,
                        payer: Some(from),
                        amount: Some(evm.authorization.value),
                    }
                }
                Err(f) => SettleOutcome::Refused {
                    code: ErrorCode::PaymentInvalid,
                    message: f.to_string(),
                },
            }
        };
        let head = self.server.seq;
        self.server
            .endpoint
            .handle_settled(self.now, id, outcome, head);
        self.drain_server();
        self.resolve_waiters();
    }

    /// Answers parked requests whose payment has an outcome (or whose wait is over).
    pub(super) fn resolve_waiters(&mut self) {
        let waiting = std::mem::take(&mut self.server.waiting);
        for (deadline, who, payment) in waiting {
            match self.server.endpoint.answer(&payment) {
                PaymentDecision::Credited(_) => self.answer_waiter(who, Ok(())),
                PaymentDecision::Refused(r) => self.answer_waiter(who, Err(r)),
                PaymentDecision::Pending { .. } | PaymentDecision::Settle(_) => {
                    if deadline <= self.now {
                        self.server.pending_answers += 1;
                        let r = Refusal::new(ErrorCode::PaymentPending, "settling");
                        self.answer_waiter(who, Err(r));
                    } else {
                        self.server.waiting.push((deadline, who, payment));
                    }
                }
            }
        }
    }
}
