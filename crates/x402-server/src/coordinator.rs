//! The coordinator: the only caller of the endpoint's shared-state methods
//! (import, export, plan, apply) and of the [`PaymentStore`]. One path for
//! every kind of store: load what the endpoint needs, let it decide, commit
//! by compare-and-set, and only then make the decision visible or act on it.
//!
//! Money steps run in tasks that own them: a payment's decision, its commit
//! and its settlement belong to a spawned task, so a client that hangs up at
//! any await point never leaves a record without an owner. A sweep takes
//! over settlements whose owner died (another instance, on a shared store).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use x402_session::{
    Connected, PaymentDecision, PaymentIn, PaymentStatus, Quote, Refusal, SettleId, SettleJob,
    SettleOutcome, StreamHead,
};
use x402_types::{ErrorCode, FacilitatorRequest, SettleResponse};

use crate::error::ApiError;
use crate::facilitator::{Facilitator, SettleVerdict, settle_attempt};
use crate::state::{AppState, now};
use crate::store::{Begin, Commit, Finish, PaymentStore, StoreError, Stored};

/// How often a request waiting on a settlement run elsewhere looks at the store.
const FOREIGN_POLL: Duration = Duration::from_millis(250);
/// How often the sweep looks for settlements whose owner died.
pub(crate) const ORPHAN_SWEEP: Duration = Duration::from_secs(2);
/// Load, decide, commit: at most this many rounds when other writers keep winning.
const MAX_ROUNDS: usize = 8;

impl AppState {
    fn store(&self) -> &dyn PaymentStore {
        self.store.as_ref()
    }

    /// A store failure as the client's 503, counted for `/metrics`.
    pub(crate) fn store_down(&self, e: StoreError) -> ApiError {
        self.metrics
            .store_failed("serve a payment or connection", &e);
        crate::payments::store_down()
    }

    /// Why `stream` is not sold now, if its source has failed.
    fn source_down(&self, stream: &str) -> Option<String> {
        self.streams.get(stream)?.hub.not_sold(stream)
    }

    /// Takes a session's state from the store (a renewal or a connection
    /// made on another instance). Failures are logged and counted: the next
    /// notice or timer tries again.
    pub(crate) async fn refresh(self: &Arc<Self>, session: &str) {
        match self.store().load_session(session).await {
            Ok(v) if v.exists => {
                self.with_core(|ep, now| ep.import_session(now, session, None, v.state));
            }
            Ok(_) => {}
            Err(e) => self.metrics.store_failed("refresh a session", &e),
        }
    }

    /// Before a socket upgrade: the session as the store has it.
    pub(crate) async fn refresh_for_connect(
        self: &Arc<Self>,
        quote: &Quote,
    ) -> Result<(), ApiError> {
        let v = self
            .store()
            .load_session(&quote.id)
            .await
            .map_err(|e| self.store_down(e))?;
        if v.exists {
            self.with_core(|ep, now| ep.import_session(now, &quote.id, Some(quote), v.state));
        }
        Ok(())
    }

