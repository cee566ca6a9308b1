//! `atomicstream`: buy, serve and demo x402-paid live streams.

mod args;
mod channels;
mod demo;
mod session_file;
mod ui;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atomicstream::{
    Amount, Client, ClientEvent, EndReason, EvmExactPayer, LocalSigner, PathVersion, SpendPolicy,
};
use futures::StreamExt;
use x402_payer::Payer;
use x402_types::{Offer, PaymentRequiredV1, PaymentRequiredV2, Schema};

use crate::args::{Cmd, ConfigCmd, ConnArgs, EvmArgs, KeyArgs, LogFormat, PolicyArgs, ShowArgs};

/// Exit codes.
mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 2;
    pub const POLICY: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const FAILURE: u8 = 5;
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

struct Fail(u8, String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(exit::FAILURE, e.to_string())
    }
}

fn usage(msg: impl Into<String>) -> Fail {
    Fail(exit::USAGE, msg.into())
}

fn load_key(k: &KeyArgs) -> Result<LocalSigner, Fail> {
    match &k.key_file {
        Some(p) => LocalSigner::from_file(p).map_err(|e| usage(e.to_string())),
        None => LocalSigner::from_env("X402_PRIVATE_KEY").map_err(|_| {
            usage(
                "no key: pass --key-file FILE or set X402_PRIVATE_KEY (never on the command line)",
            )
        }),
    }
}

fn policy(p: &PolicyArgs) -> Result<SpendPolicy, Fail> {
    let cap = Amount::from_display(&p.max_per_slice, 6)
        .map_err(|e| usage(format!("--max-per-slice: {e}")))?;
    let budget = Amount::from_display(&p.budget, 6).map_err(|e| usage(format!("--budget: {e}")))?;
    Ok(SpendPolicy::new(cap).with_lifetime_budget(budget))
}

/// `serve --check`: every problem of a configuration, each with its field.
fn check_config(path: Option<&std::path::Path>) -> Result<u8, Fail> {
    let Some(path) = path else {
        eprintln!("the built-in demo configuration is valid (give --config to check a file)");
        return Ok(exit::OK);
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    let cfg = match x402_server::Config::from_toml_unchecked(&text) {
        Ok(c) => c,
        Err(e) => {
            let text = e.to_string();
            let text = text.strip_prefix("invalid config: ").unwrap_or(&text);
            eprintln!(
                "{}: not a valid configuration:\n  - {}",
                path.display(),
                text.trim().replace('\n', "\n    ")
            );
            return Ok(exit::USAGE);
        }
    };
    let problems = cfg.problems();
    if problems.is_empty() {
        eprintln!(
            "{}: valid ({} streams, facilitator {}, state {})",
            path.display(),
            cfg.streams.len(),
            match &cfg.facilitator {
                Some(x402_server::FacilitatorConfig::Embedded {}) => "embedded (settles NOTHING)",
                Some(x402_server::FacilitatorConfig::Http { .. }) => "http",
                Some(x402_server::FacilitatorConfig::Evm { .. }) => "evm",
                None => "none",
            },
            match &cfg.store {
                x402_server::StoreConfig::Memory => "in memory (one instance; lost on restart)",
                x402_server::StoreConfig::Redis { .. } => "in Redis (shared by instances)",
            }
        );
        return Ok(exit::OK);
    }
    let n = problems.len();
    eprintln!(
        "{}: {n} {}:",
        path.display(),
        if n == 1 { "problem" } else { "problems" }
    );
    for p in problems {
        eprintln!("  - {p}");
    }
    Ok(exit::USAGE)
}

/// Logs on stderr. A service (`serve`, `facilitator`) stamps plain lines
/// with the time; interactive commands do not.
fn init_logs(default: &str, service: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        return;
    }
    // Plain lines on stderr; colours per --color and NO_COLOR (by default only for a terminal).
    let plain = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ui::color_for(&std::io::stderr()))
        .with_target(false);
    let _ = if service {
        plain.try_init()
    } else {
        plain.without_time().try_init()
    };
}

