#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app;
pub mod config;
mod error;
pub mod facilitator;
mod hub;
pub mod store;
pub mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use app::{AppState, RemoteAddr, StreamEntry, router};
pub use config::{Config, DEV_PAY_TO, FacilitatorConfig, Limits, SourceConfig, StreamConfig};
pub use error::{ApiError, ConfigError, Error};
pub use facilitator::{
    EmbeddedFacilitator, Facilitator, FacilitatorError, HttpFacilitator, LedgerEntry,
    facilitator_router,
};
pub use hub::{Frame, Hub, Publisher, Synthetic};
pub use store::{MemoryStore, SessionStore};

/// Builds a [`Server`].
pub struct ServerBuilder {
    cfg: Config,
    facilitator: Option<Arc<dyn Facilitator>>,
    store: Option<Arc<dyn SessionStore>>,
    serve_facilitator: bool,
}

impl ServerBuilder {
    /// From a configuration.
    pub fn new(cfg: Config) -> Self {
        ServerBuilder {
            cfg,
            facilitator: None,
            store: None,
            serve_facilitator: true,
        }
    }

    /// Uses this facilitator instead of the configured one.
    pub fn facilitator(mut self, f: Arc<dyn Facilitator>) -> Self {
        self.facilitator = Some(f);
        self
    }

    /// Uses this session store instead of the in-memory one.
    pub fn store(mut self, s: Arc<dyn SessionStore>) -> Self {
        self.store = Some(s);
        self
    }

    /// Whether to also serve the facilitator API under `/facilitator` (default: yes).
    pub fn serve_facilitator_api(mut self, yes: bool) -> Self {
        self.serve_facilitator = yes;
        self
    }

    /// Binds the listener and starts the event sources.
    pub async fn bind(self) -> Result<Server, Error> {
        self.cfg.validate()?;
        let listener = TcpListener::bind(self.cfg.listen).await?;
        let addr = listener.local_addr()?;
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
            (None, FacilitatorConfig::Embedded) => Arc::new(EmbeddedFacilitator::default()),
            (None, FacilitatorConfig::Http { url }) => Arc::new(
                HttpFacilitator::new(
                    url,
                    Duration::from_secs(self.cfg.limits.facilitator_timeout_secs),
                )
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            ),
        };
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new(self.cfg.limits.max_sessions)));
        let mut streams = HashMap::new();
        let mut tasks = Vec::new();
        for sc in &self.cfg.streams {
            let terms = sc.resolve()?;
            let hub = Hub::new(self.cfg.limits.replay_buffer, self.cfg.limits.send_queue);
            let weak = Arc::downgrade(&hub);
            match &sc.source {
                SourceConfig::Synthetic { rate, symbol, pad } => {
                    tasks.push(tokio::spawn(hub::run_synthetic(
                        weak,
                        symbol.clone(),
                        *rate,
                        *pad,
                    )));
                }
                SourceConfig::Replay {
                    file,
                    rate,
                    looping,
                } => {
                    tasks.push(tokio::spawn(hub::run_replay(
                        weak,
                        file.clone(),
                        *rate,
                        *looping,
                    )));
                }
                SourceConfig::Api => {}
            }
            streams.insert(
                sc.id.clone(),
                StreamEntry {
                    cfg: sc.clone(),
                    terms,
                    hub,
                },
            );
        }
        let state = Arc::new(AppState {
            tokens: app::token_key(&self.cfg),
            cfg: self.cfg,
            http_base,
            ws_base,
            streams,
            facilitator: facilitator.clone(),
            store,
            per_ip: Default::default(),
            next_conn: 1.into(),
            stats: Default::default(),
        });
        let mut router = router(state.clone());
        if self.serve_facilitator {
            router = router.nest("/facilitator", facilitator_router(facilitator));
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

    /// A publisher for a stream.
    pub fn publisher(&self, stream: &str) -> Option<Publisher> {
        self.state
            .streams
            .get(stream)
            .map(|e| Publisher::new(e.hub.clone()))
    }

    /// Serves until the task is dropped.
    pub async fn run(self) -> Result<(), Error> {
        let Server {
            state,
            listener,
            router,
            tasks,
            ..
        } = self;
        let header_timeout = Duration::from_secs(state.cfg.limits.header_timeout_secs.max(1));
        let linger = state.cfg.limits.session_linger_secs;
        let sweeper_state = state.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let n = sweeper_state.store.sweep(
                    tokio::time::Instant::now().into_std(),
                    app_unix_now(),
                    linger,
                );
                if n > 0 {
                    tracing::debug!(removed = n, "swept idle sessions");
                }
            }
        });
        let _guard = AbortOnDrop(tasks.into_iter().chain([sweeper]).collect());
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
            let svc = router.clone().layer(axum::Extension(RemoteAddr(peer)));
            tokio::spawn(async move {
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

    /// Runs in a background task; returns the address and the task.
    pub fn spawn(self) -> (SocketAddr, JoinHandle<Result<(), Error>>) {
        let addr = self.addr;
        (addr, tokio::spawn(self.run()))
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

fn app_unix_now() -> u64 {
    app::unix_now()
}

/// Serves only the facilitator API (`/verify`, `/settle`, `/supported`) on `listener`.
pub async fn serve_facilitator(
    listener: TcpListener,
    f: Arc<dyn Facilitator>,
) -> Result<(), Error> {
    axum::serve(listener, facilitator_router(f)).await?;
    Ok(())
}
