#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod channel_close;
mod channels;
mod cluster;
pub mod config;
mod coordinator;
mod edge;
mod error;
#[cfg(feature = "evm")]
pub mod evm;
pub mod facilitator;
mod gate;
mod http;
mod hub;
mod in_band;
mod meter;
pub mod metrics;
mod payments;
mod socket;
mod state;
pub mod store;
pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The shared, reference-counted text of a frame ([`Frame::text`], [`Hub::push`]).
pub use axum::extract::ws::Utf8Bytes;
pub use channels::ChannelTerms;
pub use config::{
    ChannelManagerConfig, ChannelOffer, Config, DEV_PAY_TO, EXAMPLE as CONFIG_EXAMPLE,
    FacilitatorApiConfig, FacilitatorConfig, HttpConfig, Limits, SourceConfig, StoreConfig,
    StreamConfig,
};
pub use error::{ApiError, ConfigError, Error, Result};
pub use facilitator::{
    EmbeddedFacilitator, Facilitator, FacilitatorApi, FacilitatorError, HttpFacilitator,
    LedgerEntry, ServeError, facilitator_router, serve_facilitator, serve_facilitator_guarded,
};
pub use http::{metrics_router, router};
pub use hub::{Frame, Hub, Publisher, SourceState, Synthetic};
pub use state::{AppState, MIN_SECRET_LEN, RemoteAddr, StreamEntry, token_key};
pub use store::{MemoryStore, PaymentStore, RedisStore, StoreError};

/// Builds a [`Server`].
pub struct ServerBuilder {
    cfg: Config,
    facilitator: Option<Arc<dyn Facilitator>>,
    store: Option<Arc<dyn PaymentStore>>,
    authorizer: Option<Arc<x402_payer::LocalSigner>>,
}

impl ServerBuilder {
    /// From a configuration.
    pub fn new(cfg: Config) -> Self {
        ServerBuilder {
            cfg,
            facilitator: None,
            store: None,
            authorizer: None,
        }
    }