    /// Connects a socket through the store: its connection number makes it
    /// the session's holder (a socket on another instance is superseded).
    pub(crate) async fn connect(
        self: &Arc<Self>,
        quote: &Quote,
        conn: x402_session::ConnId,
        from: Option<u64>,
        head: StreamHead,
    ) -> Result<Connected, Refusal> {
        let unavailable = |e: StoreError| {
            self.metrics.store_failed("connect a socket", &e);
            Refusal::new(ErrorCode::StoreUnavailable, e.to_string())
        };
        // Paid time first: a refused upgrade must not supersede a socket elsewhere.
        self.with_core(|ep, now| ep.check_connect(now, quote))?;
        let n = self
            .store()
            .connect_session(&quote.id)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Refusal::new(ErrorCode::PaymentRequired, "a payment is required"))?;
        let r = self.with_core(|ep, now| {
            if let Some(mut state) = ep.export_session(&quote.id) {
                state.connections = n.saturating_sub(1);
                ep.import_session(now, &quote.id, Some(quote), state);
            }
            ep.connect(now, quote, conn, from, head)
        });
        if let Err(e) = self.store().notify(&quote.id).await {
            self.metrics
                .store_failed("announce a connection to other instances", &e);
        }
        r
    }

    /// Decides a payment in a task of its own (the caller may go away at any
    /// await; the decision, its commit and its settlement do not).
    pub(crate) async fn admit(
        self: &Arc<Self>,
        quote: &Quote,
        payment: &PaymentIn,
    ) -> Result<PaymentDecision, ApiError> {
        let (state, quote, payment) = (self.clone(), quote.clone(), payment.clone());
        let task = tokio::spawn(async move { state.decide(&quote, &payment).await });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(self.store_down(StoreError::from_text(format!(
                "the payment task failed: {e}"
            )))),
        }
    }

    /// Load what the endpoint needs, let it decide, and commit a new claim
    /// before anything is asked of the facilitator (a conflict means
    /// another writer changed something: load and decide again).
    async fn decide(
        self: &Arc<Self>,
        quote: &Quote,
        p: &PaymentIn,
    ) -> Result<PaymentDecision, ApiError> {
        let store = self.store();
        for _ in 0..MAX_ROUNDS {
            let loaded = store
                .load(&quote.id, Some(p))
                .await
                .map_err(|e| self.store_down(e))?;
            if loaded.orphan_claim {
                return Ok(PaymentDecision::Refused(Refusal::new(
                    ErrorCode::PaymentUsed,
                    "this authorization's nonce was already used",
                )));
            }
            if let Some(r) = loaded.records.iter().find(|r| {
                r.key == p.key
                    && r.record.status.is_settling()
                    && !r.owner_alive
                    && r.owner != store.instance()
            }) {
                // Its settling instance died: take the settlement over.
                self.adopt(r, Some(quote)).await?;
                continue;
            }
            let session = loaded.session;
            let own = loaded.records.iter().any(|r| r.key == p.key);
            let holders: Vec<_> = loaded.records.iter().map(|r| r.key.clone()).collect();
            let (decision, commit) = self.with_core(|ep, now| {
                if !own {
                    ep.drop_foreign(&p.key);
                }
                ep.drop_stale_holders(p, &holders);
                if session.exists {
                    ep.import_session(now, &quote.id, Some(quote), session.state.clone());
                }
                for r in &loaded.records {
                    ep.import_record(now, &r.key, r.record.clone());
                }
                let d = ep.handle_payment(now, quote, p.clone());
                let linger = ep.config().linger_secs;
                let unix = ep.unix_now(now);
                let commit = match &d {
                    PaymentDecision::Settle(_) => ep
                        .export_session(&quote.id)
                        .zip(ep.export_record(&p.key))
                        .map(|(st, rec)| {
                            let until = st.retain_until(unix, linger).max(quote.expires + linger);
                            (st, rec, until)
                        }),
                    _ => None,
                };
                (d, commit)
            });
            let PaymentDecision::Settle(id) = decision else {
                return Ok(decision);
            };
            // A stream whose source failed is not sold: a *new* payment is
            // refused before anything is claimed or settled (nothing moves).
            // One already known (credited, settling) was answered above.
            if let Some(reason) = self.source_down(&quote.stream_id) {
                self.with_core(|ep, now| ep.abandon(now, id));
                return Ok(PaymentDecision::Refused(Refusal::new(
                    ErrorCode::SourceUnavailable,
                    reason,
                )));
            }
            let Some((state, rec, until)) = commit else {
                self.with_core(|ep, now| ep.abandon(now, id));
                continue;
            };
            let begin = Begin {
                session: &quote.id,
                version: session.version,
                state: &state,
                session_until: until,
                key: &p.key,
                record: &rec,
                request: p.request.as_ref(),
            };
            match store.begin(begin).await {
                Ok(Commit::Done) => {
                    self.with_core(|ep, now| ep.start_settlement(now, id));
                    return Ok(decision);
                }
                Ok(_) => self.with_core(|ep, now| ep.abandon(now, id)),
                Err(e) => {
                    // Never settle a payment that may not be recorded. If
                    // the commit landed though its answer was lost, the
                    // record is this instance's without a task here: the
                    // orphan sweep restarts it.
                    self.with_core(|ep, now| ep.abandon(now, id));
                    return Err(self.store_down(e));
                }
            }
        }
        Err(self.store_down(StoreError::from_text("too many concurrent changes")))
    }

    /// Takes over a settlement whose owner died: its payload is settled
    /// again here, as a retry (the first attempt's fate is unknown).
    async fn adopt(self: &Arc<Self>, r: &Stored, quote: Option<&Quote>) -> Result<(), ApiError> {
        let store = self.store();
        // A record of this instance's own that it does not run (its commit's
        // answer was lost, or its task died) is restarted without a takeover.
        let own = r.owner == store.instance();
        if !own
            && !store
                .adopt(&r.key, &r.owner)
                .await
                .map_err(|e| self.store_down(e))?
        {
            return Ok(());
        }
        let request = FacilitatorRequest::from_json(r.payload.as_bytes()).ok();
        if request.is_none() {
            tracing::error!(payer = %r.record.payer, nonce = %r.record.nonce,
                "a dead instance's settlement has no readable payload; it ends unresolved at validBefore; reconcile it");
        }
        let session = store
            .load_session(&r.record.session)
            .await
            .map_err(|e| self.store_down(e))?;
        let started = self.with_core(|ep, now| {
            if own && ep.runs(&r.key) {
                return false;
            }
            if session.exists {
                ep.import_session(now, &r.record.session, quote, session.state);
            }
            ep.adopt(now, &r.key, r.record.clone(), request);
            true
        });
        if !started {
            return Ok(());
        }
        if own {
            tracing::warn!(payer = %r.record.payer, nonce = %r.record.nonce,
                "restarting a settlement of this instance that had no task (its claim's answer was lost)");
        } else {
            tracing::warn!(payer = %r.record.payer, nonce = %r.record.nonce, dead = %r.owner,
                "taking over the settlement of an instance that died");
        }
        Ok(())
    }

    /// One pass of the orphan sweep: every settling record whose owner is
    /// gone is taken over, so it resolves even if its payer never retries.
    pub(crate) async fn adopt_orphans(self: &Arc<Self>) {
        let orphans = match self.store().orphans().await {
            Ok(o) => o,
            Err(e) => {
                self.metrics.store_failed("orphan sweep", &e);
                return;
            }
        };
        // A record of this instance's own that it does not run is restarted
        // only when two passes in a row saw it so: a settlement finishing
        // between one pass's listing and its look at the endpoint is not an orphan.
        let adopt = {
            let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
            let before = std::mem::take(&mut *suspects);
            let mut adopt = Vec::new();
            for r in orphans {
                if r.owner == self.store().instance() {
                    if self.core().runs(&r.key) {
                        continue;
                    }
                    if !before.contains(&r.key) {
                        suspects.insert(r.key.clone());
                        continue;
                    }
                }
                adopt.push(r);
            }
            adopt
        };
        for r in adopt {
            if let Err(e) = self.adopt(&r, None).await {
                tracing::warn!(error = %e.message, "orphan sweep: takeover failed");
            }
        }
    }

    /// Loads a payment's record again (it may settle on another instance).
    async fn refresh_payment(self: &Arc<Self>, quote: &Quote, p: &PaymentIn) {
        let Ok(loaded) = self.store().load(&quote.id, Some(p)).await else {
            return;
        };
        self.with_core(|ep, now| {
            if loaded.session.exists {
                ep.import_session(now, &quote.id, Some(quote), loaded.session.state);
            }
            for r in loaded.records.into_iter().filter(|r| r.key == p.key) {
                ep.import_record(now, &r.key, r.record);
            }
        });
    }

    /// Waits for a payment's answer: woken by its own settlement, looking at
    /// the store now and then (it may settle elsewhere), until `deadline`.
    pub(crate) async fn wait_answer(
        self: &Arc<Self>,
        quote: &Quote,
        p: &PaymentIn,
        id: SettleId,
        deadline: tokio::time::Instant,
    ) -> PaymentDecision {
        // Forgets the bell once nobody waits, also when the request is
        // dropped (declared first: dropped after the bell).
        let _release = BellGuard { state: self, id };
        let bell = self.bell(id);
        loop {
            let notified = bell.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let answer = self.core().answer(p);
            match answer {
                PaymentDecision::Pending { .. } if tokio::time::Instant::now() < deadline => {}
                a => return a,
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = tokio::time::sleep(FOREIGN_POLL) => self.refresh_payment(quote, p).await,
            }
        }
    }

    fn bell(&self, id: SettleId) -> Arc<Notify> {
        let mut bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        bells.entry(id).or_default().clone()
    }

    /// Forgets a settlement's bell once nobody waits on it.
    fn release_bell(&self, id: SettleId) {
        let mut bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        if bells.get(&id).is_some_and(|b| Arc::strong_count(b) == 1) {
            bells.remove(&id);
        }
    }

    /// Wakes the requests waiting on settlement `id`, and only those.
    fn ring(&self, id: SettleId) {
        let bells = self.bells.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = bells.get(&id) {
            b.notify_waiters();
        }
    }

    /// Commits a settlement's outcome to the store before it is credited
    /// here; a store that cannot be reached is tried again until it can (the
    /// outcome is never dropped; the payer's retries hear `payment_pending`).
    async fn settled(self: &Arc<Self>, job: &SettleJob, outcome: SettleOutcome, head: u64) {
        let store = self.store();
        let (id, session) = (job.id, job.session.as_str());
        let mut backoff = Duration::from_millis(100);
        loop {
            let loaded = match store.load_session(session).await {
                Ok(v) => v,
                Err(e) => {
                    self.wait_for_store(e, &mut backoff).await;
                    continue;
                }
            };
            let planned = self.with_core(|ep, now| {
                let state = if loaded.exists {
                    Some(loaded.state.clone())
                } else {
                    ep.export_session(session)
                };
                let plan = ep.plan_settled(now, id, outcome.clone(), head, state)?;
                let before = ep.export_record(&plan.key)?;
                let unix = ep.unix_now(now);
                let until = plan
                    .session
                    .as_ref()
                    .map_or(unix, |s| s.retain_until(unix, ep.config().linger_secs));
                Some((plan, before, until))
            });
            let Some((plan, before, until)) = planned else {
                return;
            };
            if !plan.is_final() {
                self.with_core(|ep, now| ep.apply_settled(now, id, plan));
                return;
            }
            let credited = plan.session.is_some()
                && matches!(
                    plan.record.as_ref().map(|r| &r.status),
                    Some(PaymentStatus::Credited(_))
                );
            let finish = Finish {
                session,
                version: loaded.version,
                state: plan.session.as_ref(),
                session_until: until,
                key: &plan.key,
                before: &before,
                record: plan.record.as_ref(),
            };
            match store.finish(finish).await {
                Ok(Commit::Done) => {
                    self.with_core(|ep, now| ep.apply_settled(now, id, plan));
                    if credited && let Err(e) = store.notify(session).await {
                        self.metrics
                            .store_failed("announce a renewal to other instances", &e);
                    }
                    return;
                }
                Ok(Commit::Conflict) => {}
                Ok(Commit::Lost) => {
                    // Another instance took it over, or an earlier commit of
                    // ours landed though its answer was lost: the store has
                    // the outcome; take it from there.
                    self.with_core(|ep, now| ep.disown(now, id));
                    self.refresh(session).await;
                    let moved = credited || plan.unresolved.is_some();
                    if moved {
                        self.check_lost(session, &plan.key, &before).await;
                    }
                    return;
                }
                Err(e) => self.wait_for_store(e, &mut backoff).await,
            }
        }
    }

    /// A settlement (or an outcome that may hide one) could not be written:
    /// unless the store shows the payment credited, money may have moved
    /// without credit. That is never silent: logged for reconciliation and
    /// counted as unresolved.
    async fn check_lost(
        self: &Arc<Self>,
        session: &str,
        key: &x402_session::PaymentKey,
        before: &x402_session::PaymentRecord,
    ) {
        let probe = PaymentIn {
            scheme: before.scheme.clone(),
            key: key.clone(),
            payer: before.payer,
            nonce: before.nonce,
            amount: before.amount,
            valid_before: before.valid_before,
            payment_id: before.payment_id.clone(),
            account: before.account.clone(),
            request: None,
        };
        let credited = match self.store().load(session, Some(&probe)).await {
            Ok(l) => l
                .records
                .iter()
                .any(|r| r.key == *key && matches!(r.record.status, PaymentStatus::Credited(_))),
            Err(_) => false,
        };
        if credited {
            tracing::info!("this settlement's outcome was already committed");
            return;
        }
        self.metrics.unresolved.inc();
        tracing::error!(payer = %before.payer, nonce = %before.nonce,
            "a settlement's outcome could not be committed (its record changed hands or \
             expired) and the store does not show it credited: the money may have moved; \
             reconcile this payment");
    }

    /// A settlement outcome waits for an unreachable store: count, log, back off.
    async fn wait_for_store(&self, e: StoreError, backoff: &mut Duration) {
        self.metrics
            .store_failed("record a settlement outcome (retrying)", &e);
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    }
}