/// mimalloc returns freed pages to the OS: a long-running server's resident set follows its load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match args::parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let _ = LOG_FORMAT.set(cli.log_format);
    ui::set_color(cli.color);
    let r = match cli.cmd {
        Cmd::Streams { conn } => streams(&conn).await,
        Cmd::Schema { stream, conn, json } => schema(&stream, &conn, json).await,
        Cmd::Stream {
            stream,
            conn,
            key,
            limits,
            pay,
            slices,
            duration,
            session,
            show,
        } => match session_file::Target::new(stream, conn, &session) {
            Ok(target) => run_stream(target, &key, &limits, &pay, slices, duration, &show).await,
            Err(f) => Err(f),
        },
        Cmd::Channel { cmd } => channels::run(cmd).await,
        Cmd::Pay { input, key, limits } => pay(&input, &key, &limits).await,
        Cmd::Serve {
            config,
            check: true,
            ..
        } => check_config(config.as_deref()),
        Cmd::Serve { config, listen, .. } => serve(config, listen).await,
        Cmd::Config {
            cmd: ConfigCmd::Example,
        } => {
            print!("{}", x402_server::CONFIG_EXAMPLE);
            Ok(exit::OK)
        }
        Cmd::Facilitator {
            listen,
            evm,
            api_key,
            insecure_no_key,
            allow_hosts,
            allow_origins,
            rate,
        } => {
            let mut api = x402_facilitator::FacilitatorApi::new().requests_per_second(rate);
            for h in allow_hosts {
                api = api.allow_host(h);
            }
            for o in allow_origins {
                api = api.allow_origin(o);
            }
            facilitator(listen, evm, api_key, insecure_no_key, api).await
        }
        Cmd::Keygen { out } => keygen(&out),
        Cmd::Demo {
            slices,
            all,
            chain,
            scheme,
        } => {
            let channel = scheme == channels::Scheme::BatchSettlement;
            demo::run(slices, all, chain, channel).await
        }
        Cmd::Completions { shell } => args::print(&args::completions(shell))
            .map(|()| exit::OK)
            .map_err(Fail::from),
        Cmd::Man => args::man()
            .and_then(|m| args::print(&m))
            .map(|()| exit::OK)
            .map_err(Fail::from),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(Fail(code, msg)) => {
            say(&format!("error: {msg} (exit {code})"));
            ExitCode::from(code)
        }
    }
}

async fn streams(conn: &ConnArgs) -> Result<u8, Fail> {
    let client = Client::builder()
        .base_url(&conn.base_url)
        .version(conn.protocol)
        .build()?;
    let catalog = client.catalog().await.map_err(|e| {
        Fail(
            error_code(&e),
            session_file::explain_error(&e, "--base-url"),
        )
    })?;
    for s in &catalog.streams {
        println!(
            "{:<14} {} {} per minute, {} s slices ({} {} each): {}",
            s.id,
            s.price_per_minute,
            s.currency,
            s.slice_seconds,
            s.price_per_slice,
            s.currency,
            s.title
        );
    }
    Ok(exit::OK)
}

/// A usage error for a stream id the server does not sell, listing those it does.
async fn unknown_stream(client: &Client, stream: &str, base: &str) -> Fail {
    let sold = match client.catalog().await {
        Ok(c) if !c.streams.is_empty() => format!("it sells: {}", c.ids().join(", ")),
        _ => "its catalog could not be read".into(),
    };
    usage(format!(
        "{base} sells no stream `{stream}`; {sold} (`atomicstream streams --base-url {base}`); nothing was paid"
    ))
}