    /// Keeps sessions and payment records in this store instead of the
    /// configured one (tests of several instances share one [`MemoryStore`]).
    pub fn store(mut self, store: Arc<dyn PaymentStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Uses this facilitator instead of the configured one.
    pub fn facilitator(mut self, f: Arc<dyn Facilitator>) -> Self {
        self.facilitator = Some(f);
        self
    }

    /// Signs channel claims and refunds with this key (the offers name its address
    /// as `receiverAuthorizer`) instead of leaving that to the facilitator; as
    /// `[channel_manager] authorizer_key_file` does.
    pub fn channel_authorizer(mut self, key: x402_payer::LocalSigner) -> Self {
        self.authorizer = Some(Arc::new(key));
        self
    }

    /// Binds the listener and starts the event sources.
    pub async fn bind(self) -> Result<Server, Error> {
        self.cfg.validate()?;
        let listener = TcpListener::bind(self.cfg.listen).await?;
        let addr = listener.local_addr()?;
        let metrics_listener = match self.cfg.http.metrics_listen {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let http_base = self
            .cfg
            .public_http
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"))
            .trim_end_matches('/')
            .to_string();
        let ws_base = self
            .cfg
            .public_ws
            .clone()
            .unwrap_or_else(|| format!("ws://{addr}"))
            .trim_end_matches('/')
            .to_string();
        let facilitator: Arc<dyn Facilitator> = match (self.facilitator, &self.cfg.facilitator) {
            (Some(f), _) => f,
            (None, None) => return Err(ConfigError::Invalid(config::NO_FACILITATOR.into()).into()),
            (None, Some(FacilitatorConfig::Embedded {})) => {
                tracing::warn!(
                    "facilitator: embedded. Payments are verified but NOTHING IS SETTLED: no money moves"
                );
                Arc::new(EmbeddedFacilitator::default())
            }
            #[cfg(feature = "evm")]
            (None, Some(cfg @ FacilitatorConfig::Evm { .. })) => evm::facilitator(cfg).await?,
            #[cfg(not(feature = "evm"))]
            (None, Some(FacilitatorConfig::Evm { .. })) => {
                return Err(ConfigError::Invalid(
                    "kind = \"evm\" needs x402-server's `evm` feature (the atomicstream binary \
                     has it), or build x402_chain::EvmFacilitator and pass it with \
                     ServerBuilder::facilitator"
                        .into(),
                )
                .into());
            }
            (None, Some(FacilitatorConfig::Http { url, key })) => {
                let mut f = HttpFacilitator::new(
                    url,
                    Duration::from_secs(self.cfg.limits.facilitator_timeout_secs),
                )?;
                if let Some(k) = key {
                    f = f.with_bearer(k.clone());
                }
                Arc::new(f)
            }
        };
        let redis = match &self.cfg.store {
            StoreConfig::Memory => None,
            StoreConfig::Redis {
                url,
                prefix,
                timeout_ms,
            } => Some(
                RedisStore::connect(url, prefix, Duration::from_millis((*timeout_ms).max(10)))
                    .await?,
            ),
        };
        let store: Arc<dyn PaymentStore> = match (self.store, &redis) {
            (Some(s), _) => s,
            (None, Some(r)) => Arc::new(r.clone()),
            (None, None) => Arc::new(MemoryStore::new("local")),
        };
        let metrics = Arc::new(metrics::Metrics::default());
        let authorizer = match (
            self.authorizer,
            &self.cfg.channel_manager.authorizer_key_file,
        ) {
            (Some(k), _) => Some(k),
            (None, Some(file)) => {
                let hex = std::fs::read_to_string(file).map_err(|e| {
                    ConfigError::Invalid(format!("authorizer key file {}: {e}", file.display()))
                })?;
                let key = x402_payer::LocalSigner::from_hex(hex.trim()).map_err(|e| {
                    ConfigError::Invalid(format!("authorizer key file {}: {e}", file.display()))
                })?;
                Some(Arc::new(key))
            }
            (None, None) => None,
        };
        let mut streams = HashMap::new();
        let mut tasks = Vec::new();
        let cap = self.cfg.limits.replay_buffer;
        for sc in &self.cfg.streams {
            let terms = sc.resolve()?;
            metrics.register_stream(&sc.id, &terms.asset.to_string(), &terms.network.caip2());
            let hub = Hub::new(cap, self.cfg.limits.send_queue);
            match &redis {
                // One instance: the source publishes into the hub.
                None => {
                    let (weak, source) = (Arc::downgrade(&hub), sc.source.clone());
                    tasks.push(tokio::spawn(async move {
                        if let hub::SourceEnd::Failed(reason) =
                            run_source(hub::HubSink(weak.clone()), source).await
                            && let Some(hub) = weak.upgrade()
                        {
                            hub.source_down(reason);
                        }
                    }));
                }
                // Several: the instance holding the lease publishes into the
                // store, every instance reads from it.
                Some(st) => {
                    tasks.push(tokio::spawn(cluster::lead(
                        st.clone(),
                        Arc::downgrade(&hub),
                        sc.id.clone(),
                        sc.source.clone(),
                        cap,
                        metrics.clone(),
                    )));
                    tasks.push(tokio::spawn(cluster::read_events(
                        st.clone(),
                        hub.clone(),
                        sc.id.clone(),
                        cap,
                        metrics.clone(),
                    )));
                }
            }
            streams.insert(
                sc.id.clone(),
                StreamEntry {
                    channel: channels::resolve(
                        facilitator.as_ref(),
                        sc,
                        &terms,
                        authorizer.as_ref(),
                    )
                    .await?,
                    cfg: sc.clone(),
                    terms,
                    hub,
                },
            );
        }
        let tokens = state::token_key(&self.cfg)?;
        let api = self.cfg.facilitator_api.clone();
        let state = Arc::new(AppState::new(
            self.cfg,
            http_base,
            ws_base,
            streams,
            tokens,
            facilitator.clone(),
            store,
            metrics.clone(),
        ));
        if let Some(st) = redis {
            tasks.push(tokio::spawn(cluster::heartbeat(st.clone(), metrics)));
            tasks.push(tokio::spawn(cluster::notices(state.clone(), st)));
        }
        tasks.push(tokio::spawn(coordinator::sweep_orphans(state.clone())));
        if let Some(threshold) = state
            .streams
            .values()
            .filter(|e| e.channel.is_some())
            .map(|e| e.terms.per_slice.atomic().to_u128().unwrap_or(u128::MAX))
            .min()
        {
            let m = &state.cfg.channel_manager;
            tasks.push(tokio::spawn(channel_close::manage(
                state.clone(),
                Duration::from_secs(m.interval_secs.max(1)),
                threshold.saturating_mul(u128::from(m.claim_threshold_slices.max(1))),
                m.idle_refund_secs,
            )));
        }
        let mut router = router(state.clone());
        // The facilitator API only when configured, and then behind a bearer key;
        // it answers to the listen address and the public name only.
        if let Some(api) = api {
            let mut guard = FacilitatorApi::new()
                .bearer_key(api.key.clone())
                .requests_per_second(api.requests_per_second);
            if let Some(host) = public_host(&state.http_base) {
                guard = guard.allow_host(host);
            }
            let routes = guard.router(facilitator, addr)?;
            router = router.nest("/facilitator", routes);
        }
        if let Some(l) = metrics_listener {
            let app = http::metrics_router(state.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            }));
        }
        Ok(Server {
            state,
            listener,
            addr,
            router,
            tasks,
        })
    }
}

