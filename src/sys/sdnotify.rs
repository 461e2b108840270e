//! systemd readiness notification (`Type=notify`), without a libsystemd dependency: one datagram to
//! `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;

/// Set once this process has made another one the service's main process: from then on it says nothing
/// (systemd would refuse it, and log so). Held while a message is sent, so no watchdog ping can slip out
/// after the `MAINPID=` that hands the service over.
static HANDED_OVER: Mutex<bool> = Mutex::new(false);

/// Sends `state` (e.g. "READY=1") if running under systemd; a no-op otherwise, and after
/// [`hand_over`].
pub fn notify(state: &str) -> std::io::Result<()> {
    let handed_over = HANDED_OVER.lock().unwrap_or_else(|e| e.into_inner());
    if *handed_over {
        return Ok(());
    }
    send(state)
}

/// Makes `pid` (a process this one started) the service's main process (`MAINPID=`), as its last word
/// to systemd: every later [`notify`] of this process, watchdog pings included, is dropped.
pub fn hand_over(pid: u32) -> std::io::Result<()> {
    let mut handed_over = HANDED_OVER.lock().unwrap_or_else(|e| e.into_inner());
    if *handed_over {
        return Ok(());
    }
    *handed_over = true;
    send(&format!("MAINPID={pid}"))
}

fn send(state: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    // Never wait for a reader: a full receive queue is an error to log, not a stalled runtime worker.
    sock.set_nonblocking(true)?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract namespace socket (Linux).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(())
}

/// The watchdog interval systemd asks for (`WatchdogSec=` in the unit, passed as `$WATCHDOG_USEC`), if it
/// is meant for this process (`$WATCHDOG_PID` unset or equal to our pid).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(std::time::Duration::from_micros(usec))
}

/// Under a systemd watchdog (`WatchdogSec=`), sends `WATCHDOG=1` every half interval from a task on the
/// current tokio runtime, so the pings stop, and systemd restarts the service, if the runtime wedges (a
/// worker stuck in a blocking call, a deadlock) even though the process is alive. A no-op without
/// `$WATCHDOG_USEC`. Must be called from within a runtime. Returns the task, for a process that hands
/// the service over to a successor to stop pinging for it.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = watchdog_interval()?;
    let period = (interval / 2).max(std::time::Duration::from_millis(1));
    tracing::debug!(interval_ms = interval.as_millis() as u64, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        // After a stall, ping once now rather than a burst that would hide it.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = notify("WATCHDOG=1") {
                tracing::warn!(error = %e, "cannot send WATCHDOG=1 to systemd");
            }
        }
    }))
}