async fn schema(stream: &str, conn: &ConnArgs, json: bool) -> Result<u8, Fail> {
    let client = Client::builder()
        .base_url(&conn.base_url)
        .version(conn.protocol)
        .build()?;
    let info = match client.schema(stream).await {
        Ok(i) => i,
        Err(atomicstream::Error::UnknownStream(_)) => {
            return Err(unknown_stream(&client, stream, &conn.base_url).await);
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", info.schema.to_json());
        return Ok(exit::OK);
    }
    let r = &info.requirement;
    let symbol = &info.schema.pricing.currency;
    println!(
        "stream      {} — {}",
        info.schema.stream.id, info.schema.stream.title
    );
    println!("            {}", info.schema.stream.description);
    println!(
        "price       {} {symbol} per slice of {} s ({} {symbol} per minute)",
        info.price_per_slice, info.estimated_slice_seconds, info.price_per_minute
    );
    println!(
        "pays        {} atomic units of {} on {} ({})",
        r.amount,
        r.asset,
        r.network.v1_name(),
        r.network.caip2()
    );
    println!("to          {}", r.pay_to);
    println!(
        "valid for   {} s per payment (x402 {} scheme, protocol {})",
        r.max_timeout_seconds, r.scheme, info.schema.version
    );
    Ok(exit::OK)
}

/// Why a run stops when its stdout is gone.
const READER_LEFT: &str = "the reader of stdout left";

/// Stops the session once, remembering why (for the end sentence).
fn stop_once(
    session: &mut atomicstream::StreamSession,
    stopped: &mut Option<&'static str>,
    why: &'static str,
) {
    if stopped.is_none() {
        *stopped = Some(why);
        session.stop();
    }
}

/// The periodic work of `stream`: write out the batch (a reader that left
/// shows here first: the buffer hides a closed pipe until it is written
/// out, and it is never paid for again), redraw the status, save the
/// session file.
fn tick(
    stdout: &mut ui::Lines<std::io::StdoutLock<'static>>,
    ui: &mut ui::Ui,
    session: &mut atomicstream::StreamSession,
    file: Option<&mut session_file::Saver>,
    stopped: &mut Option<&'static str>,
) {
    if stdout.flush(ui).is_err() {
        stop_once(session, stopped, READER_LEFT);
    }
    ui.status(&session.progress());
    if let Some(f) = file {
        f.update(session, stdout.written());
    }
}

/// The flags a spending-policy refusal is about.
const POLICY_FLAGS: &str =
    "raise --max-per-slice for one payment or --budget for all of them, in USDC";

/// The exit code of an end. Reaching one's own budget after buying slices
/// is a normal end; the policy refusing the very first slice is a refusal.
fn end_code(r: &EndReason, slices: u64) -> u8 {
    match r {
        EndReason::Stopped | EndReason::SliceLimit | EndReason::StreamEnded { .. } => exit::OK,
        EndReason::PaymentDeclined { policy: true, .. } if slices > 0 => exit::OK,
        EndReason::PaymentDeclined { policy: true, .. } => exit::POLICY,
        EndReason::PaymentRefused { .. } => exit::REFUSED,
        _ => exit::FAILURE,
    }
}

fn error_code(e: &atomicstream::Error) -> u8 {
    if e.is_policy() {
        exit::POLICY
    } else if e.is_payment_refused() {
        exit::REFUSED
    } else if matches!(
        e,
        atomicstream::Error::Config(_) | atomicstream::Error::UnknownStream(_)
    ) {
        exit::USAGE
    } else {
        exit::FAILURE
    }
}

async fn run_stream(
    mut target: session_file::Target,
    key: &KeyArgs,
    limits: &PolicyArgs,
    pay: &channels::PayArgs,
    slices: Option<u64>,
    duration: Option<u64>,
    show: &ShowArgs,
) -> Result<u8, Fail> {
    init_logs("warn", false);
    let (stream, conn) = (target.stream.as_str(), &target.conn);
    let signer = load_key(key)?;
    let policy = policy(limits)?;
    let budget = policy
        .lifetime_budget()
        .map(|b| b.limit())
        .unwrap_or_default();
    let (payer, scheme) = channels::payer(signer, pay)?;
    let mut b = Client::builder()
        .base_url(&conn.base_url)
        .version(conn.protocol)
        .scheme(scheme)
        .payer(payer)
        .policy(policy);
    if let Some(n) = slices {
        b = b.max_slices(n);
    }
    let client = b.build().map_err(|e| usage(e.to_string()))?;
    if let Some(m) = target.nothing_to_resume(slices) {
        eprintln!("{m}");
        return Ok(exit::OK);
    }
    if let Some(m) = target
        .resume_note(slices)
        .filter(|_| !show.quiet && !show.status_json)
    {
        eprintln!("{m}");
    }
    let opened = match &target.resume {
        Some(t) => client.resume(t).await,
        None => client.open(stream).await,
    };
    let mut session = match opened {
        Ok(s) => s,
        Err(atomicstream::Error::UnknownStream(_)) => {
            return Err(unknown_stream(&client, stream, &conn.base_url).await);
        }
        Err(e) => {
            let mut msg = target.explain(&e);
            if e.is_policy() {
                msg = format!("{msg}; nothing was signed ({POLICY_FLAGS})");
            }
            return Err(Fail(error_code(&e), msg));
        }
    };
    let mut ui = ui::Ui::new(stream, budget, show.quiet, show.status_json, show.verbose);
    let started = Instant::now();
    let deadline = duration.map(|d| tokio::time::Instant::now() + Duration::from_secs(d));
    // Batched, and written around the live line: the two never mix on one terminal.
    let mut stdout = ui::Lines::new(std::io::stdout().lock());
    let mut last_status = Instant::now() - Duration::from_secs(1);
    // Why this run stopped the session itself, once it has (the end sentence).
    let mut stopped: Option<&'static str> = None;
    enum Wake {
        Event(Option<ClientEvent>),
        Tick,
    }
    let reason = loop {
        let wake = tokio::select! {
            ev = session.next() => Wake::Event(ev),
            _ = tokio::signal::ctrl_c(), if stopped.is_none() => {
                stop_once(&mut session, &mut stopped, "interrupted (Ctrl-C)");
                continue;
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } }, if stopped.is_none() => {
                stop_once(&mut session, &mut stopped, "--duration reached");
                continue;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => Wake::Tick,
        };
        let ev = match wake {
            Wake::Event(Some(ev)) => ev,
            Wake::Event(None) => break EndReason::Stopped,
            Wake::Tick => {
                last_status = Instant::now();
                tick(
                    &mut stdout,
                    &mut ui,
                    &mut session,
                    target.file.as_mut(),
                    &mut stopped,
                );
                continue;
            }
        };
        match ev {
            ClientEvent::Data(e) => {
                let line = match e.ts {
                    Some(ts) => format!(
                        "{{\"seq\":{},\"ts\":{ts},\"data\":{}}}",
                        e.seq,
                        e.data.get()
                    ),
                    None => format!("{{\"seq\":{},\"data\":{}}}", e.seq, e.data.get()),
                };
                stdout.push_event(&line, e.seq);
                // stdout closed (piped into `head`): stop before the next payment.
                if stdout.due() && stdout.flush(&ui).is_err() {
                    stop_once(&mut session, &mut stopped, READER_LEFT);
                }
            }
            ClientEvent::Ended(r) => break r,
            other => {
                // Events already printed come before the line that follows them.
                if stdout.flush(&ui).is_err() {
                    stop_once(&mut session, &mut stopped, READER_LEFT);
                }
                ui.event(&other)
            }
        }
        if last_status.elapsed() >= Duration::from_millis(250) {
            last_status = Instant::now();
            tick(
                &mut stdout,
                &mut ui,
                &mut session,
                target.file.as_mut(),
                &mut stopped,
            );
        }
    };
    let _ = stdout.flush(&ui);
    if let Some(f) = target.file.as_mut() {
        f.update(&session, stdout.written());
    }
    let p = session.progress();
    let summary = format!(
        "{} slices bought, {} paid, {} events, {} renewals ({} retries), {} reconnects, {:.1}s",
        p.slices,
        ui.usdc(&p.paid),
        p.events,
        p.renewals,
        p.renew_retries,
        p.reconnects,
        started.elapsed().as_secs_f64()
    );
    let code = end_code(&reason, p.slices);
    let mut ended = match (&reason, stopped) {
        (EndReason::Stopped, Some(why)) => format!("stopped: {why}"),
        _ => explain_end(&reason, &p.paid, &budget),
    };
    // Paid time left behind: say how to keep it next time.
    let left = p.remaining();
    if matches!(reason, EndReason::Stopped)
        && target.file.is_none()
        && left >= Duration::from_secs(5)
    {
        ended = format!(
            "{ended}; {} of paid time was left unused (run with --session-file FILE to keep it for --resume)",
            ui::span(left)
        );
    }
    if let (EndReason::ConnectionLost { .. }, Some(f)) = (&reason, &p.last_failure) {
        // What the last attempt ran into (the URL without its token).
        ended = format!("{ended} (last: {f})");
    }
    if let Some(note) = target.file.as_ref().and_then(|f| f.note()) {
        ended = format!("{ended}; {note}");
    }
    // Also when no slice was confirmed: a deposit may have landed all the same.
    if let Some(note) = channels::close_at_end(&client, stream, pay).await {
        ended = format!("{ended}; {note}");
    }
    ui.end(&summary, &ended, code);
    Ok(code)
}

/// An end reason in a sentence: what happened and what to do.
fn explain_end(r: &EndReason, paid: &Amount, budget: &Amount) -> String {
    let usdc = |a: &Amount| format!("{} USDC", a.to_display(6));
    match r {
        EndReason::Stopped => "stopped as asked".into(),
        EndReason::SliceLimit => "the requested number of slices was bought and used".into(),
        EndReason::StreamEnded { reason } => format!("the server ended the stream ({reason})"),
        EndReason::PaymentDeclined { policy: true, .. } => format!(
            "the spending policy declined the next slice after {} of a {} budget; \
             raise --budget to keep streaming",
            usdc(paid),
            usdc(budget)
        ),
        EndReason::PaymentDeclined { message, .. } => {
            format!("the wallet could not sign the next payment ({message}); check the key")
        }
        EndReason::PaymentRefused { code, message, .. } if code.maybe_spent() => format!(
            "the server refused a payment that may have moved money ({code}: {message}); \
             it stays counted against the budget; contact the operator"
        ),
        EndReason::PaymentRefused { code, message, .. } => format!(
            "the server refused the payment twice ({code}: {message}); nothing more was signed"
        ),
        EndReason::Superseded => {
            "another connection took over this session (the same token was opened elsewhere)".into()
        }
        EndReason::TokenRejected { code } => format!(
            "the server no longer accepts this session's token ({code}); run the command again for a new quote"
        ),
        EndReason::ConnectionLost { attempts } => format!(
            "the connection could not be restored after {attempts} attempts; check the network and the server"
        ),
        EndReason::ProtocolViolation(m) => {
            format!("the server broke the protocol ({m}); nothing more was paid")
        }
        EndReason::UnknownStream { message } => {
            format!("the server sells no such stream ({message}); nothing was paid")
        }
        other => other.to_string(),
    }
}

/// Reads a 402 answer of any supported shape.
fn read_offer(text: &str) -> Result<Offer, Fail> {
    let t = text.trim();
    if t.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(t).map_err(|e| usage(format!("input is not JSON: {e}")))?;
        if v.get("protocol").is_some() {
            let s = Schema::from_json(t.as_bytes()).map_err(|e| usage(e.to_string()))?;
            let req = s.payment_details.requirement();
            let mut resource = url::Url::parse(&s.websocket_endpoint)
                .map_err(|e| usage(format!("websocketEndpoint: {e}")))?;
            resource.set_query(None);
            return Ok(
                match (s.version, s.accepts.as_ref().and_then(|a| a.first())) {
                    (PathVersion::V1, Some(r)) => Offer::V1(r.clone()),
                    (v, _) => {
                        Offer::from_requirement(v, &req, resource.as_str(), &s.stream.description)
                    }
                },
            );
        }
        return match v.get("x402Version").and_then(|x| x.as_u64()) {
            Some(1) => {
                let pr: PaymentRequiredV1 =
                    serde_json::from_value(v).map_err(|e| usage(format!("x402 v1 body: {e}")))?;
                pr.into_offer().ok_or_else(|| usage("no accepts"))
            }
            Some(2) => {
                let pr: PaymentRequiredV2 = serde_json::from_str(t)
                    .map_err(|e| usage(format!("x402 v2 PaymentRequired: {e}")))?;
                pr.into_offer().ok_or_else(|| usage("no accepts"))
            }
            _ => Err(usage(
                "unrecognised JSON: expected a schema, an x402 v1 body or an x402 v2 PaymentRequired",
            )),
        };
    }
    // Header names are case-insensitive (curl prints `payment-required:`).
    let name = "payment-required:";
    let value = match t.get(..name.len()) {
        Some(head) if head.eq_ignore_ascii_case(name) => t[name.len()..].trim(),
        _ => t,
    };
    let pr = PaymentRequiredV2::from_header(value)
        .map_err(|e| usage(format!("not a PAYMENT-REQUIRED value: {e}")))?;
    pr.into_offer().ok_or_else(|| usage("no accepts"))
}