struct BellGuard<'a> {
    state: &'a AppState,
    id: SettleId,
}

impl Drop for BellGuard<'_> {
    fn drop(&mut self) {
        self.state.release_bell(self.id);
    }
}

/// Runs one settlement attempt and reports its outcome to the endpoint.
pub(crate) async fn run_settlement(state: Arc<AppState>, job: SettleJob) {
    let started = tokio::time::Instant::now();
    let outcome = match &job.request {
        Some(_) if job.scheme == x402_types::batch::BATCH_SETTLEMENT => {
            crate::channels::settle_channel(&state, &job).await
        }
        Some(req) => settle_outcome(state.facilitator.as_ref(), req, job.attempt).await,
        None => SettleOutcome::Unknown {
            reason: "the settlement's payload is missing".into(),
        },
    };
    let kind = match &outcome {
        SettleOutcome::Settled { .. } => "settled",
        SettleOutcome::Refused { .. } | SettleOutcome::Forged { .. } => "refused",
        SettleOutcome::Pending => "pending",
        SettleOutcome::Unknown { .. } => "unknown",
        SettleOutcome::NotAttempted { .. } => "not_attempted",
    };
    if matches!(kind, "unknown" | "not_attempted") {
        state.metrics.facilitator_errors.inc();
    }
    state
        .metrics
        .settlement_seconds
        .get_or_create(&crate::metrics::OutcomeLabel {
            outcome: kind.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    let head = state
        .streams
        .get(&job.stream)
        .map_or(0, |e| e.hub.next_seq());
    state.settled(&job, outcome, head).await;
    state.ring(job.id);
}

/// One settlement attempt through the one classifier of facilitator
/// answers ([`settle_attempt`]), read as the endpoint's outcome. A replay
/// answer naming the earlier transaction ([`SettleVerdict::AlreadySettled`])
/// is this payment's own settlement only on a retry: this server holds the
/// authorization's claim, so an earlier attempt of its own moved the money.
/// On a first attempt it means someone else used the authorization.
pub(crate) async fn settle_outcome(
    f: &dyn Facilitator,
    req: &FacilitatorRequest,
    attempt: u32,
) -> SettleOutcome {
    // A retry (or a takeover) does not verify first: check offline what a
    // facilitator would, the signature. A payload whose signature does not
    // verify can never have moved money; it is refused at any attempt, so
    // a junk copy neither squats its authorization nor is credited with
    // the genuine payment's settlement.
    if attempt > 0
        && let Err(e) =
            x402_payer::verify_signature(&req.payment_payload, &req.payment_requirements)
    {
        return SettleOutcome::Forged {
            message: format!("{}: {e}", e.reason()),
        };
    }
    match settle_attempt(f, req, attempt).await {
        SettleVerdict::NotAttempted { reason } => SettleOutcome::NotAttempted { reason },
        SettleVerdict::Refused { reason, message } => SettleOutcome::Refused {
            code: reason.error_code(),
            message,
        },
        SettleVerdict::Settled {
            header,
            payer,
            amount,
            ..
        } => SettleOutcome::Settled {
            header: Some(header),
            payer,
            amount,
        },
        // Credited only when the facilitator names the payer and amount
        // (the endpoint checks they are this payment's).
        SettleVerdict::AlreadySettled {
            transaction,
            payer: payer @ Some(_),
            amount: amount @ Some(_),
        } if attempt > 0 => {
            let answer = SettleResponse {
                extra: None,
                success: true,
                error_reason: None,
                payer: payer.map(|p| p.to_string()),
                transaction,
                network: req
                    .payment_requirements
                    .requirement()
                    .network
                    .for_x402_version(req.x402_version()),
                amount,
            };
            SettleOutcome::Settled {
                header: Some(x402_types::x402::encode_header(&answer)),
                payer,
                amount,
            }
        }
        SettleVerdict::AlreadySettled { transaction, .. } if attempt > 0 => {
            SettleOutcome::Unknown {
                reason: format!(
                    "already settled by {transaction}, but the facilitator named no payer or amount"
                ),
            }
        }
        SettleVerdict::AlreadySettled { .. } => SettleOutcome::Refused {
            code: ErrorCode::PaymentUsed,
            message: "settlement refused: this authorization was already settled".into(),
        },
        SettleVerdict::Pending => SettleOutcome::Pending,
        SettleVerdict::Unknown { reason } => SettleOutcome::Unknown { reason },
    }
}

/// Runs the endpoint's timers (expiry notices, 4402 closes, settlement
/// retries, sweeping) for as long as the server lives.
pub(crate) async fn drive_timers(state: Arc<AppState>) {
    loop {
        let deadline = state.core().poll_timeout();
        let notified = state.timers.notified();
        tokio::pin!(notified);
        match deadline {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(d.into()) => {
                        // Time paid on another instance must be seen before `expired`.
                        let due = state.core().due_sessions(now());
                        for session in due {
                            state.refresh(&session).await;
                        }
                        state.with_core(|ep, now| ep.handle_timeout(now));
                    }
                    _ = &mut notified => {}
                }
            }
            None => notified.await,
        }
    }
}

/// Takes over the settlements of dead instances, for as long as the server lives.
pub(crate) async fn sweep_orphans(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(ORPHAN_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.adopt_orphans().await;
    }
}
