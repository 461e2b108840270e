//! Command line only; all behaviour lives in the library.

use clap::{Parser, Subcommand, ValueEnum};
use gatehouse::config::{Config, LogFormat};
use gatehouse::{sdnotify, telemetry, Gatehouse};
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
    },
    /// Start a self-contained demo: gateway, self-signed certificate and sample Electrum backend on loopback.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Run { config, log_format } => run(&config, log_format),
        Cmd::Demo => ExitCode::from(gatehouse::demo::run() as u8),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            println!("{}: ok", path.display());
            for f in &cfg.fronts {
                let listen: Vec<String> = f.listen.iter().map(|a| a.to_string()).collect();
                let up: Vec<String> = f.upstreams.iter().map(|a| a.to_string()).collect();
                println!(
                    "  front {:<16} {:?}/{:?}  listen {}  → {}{}{}",
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
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, log_format: Option<Format>) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let format = match log_format {
        Some(Format::Json) => LogFormat::Json,
        Some(Format::Human) => LogFormat::Human,
        None => cfg.log.format.clone(),
    };
    telemetry::init(&format, &cfg.log.level);
    raise_nofile(cfg.runtime.max_open_files);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.runtime.worker_threads > 0 {
        rt.worker_threads(cfg.runtime.worker_threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running = match Gatehouse::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "start failed");
                return ExitCode::FAILURE;
            }
        };
        let _ = sdnotify::notify("READY=1");
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "gatehouse ready");
        wait_and_drain(running).await;
        ExitCode::SUCCESS
    })
}

async fn wait_and_drain(running: gatehouse::Running) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            tracing::error!("cannot install signal handlers");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => tracing::warn!("SIGHUP received: configuration reload is not implemented yet; keeping the running configuration"),
        }
    }
    let _ = sdnotify::notify("STOPPING=1");
    tracing::info!("stop requested: no longer accepting; a second SIGTERM or SIGINT closes sessions now");
    let force = running.force_close_token();
    let drain = running.shutdown();
    tokio::pin!(drain);
    let report = tokio::select! {
        r = &mut drain => r,
        _ = async { tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} } } => {
            tracing::info!("second stop signal: closing sessions now");
            force.cancel();
            drain.await
        }
    };
    tracing::info!(forced = report.forced, "stopped");
}

/// Wallet gateways hold thousands of sockets; the usual soft limit of 1024 would refuse them.
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass, which lives on this stack frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("cannot raise the open-file limit to {want}");
            }
        }
    }
}
