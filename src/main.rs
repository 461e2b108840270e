//! Command line only; all behaviour lives in the library.

use clap::{Parser, Subcommand, ValueEnum};
use gatehouse::admin::settings::read_token_file;
use gatehouse::admin::{api, client};
use gatehouse::admin::{AdminListen, AdminToken};
use gatehouse::app::upgrade::Predecessor;
use gatehouse::config::Config;
use gatehouse::sys::{rlimit::raise_nofile, sdnotify};
use gatehouse::telemetry::LogFormat;
use gatehouse::{telemetry, Gatehouse};
use hyper::Method;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Hardened frontline gateway for Electrum servers and blockchain peer ports"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Overrides `log.format` from the config.
        #[arg(long, value_enum)]
        log_format: Option<Format>,
    },
    /// Validate a config file and print a summary of its fronts.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Also ask each Electrum upstream what it is, and print what to change on it (as the gateway logs
        /// at start).
        #[arg(long)]
        probe: bool,
    },
    /// Start a self-contained demo: gateway, self-signed certificate and sample Electrum backend on loopback.
    Demo,
    /// List, add or remove bans through a running gateway's admin API.
    Bans {
        #[command(subcommand)]
        cmd: BansCmd,
    },
    /// Show the cluster links of a running gateway (through its admin API).
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// List the certificates a running gateway serves or orders: names, issuer, expiry, source (file,
    /// acme, placeholder) and, for ACME, the next renewal (through its admin API).
    Certs {
        /// Print the API's JSON as it is.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make this node's Ed25519 cluster key (file mode 0600) and print its public key for the peers' configs.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Make a random bearer token for an API front: prints the token (for the client) and the
    /// `token_hash` line for its [[front.api.tokens]] entry (the token itself is not stored).
    Token,
    /// Replace the running gateway by a new process (through its admin API) without closing a port: the
    /// new one takes the listening sockets over and accepts at once, the old one drains its sessions.
    Upgrade {
        /// The new binary (absolute path); default: the running binary's path as installed now.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach the admin API: from the config's [admin] section, or given outright.
#[derive(clap::Args)]
struct AdminArgs {
    /// Config file whose [admin] section names the address and token file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Admin API address (http://IP:PORT, IP:PORT or unix:PATH); overrides the config.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// File holding the bearer token; overrides the config.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Peers, link state, last sync and lag.
    Status {
        /// Print the API's JSON as it is.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum BansCmd {
    /// Bans in force, optionally only those inside or around a prefix.
    List {
        #[arg(long, value_name = "CIDR")]
        prefix: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Ban an address or network.
    Add {
        #[arg(value_name = "PREFIX")]
        prefix: String,
        /// How long, e.g. "1h", "30m", "7d".
        #[arg(long)]
        duration: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lift the ban on exactly this address or network.
    Remove {
        #[arg(value_name = "PREFIX")]
        prefix: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config, probe } => check(&config, probe),
        Cmd::Run { config, log_format } => run(&config, log_format),
        Cmd::Demo => ExitCode::from(gatehouse::demo::run() as u8),
        Cmd::Keygen { out } => match gatehouse::cluster::keys::NodeKey::generate_file(&out) {
            Ok(k) => {
                println!("{}", k.public());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Token => {
            let (token, entry) = gatehouse::front::api::auth::new_token();
            println!("token: {token}\ntoken_hash = \"{entry}\"");
            ExitCode::SUCCESS
        }
        Cmd::Bans { cmd } => bans(cmd),
        Cmd::Upgrade { binary, admin } => upgrade(binary, &admin),
        Cmd::Cluster {
            cmd: ClusterCmd::Status { json, admin },
        } => cluster_status(&admin, json),
        Cmd::Certs { json, admin } => certs(&admin, json),
    }
}

/// A Unix time as an HTTP date (UTC), or `-` for none.
fn when(t: Option<i64>) -> String {
    match t.and_then(|t| u64::try_from(t).ok()) {
        Some(t) => httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)),
        None => "-".to_string(),
    }
}

/// `GET path` on the admin API named by `admin`; Err says why there is no reply.
fn admin_get(admin: &AdminArgs, path: &str) -> Result<client::Reply, String> {
    let (target, token) = admin_target(admin)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(client::request(&target, &token, Method::GET, path, None))
        .map_err(|e| e.to_string())
}

fn certs(admin: &AdminArgs, json: bool) -> ExitCode {
    let list = match admin_get(admin, "/v1/certs") {
        Ok(r) if r.status.is_success() && json => {
            println!("{}", r.body);
            return ExitCode::SUCCESS;
        }
        Ok(r) if r.status.is_success() => match r.parse::<api::CertList>() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        Ok(r) => {
            eprintln!("error: {} (HTTP {})", r.error_message(), r.status.as_u16());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if list.certificates.is_empty() {
        println!("no certificates");
        return ExitCode::SUCCESS;
    }
    for c in &list.certificates {
        println!(
            "{} {} ({}): {}",
            c.front.as_deref().unwrap_or("(no front)"),
            c.name,
            c.source,
            c.names.join(", ")
        );
        println!("  issuer:  {}", c.issuer);
        println!("  expires: {}", when(Some(c.not_after)));
        if c.next_renewal.is_some() {
            println!("  renewal: {}", when(c.next_renewal));
        }
        if let Some(peer) = &c.ordered_by {
            println!("  ordered by cluster peer {peer}");
        }
        if c.failures > 0 {
            println!(
                "  failed:  {} order(s) in a row, last: {}",
                c.failures,
                c.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    ExitCode::SUCCESS
}

fn admin_target(a: &AdminArgs) -> Result<(AdminListen, AdminToken), String> {
    let from_config = match &a.config {
        Some(path) if a.admin.is_none() || a.token_file.is_none() => {
            let cfg = Config::load_admin(path).map_err(|e| e.to_string())?;
            if !cfg.enabled {
                return Err(format!(
                    "{}: the admin API is disabled ([admin] enabled = false); pass --admin and --token-file to reach another gateway",
                    path.display()
                ));
            }
            Some(cfg)
        }
        _ => None,
    };
    let target = match (&a.admin, &from_config) {
        (Some(url), _) => client::parse_target(url).map_err(|e| e.to_string())?,
        (None, Some(cfg)) => cfg.listen.clone(),
        (None, None) => {
            return Err("say where the admin API is: -c FILE, or --admin URL with --token-file FILE".into())
        }
    };
    let token = match (&a.token_file, from_config.and_then(|c| c.token)) {
        (Some(f), _) => read_token_file(f).map_err(|e| e.to_string())?,
        (None, Some(t)) => t,
        (None, None) => return Err("no token: pass --token-file FILE or -c FILE".into()),
    };
    Ok((target, token))
}

/// One line on cluster-wide cost sharing, from `GET /v1/cluster`.
fn print_cost_sharing(on: bool, s: &api::ClusterCounters) {
    if on {
        println!(
            "cost sharing on: {} reports sent, {} received, {} rejected",
            s.cost_reports_sent, s.cost_reports_received, s.cost_reports_rejected
        );
    } else {
        println!("cost sharing off");
    }
}

fn last_sync(lag_ms: Option<u64>) -> String {
    lag_ms.map_or("never synced".to_string(), |ms| {
        format!("last sync {:.1}s ago", ms as f64 / 1000.0)
    })
}

fn cluster_status(admin: &AdminArgs, json: bool) -> ExitCode {
    let reply = match admin_get(admin, "/v1/cluster") {
        Ok(r) if r.status.is_success() => r,
        Ok(r) => {
            eprintln!("error: {} (HTTP {})", r.error_message(), r.status.as_u16());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", reply.body);
        return ExitCode::SUCCESS;
    }
    let status = match reply.parse::<api::ClusterStatus>() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match status {
        api::ClusterStatus::Standalone { .. } => println!("not part of a cluster"),
        api::ClusterStatus::Redis {
            node,
            records,
            cost_sharing,
            peers,
            redis: r,
            stats,
            ..
        } => {
            println!(
                "node {node}  redis {} (prefix {})  {}  {}  records {records}",
                r.url,
                r.prefix,
                if r.connected { "connected" } else { "disconnected" },
                last_sync(r.lag_ms),
            );
            print_cost_sharing(cost_sharing, &stats);
            for p in peers {
                println!("  trusted {}", p.key);
            }
        }
        api::ClusterStatus::Embedded {
            node,
            listen,
            records,
            cost_sharing,
            peers,
            stats,
        } => {
            println!("node {node}  listening on {listen}  records {records}");
            print_cost_sharing(cost_sharing, &stats);
            for p in peers {
                println!(
                    "  {:<22} {:<5} {}  {}",
                    p.addr,
                    if p.up { "up" } else { "down" },
                    last_sync(p.lag_ms),
                    p.key
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// How long `gatehouse upgrade` waits for the gateway's answer.
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

fn upgrade(binary: Option<PathBuf>, admin: &AdminArgs) -> ExitCode {
    let binary = match binary.map(std::path::absolute).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: --binary: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (target, token) = match admin_target(admin) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let body = api::NewUpgrade {
        binary: binary.map(|b| b.display().to_string()),
    };
    let reply = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            // The gateway answers by its own runtime.upgrade_timeout; wait longer than any sane one.
            rt.block_on(client::request_within(
                UPGRADE_WAIT,
                &target,
                &token,
                Method::POST,
                "/v1/upgrade",
                serde_json::to_value(body).ok(),
            ))
            .map_err(|e| e.to_string())
        });
    match reply {
        Ok(r) if r.status.is_success() => match r.parse::<api::UpgradeAnswer>() {
            Ok(a) => {
                println!(
                    "upgraded: pid {} ({}) accepts on every listener; the old process drains",
                    a.pid, a.binary
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(r) => {
            eprintln!(
                "error: upgrade failed, the running gateway serves on: {} (HTTP {})",
                r.error_message(),
                r.status.as_u16()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bans(cmd: BansCmd) -> ExitCode {
    let (admin, method, path, body) = match &cmd {
        BansCmd::List { prefix, admin, .. } => {
            let q = prefix
                .as_ref()
                .map(|p| format!("?prefix={}", gatehouse::admin::percent_encode(p)))
                .unwrap_or_default();
            (admin, Method::GET, format!("/v1/bans{q}"), None)
        }
        BansCmd::Add {
            prefix,
            duration,
            reason,
            admin,
        } => {
            let body = api::NewBan {
                prefix: prefix.clone(),
                duration: duration.clone(),
                reason: reason.clone(),
            };
            (
                admin,
                Method::POST,
                "/v1/bans".to_string(),
                serde_json::to_value(body).ok(),
            )
        }
        BansCmd::Remove { prefix, admin } => (
            admin,
            Method::DELETE,
            format!("/v1/bans/{}", gatehouse::admin::percent_encode(prefix)),
            None,
        ),
    };
    let (target, token) = match admin_target(admin) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reply = match rt.block_on(client::request(&target, &token, method, &path, body)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !reply.status.is_success() {
        eprintln!("error: {} (HTTP {})", reply.error_message(), reply.status.as_u16());
        return ExitCode::FAILURE;
    }
    let shown = match cmd {
        BansCmd::List { json: true, .. } => {
            println!("{}", reply.body);
            Ok(())
        }
        BansCmd::List { .. } => reply.parse::<api::BanList>().map(|list| {
            if list.bans.is_empty() {
                println!("no bans in force");
            }
            for r in &list.bans {
                println!(
                    "{:<43} until {}  ({}s left)  origin {}  {}",
                    r.prefix, r.until, r.expires_in_secs, r.origin, r.reason,
                );
            }
        }),
        BansCmd::Add { .. } => reply
            .parse::<api::Ban>()
            .map(|b| println!("banned {} until {}: {}", b.prefix, b.until, b.reason)),
        BansCmd::Remove { .. } => reply
            .parse::<api::Ban>()
            .map(|b| println!("lifted the ban on {} (was until {})", b.prefix, b.until)),
    };
    match shown {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path, probe: bool) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            println!("{}: ok", path.display());
            for w in cfg.warnings() {
                eprintln!("warning: {w}");
            }
            for f in &cfg.fronts {
                let mut listen: Vec<String> = f.listen.iter().map(|a| a.to_string()).collect();
                if listen.is_empty() {
                    listen.push("(routed connections only)".to_string());
                }
                let up: Vec<String> = f.upstreams.iter().map(|a| a.to_string()).collect();
                let routes: Vec<String> = f
                    .sni_routes
                    .iter()
                    .map(|r| format!("{} → {}", r.name, r.target))
                    .collect();
                println!(
                    "  front {:<16} {:?}/{:?}  listen {}  → {}{}{}{}",
                    f.name,
                    f.kind,
                    f.transport,
                    listen.join(", "),
                    up.join(", "),
                    if f.admission.allowlist_only || cfg.admission.allowlist_only {
                        "  [allowlist only]"
                    } else {
                        ""
                    },
                    if f.proxy_accept_from.is_empty() {
                        ""
                    } else {
                        "  [PROXY intake]"
                    },
                    if routes.is_empty() {
                        String::new()
                    } else {
                        format!("  [SNI routes: {}]", routes.join(", "))
                    },
                );
            }
            if let Some(j) = &cfg.bans.journal {
                println!("  ban journal {}", j.display());
            }
            if cfg.admin.enabled {
                println!("  admin API   {}", cfg.admin.listen);
            }
            if probe {
                return probe_backends(&cfg);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints what each Electrum upstream is and what to change on it; fails when one cannot be probed.
fn probe_backends(cfg: &Config) -> ExitCode {
    use gatehouse::front::electrum::probe;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for f in cfg
        .fronts
        .iter()
        .filter(|f| f.kind == gatehouse::front::FrontKind::Electrum)
    {
        let admitted = probe::admitted(f, &cfg.admission);
        for &upstream in &f.upstreams {
            match rt.block_on(probe::probe(upstream, f.send_proxy)) {
                Ok(id) => {
                    println!("  backend {} {upstream}: {id}", f.name);
                    for a in probe::advise(&id, admitted) {
                        println!("    advice: {a}");
                    }
                }
                Err(e) => {
                    ok = false;
                    eprintln!("error: backend {} {upstream}: {e}", f.name);
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(path: &std::path::Path, log_format: Option<Format>) -> ExitCode {
    // First, while single-threaded (it edits the environment): started by `gatehouse upgrade`?
    let mut predecessor = match Predecessor::from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: upgrade: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            if let Some(p) = predecessor.as_mut() {
                p.refuse(&e.to_string());
            }
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let format = match log_format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Human) => LogFormat::Human,
        None => cfg.log.format.clone(),
    };
    let log_file = match telemetry::init_with_file(&format, &cfg.log.level, cfg.log.file.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            if let Some(p) = predecessor.as_mut() {
                p.refuse(&e.to_string());
            }
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for w in cfg.warnings() {
        tracing::warn!(key = %w.key, "{}", w.reason);
    }
    gatehouse::sys::activation::init(); // before any thread: it edits the environment
    if let Some(p) = predecessor.as_mut() {
        match p.take_over(cfg.runtime.upgrade_timeout) {
            Ok(n) => tracing::info!(
                sockets = n,
                "upgrade: took over the listening sockets and the ban journal"
            ),
            Err(e) => {
                tracing::error!(error = %e, "upgrade: hand-over failed");
                p.refuse(&e.to_string());
                return ExitCode::FAILURE;
            }
        }
    }
    raise_nofile(cfg.runtime.max_open_files);
    // One worker runs on this thread's own scheduler: the work-stealing one keeps per-poll statistics (clock
    // reads on every task switch) and wakes a second thread, costs that buy nothing without a second worker.
    let mut rt = if cfg.runtime.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if cfg.runtime.worker_threads > 0 {
            b.worker_threads(cfg.runtime.worker_threads);
        }
        b
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Handlers first: a SIGTERM that arrives right after READY must drain, not kill.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        // The backends are asked what they are by the process an operator runs, not by every embedding.
        let probes: Vec<_> = cfg.fronts.clone();
        let global = cfg.admission.clone();
        let running = match Gatehouse::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                if let Some(p) = predecessor.as_mut() {
                    p.refuse(&format!("start failed: {e}"));
                }
                tracing::error!(error = %e, "start failed");
                if log_file.is_some() {
                    // The log line went to the file; whoever started us (systemd, a shell) sees stderr.
                    eprintln!("error: start failed: {e}");
                }
                return ExitCode::FAILURE;
            }
        };
        gatehouse::sys::activation::close_unused();
        let watchdog = match predecessor {
            None => {
                let _ = sdnotify::notify("READY=1");
                sdnotify::spawn_watchdog()
            }
            // systemd hears from us once the previous process has made us the main process.
            Some(p) => match p.ready(running.bans().clone()) {
                Ok(promoted) => {
                    tokio::spawn(async move {
                        if promoted.await.is_ok() {
                            let _ = sdnotify::notify("READY=1");
                            // Detached: it pings for as long as the process runs.
                            drop(sdnotify::spawn_watchdog());
                        }
                    });
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "upgrade: cannot report ready to the previous process");
                    None
                }
            },
        };
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "gatehouse ready");
        for f in &probes {
            gatehouse::front::electrum::probe::spawn_advice(f, &global);
        }
        wait_and_drain(running, path, signals, log_file, watchdog).await;
        ExitCode::SUCCESS
    })
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    /// Reopen the log file (logrotate's postrotate).
    usr1: tokio::signal::unix::Signal,
    /// Live upgrade to this process's own binary as installed now.
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }
}

async fn wait_and_drain(
    mut running: gatehouse::Running,
    path: &std::path::Path,
    signals: Signals,
    log_file: Option<telemetry::LogFile>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
        mut usr1,
        mut usr2,
    } = signals;
    let mut api = running.take_reload_requests();
    let mut upgrades = running.take_upgrade_requests();
    let mut handed_over = false;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr2.recv() => {
                if upgrade_process(&mut running, None).await.is_ok() {
                    handed_over = true;
                    break;
                }
            }
            Some(req) = async { match upgrades.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                let result = upgrade_process(&mut running, req.binary).await;
                let ok = result.is_ok();
                let _ = req.done.send(result.map_err(gatehouse::admin::reload::UpgradeFailure::new));
                if ok {
                    handed_over = true;
                    break;
                }
            }
            _ = hup.recv() => {
                let _ = reload(&mut running, path, log_file.as_ref()).await;
            }
            _ = usr1.recv() => reopen_log(log_file.as_ref()),
            Some(done) = async { match api.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                let _ = done.send(reload(&mut running, path, log_file.as_ref()).await);
            }
        }
    }
    if let Some(w) = watchdog {
        if handed_over {
            // The successor pings for the service now.
            w.abort();
        }
    }
    if handed_over {
        tracing::info!("handed over: draining this process's sessions; SIGTERM or SIGINT closes them now");
    } else {
        let _ = sdnotify::notify("STOPPING=1");
        tracing::info!("stop requested: no longer accepting; a second SIGTERM or SIGINT closes sessions now");
    }
    let force = running.force_close_token();
    let drain = running.shutdown();
    tokio::pin!(drain);
    // Logrotate may run while sessions drain: keep honouring SIGUSR1 until the end.
    let mut forced = false;
    let report = loop {
        tokio::select! {
            r = &mut drain => break r,
            _ = usr1.recv() => reopen_log(log_file.as_ref()),
            _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } }, if !forced => {
                tracing::info!("second stop signal: closing sessions now");
                force.cancel();
                forced = true;
            }
        }
    };
    tracing::info!(forced = report.forced, "stopped");
}

/// SIGUSR2 or `POST /v1/upgrade`: start the new binary with this process's own arguments and hand it the
/// listeners. A failure leaves this process serving; the reason is logged (and returned to the API).
async fn upgrade_process(
    running: &mut gatehouse::Running,
    binary: Option<PathBuf>,
) -> Result<gatehouse::admin::reload::UpgradeSummary, gatehouse::app::upgrade::UpgradeError> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    running.upgrade(binary, args).await
}

/// SIGHUP or `POST /v1/reload`: validate the whole file first; a bad file leaves the running
/// configuration in force.
async fn reload(
    running: &mut gatehouse::Running,
    path: &std::path::Path,
    log_file: Option<&telemetry::LogFile>,
) -> Result<gatehouse::ReloadSummary, gatehouse::ReloadError> {
    let _ = sdnotify::notify("RELOADING=1");
    let result = match Config::load(path) {
        Err(e) => {
            tracing::error!(error = %e, "reload rejected; keeping the running configuration");
            Err(gatehouse::ReloadError::new(e))
        }
        Ok(cfg) => {
            if cfg.log.file.as_deref() != log_file.map(|f| f.path()) {
                tracing::warn!("log.file changed; the new destination takes effect at the next start");
            }
            running.reload(cfg).await.map_err(|e| {
                tracing::error!(error = %e, "reload failed");
                gatehouse::ReloadError::new(e)
            })
        }
    };
    gatehouse::telemetry::metrics::reload(result.is_ok());
    let _ = sdnotify::notify("READY=1");
    result
}

/// SIGUSR1: reopen the log file at its path, so lines follow a logrotate rename. On failure the current file
/// stays in use and the reason goes to stderr (the log file may be the thing that is broken) and the log.
fn reopen_log(log_file: Option<&telemetry::LogFile>) {
    let Some(f) = log_file else {
        tracing::info!("SIGUSR1: logging to stderr, no log file to reopen");
        return;
    };
    match f.reopen() {
        Ok(()) => tracing::info!(path = %f.path().display(), "log file reopened"),
        Err(e) => {
            eprintln!("error: SIGUSR1: {e}; still writing to the previous log file");
            tracing::error!(error = %e, "log file not reopened; still writing to the previous file");
        }
    }
}