async fn pay(input: &str, key: &KeyArgs, limits: &PolicyArgs) -> Result<u8, Fail> {
    let mut text = String::new();
    if input == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| usage(format!("stdin: {e}")))?;
    } else {
        text = std::fs::read_to_string(input).map_err(|e| usage(format!("{input}: {e}")))?;
    }
    let offer = read_offer(&text)?;
    let signer = load_key(key)?;
    let policy = policy(limits)?;
    let req = offer.requirement();
    let res = policy.authorize(&req, None).map_err(|e| {
        Fail(
            exit::POLICY,
            format!("{}; nothing was signed ({POLICY_FLAGS})", e.describe(&req)),
        )
    })?;
    let payload = EvmExactPayer::new(signer)
        .pay(&offer)
        .await
        .map_err(|e| Fail(exit::FAILURE, e.to_string()))?;
    res.commit();
    println!(
        "{}: {}",
        offer.version().payment_header(),
        payload.to_header()
    );
    Ok(exit::OK)
}

async fn serve(config: Option<PathBuf>, listen: Option<std::net::SocketAddr>) -> Result<u8, Fail> {
    init_logs("info", true);
    let default_listen: std::net::SocketAddr = ([127, 0, 0, 1], 4021).into();
    let mut cfg = match &config {
        Some(p) => x402_server::Config::from_file(p).map_err(|e| usage(e.to_string()))?,
        None => x402_server::Config::demo(default_listen),
    };
    if let Some(l) = listen {
        cfg.listen = l;
    }
    let embedded = matches!(
        cfg.facilitator,
        Some(x402_server::FacilitatorConfig::Embedded {})
    );
    let api = cfg.facilitator_api.is_some();
    let mut builder = x402_server::ServerBuilder::new(cfg.clone());
    // `kind = "evm"`: connected here (not in bind) so that a wrong key is a
    // usage error (exit 2) and an unreachable chain a failure, as before.
    if let Some(evm @ x402_server::FacilitatorConfig::Evm { .. }) = &cfg.facilitator {
        let f = x402_server::evm::facilitator(evm).await.map_err(|e| {
            let text = e.to_string();
            if text.contains("relayer key") {
                usage(text)
            } else {
                Fail(exit::FAILURE, text)
            }
        })?;
        say(&format!(
            "  facilitator:  {}",
            x402_server::Facilitator::describe(f.as_ref())
        ));
        builder = builder.facilitator(f);
    }
    let server = builder.bind().await?;
    banner(&server, &cfg, config.is_none(), embedded, api);
    // SIGTERM or Ctrl-C: stop accepting, close sockets with 1012 (clients resume elsewhere),
    // finish the settlements under way, then exit.
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(t) => { t.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    server.run_until(shutdown).await?;
    say("atomicstream server stopped");
    Ok(exit::OK)
}

/// One line for a person on stderr; with `--log-format json`, the same
/// words as one JSON object (a log collector reads only JSON lines).
fn say(line: &str) {
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        let level = if line.starts_with("error") {
            "ERROR"
        } else {
            "INFO"
        };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        eprintln!(
            "{}",
            serde_json::json!({"timestamp": now, "level": level, "fields": {"message": line.trim()}})
        );
    } else {
        eprintln!("{line}");
    }
}