/// The reference stream server.
///
/// ```no_run
/// use x402_server::{Config, ServerBuilder, SourceConfig, StreamConfig, DEV_PAY_TO};
///
/// # async fn run() -> Result<(), x402_server::Error> {
/// let mut cfg = Config::demo("127.0.0.1:4021".parse().unwrap());
/// cfg.streams = vec![StreamConfig {
///     id: "prices".into(),
///     title: "My prices".into(),
///     description: "Prices published by my program".into(),
///     price_per_minute: "0.01".into(),
///     slice_seconds: 300,
///     network: "base-sepolia".into(),
///     asset: None,
///     pay_to: DEV_PAY_TO.into(),
///     max_timeout_seconds: 60,
///     source: SourceConfig::Api,
///     channel: None,
/// }];
/// let server = ServerBuilder::new(cfg).bind().await?;
/// let publisher = server.publisher("prices").unwrap();
/// tokio::spawn(async move {
///     loop {
///         publisher.publish(&serde_json::json!({"price": 101.5}));
///         tokio::time::sleep(std::time::Duration::from_secs(1)).await;
///     }
/// });
/// server.run().await?;
/// # Ok(()) }
/// ```
pub struct Server {
    state: Arc<AppState>,
    listener: TcpListener,
    addr: SocketAddr,
    router: axum::Router,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (streams, store, facilitator, counters).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Public HTTP base URL.
    pub fn http_base(&self) -> &str {
        &self.state.http_base
    }

    /// Public WebSocket base URL.
    pub fn ws_base(&self) -> &str {
        &self.state.ws_base
    }

    /// A publisher for a stream. `None` for an unknown stream, and when the
    /// state is in Redis: there every instance delivers the shared log, fed
    /// with [`RedisStore::publish`] from any process.
    pub fn publisher(&self, stream: &str) -> Option<Publisher> {
        if !matches!(self.state.cfg.store, StoreConfig::Memory) {
            return None;
        }
        self.state
            .streams
            .get(stream)
            .map(|e| Publisher::new(e.hub.clone()))
    }

    /// Serves until the task is dropped.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: stops
    /// accepting, closes every socket with 1012 (service restart: the client
    /// resumes, here or on another instance, without paying again), and waits
    /// (at most `drain`) for settlements under way to finish, so no outcome is
    /// lost with the process.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        let drain = Duration::from_secs(self.state.cfg.limits.facilitator_timeout_secs.max(1) * 3);
        let state = self.state.clone();
        // The background tasks (timers with their settlement retries, the
        // heartbeat, the orphan sweep) live until the drain is over: a
        // settlement finishing during shutdown still needs them.
        let Server {
            state: st,
            listener,
            router,
            tasks,
            ..
        } = self;
        let timers = tokio::spawn(coordinator::drive_timers(st.clone()));
        let _background = AbortOnDrop(tasks.into_iter().chain([timers]).collect());
        tokio::select! {
            r = serve(st, listener, router) => r,
            () = shutdown => {
                tracing::info!("shutting down: closing sockets, finishing settlements");
                state.shutdown();
                let deadline = tokio::time::Instant::now() + drain;
                while state.endpoint_stats().settling > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let left = state.endpoint_stats().settling;
                if left > 0 {
                    tracing::error!(left, "shut down with settlements still under way");
                }
                // Let the close frames go out.
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(())
            }
        }
    }

    /// Runs in a background task; returns the address and the task.
    pub fn spawn(self) -> (SocketAddr, JoinHandle<Result<(), Error>>) {
        let addr = self.addr;
        (addr, tokio::spawn(self.run()))
    }
}

/// Accepts connections and serves them until dropped.
async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    router: axum::Router,
) -> Result<(), Error> {
    {
        let header_timeout = Duration::from_secs(state.cfg.limits.header_timeout_secs.max(1));
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let router = router.clone();
            let proxied =
                state.cfg.http.proxy_protocol && state.cfg.http.is_trusted_proxy(peer.ip());
            tokio::spawn(async move {
                let mut tcp = tcp;
                // From a trusted proxy speaking the PROXY protocol, the client
                // is the one its header names; the header is required.
                let peer = if proxied {
                    match edge::read_proxy_header(&mut tcp, header_timeout).await {
                        Ok(client) => client.unwrap_or(peer),
                        Err(e) => {
                            tracing::warn!(proxy = %peer, error = %e, "connection dropped");
                            return;
                        }
                    }
                } else {
                    peer
                };
                let svc = router.layer(axum::Extension(RemoteAddr(peer)));
                let io = hyper_util::rt::TokioIo::new(tcp);
                let hyper_svc = hyper_util::service::TowerToHyperService::new(svc);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let _ = builder
                    .serve_connection(io, hyper_svc)
                    .with_upgrades()
                    .await;
            });
        }
    }
}

/// Runs a configured source into `sink` until the sink refuses or the source fails.
pub(crate) async fn run_source(sink: impl hub::Sink, source: SourceConfig) -> hub::SourceEnd {
    match source {
        SourceConfig::Synthetic { rate, symbol, pad } => {
            hub::run_synthetic(sink, symbol, rate, pad).await
        }
        SourceConfig::Replay {
            file,
            rate,
            looping,
        } => hub::run_replay(sink, file, rate, looping).await,
        SourceConfig::Api => hub::SourceEnd::SinkClosed,
    }
}

struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The `host[:port]` of a public base URL (`https://streams.example.com/x` -> `streams.example.com`).
fn public_host(base: &str) -> Option<&str> {
    let rest = base.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    (!host.is_empty()).then_some(host)
}