/// What `serve` says when it listens: a few lines for a person, or with
/// `--log-format json` one JSON log line (a log collector sees only JSON).
fn banner(
    server: &x402_server::Server,
    cfg: &x402_server::Config,
    demo: bool,
    embedded: bool,
    api: bool,
) {
    let base = server.http_base();
    if LOG_FORMAT.get() == Some(&LogFormat::Json) {
        let streams: Vec<&str> = cfg.streams.iter().map(|s| s.id.as_str()).collect();
        tracing::info!(
            http = base,
            listening = %server.local_addr(),
            streams = ?streams,
            facilitator_api = api,
            "atomicstream server started"
        );
        if demo {
            tracing::info!(
                pay_to = x402_server::DEV_PAY_TO,
                "demo catalog, development payTo address"
            );
        }
        return;
    }
    eprintln!("atomicstream server on {base}");
    eprintln!("  listening:    {}", server.local_addr());
    eprintln!("  catalog:      {base}/streams   (browser page: {base}/)");
    for s in &cfg.streams {
        eprintln!(
            "  schema:       {base}/v2/schema/{}   (v1: {base}/v1/schema/{})",
            s.id, s.id
        );
    }
    if api {
        eprintln!("  facilitator API (bearer key): {base}/facilitator/{{verify,settle,supported}}");
    }
    if demo {
        eprintln!("  payTo (development address): {}", x402_server::DEV_PAY_TO);
    }
    if embedded {
        eprintln!(
            "  WARNING: facilitator = embedded. Payments are verified but NOTHING IS SETTLED: no money moves."
        );
    }
}

/// `atomicstream facilitator`: the standard x402 facilitator API.
async fn facilitator(
    listen: std::net::SocketAddr,
    evm: EvmArgs,
    api_key: Option<String>,
    insecure_no_key: bool,
    mut api: x402_facilitator::FacilitatorApi,
) -> Result<u8, Fail> {
    init_logs("info", true);
    if api_key.is_none() && !listen.ip().is_loopback() {
        return Err(usage(
            "listening beyond loopback needs --api-key (or X402_FACILITATOR_KEY), at least 32 bytes",
        ));
    }
    if api_key
        .as_ref()
        .is_some_and(|k| k.len() < x402_facilitator::MIN_KEY_BYTES)
    {
        return Err(usage(format!(
            "--api-key (or X402_FACILITATOR_KEY) must be at least {} bytes",
            x402_facilitator::MIN_KEY_BYTES
        )));
    }
    let settles = evm.evm && evm.rpc_url.is_some();
    if settles && api_key.is_none() && !insecure_no_key {
        return Err(usage(
            "--evm spends the relayer's gas on every settlement: give --api-key (or \
             X402_FACILITATOR_KEY), at least 32 bytes, or --insecure-no-key to serve without one",
        ));
    }
    let f: Arc<dyn x402_facilitator::Facilitator> = match (&evm.evm, &evm.rpc_url) {
        (true, Some(url)) => {
            let key = x402_server::evm::relayer_key(
                evm.relayer_key_file.as_deref(),
                &evm.relayer_key_env,
            )
            .map_err(|e| usage(e.to_string()))?;
            x402_server::evm::connect(
                url,
                &evm.network,
                key,
                evm.confirmations,
                Duration::from_secs(20),
            )
            .await
            .map_err(|e| Fail(exit::FAILURE, e.to_string()))?
        }
        _ => Arc::new(x402_facilitator::EmbeddedFacilitator::default()),
    };
    let l = tokio::net::TcpListener::bind(listen).await?;
    say(&format!(
        "x402 facilitator API on http://{} (/verify, /settle, /supported){}; {}",
        l.local_addr()?,
        if api_key.is_some() {
            ", bearer key required"
        } else {
            ""
        },
        f.describe()
    ));
    match api_key {
        Some(k) => api = api.bearer_key(k),
        None if settles => tracing::warn!(
            "INSECURE: --evm without an API key. Anyone who can reach {} can settle \
             payments and make the relayer spend its gas (cross-site and DNS-rebinding \
             requests are refused; local programs are not)",
            listen
        ),
        None => {}
    }
    api.serve(l, f).await?;
    Ok(exit::OK)
}

fn keygen(out: &std::path::Path) -> Result<u8, Fail> {
    let signer = LocalSigner::random()?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(out)
        .map_err(|e| usage(format!("{}: {e} (refusing to overwrite)", out.display())))?;
    f.write_all(signer.to_hex_secret().as_bytes())?;
    f.write_all(b"\n")?;
    println!("{}", signer);
    eprintln!(
        "wrote a development key to {} (mode 0600). Fund it with testnet USDC only.",
        out.display()
    );
    Ok(exit::OK)
}
