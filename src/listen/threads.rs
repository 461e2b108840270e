//! Intake on threads of its own, at a lower priority than the sessions.
//!
//! Accepting a connection, reading its PROXY header and completing its TLS handshake cost far more CPU than
//! answering one request (a handshake is a key exchange and a signature). On the workers, a flood of
//! connects or a wave of reconnects queues that work ahead of the established wallets' next reads. Here
//! every listener is also accepted on each intake thread, each a small runtime of its own with a higher
//! nice value: when the machine is busy the kernel runs the sessions first, new connections get the time
//! left (and the listen backlog holds them meanwhile), and when it is not, nothing waits. A connection
//! that completes its intake is handed to the workers, where its session runs.

use std::io;
use std::sync::mpsc;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Default `runtime.intake_threads`.
pub const DEFAULT_INTAKE_THREADS: usize = 1;
/// Most intake threads: handshakes beyond a few cores' worth would starve the sessions they feed.
pub const MAX_INTAKE_THREADS: usize = 64;
/// Default `runtime.intake_nice`: the kernel's scheduler then gives a busy session thread about nine
/// times an intake thread's CPU when both want it, and an intake thread everything the sessions leave.
pub const DEFAULT_INTAKE_NICE: i32 = 10;
/// The highest nice value Linux knows.
pub const MAX_NICE: i32 = 19;

/// `runtime.intake_threads` and `runtime.intake_nice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntakeSettings {
    /// 0: intake runs on the workers, beside the sessions.
    pub threads: usize,
    pub nice: i32,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        IntakeSettings {
            threads: DEFAULT_INTAKE_THREADS,
            nice: DEFAULT_INTAKE_NICE,
        }
    }
}

/// The running intake threads; they end when this is dropped.
pub struct IntakeThreads {
    runtimes: Vec<Handle>,
    stop: CancellationToken,
}

impl IntakeThreads {
    /// Starts the threads; `None` when the settings keep intake on the workers.
    pub fn start(settings: IntakeSettings) -> io::Result<Option<IntakeThreads>> {
        if settings.threads == 0 {
            return Ok(None);
        }
        // Built first, so that a thread failing to start ends the ones already running (on drop).
        let mut this = IntakeThreads {
            runtimes: Vec::with_capacity(settings.threads),
            stop: CancellationToken::new(),
        };
        for i in 0..settings.threads {
            let (tx, rx) = mpsc::channel();
            let stop = this.stop.clone();
            let nice = settings.nice;
            std::thread::Builder::new()
                .name(format!("gh-intake-{i}"))
                .spawn(move || {
                    if nice != 0 {
                        if let Err(e) = crate::sys::priority::set_this_thread_nice(nice) {
                            tracing::warn!(nice, error = %e, "cannot lower the intake thread's priority");
                        }
                    }
                    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    // The runtime, and every handshake still on it, ends with the gateway.
                    rt.block_on(stop.cancelled());
                })?;
            let handle = rx
                .recv()
                .map_err(|_| io::Error::other("the intake thread ended before its runtime started"))??;
            this.runtimes.push(handle);
        }
        Ok(Some(this))
    }

    /// Runs `accept` on every intake thread, each over its own copy of `listener` (a duplicate descriptor
    /// registered with that thread's runtime; the kernel hands each connection to one of them). On an
    /// error nothing is started and `listener` is still the caller's.
    pub fn spawn_accept<F, Fut>(&self, listener: &TcpListener, accept: F) -> io::Result<Vec<JoinHandle<()>>>
    where
        F: Fn(TcpListener) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let copies = self
            .runtimes
            .iter()
            .map(|_| std::os::fd::AsFd::as_fd(listener).try_clone_to_owned())
            .collect::<io::Result<Vec<_>>>()?;
        let mut registered = Vec::with_capacity(copies.len());
        for (rt, fd) in self.runtimes.iter().zip(copies) {
            let _in = rt.enter();
            registered.push((rt, TcpListener::from_std(std::net::TcpListener::from(fd))?));
        }
        Ok(registered.into_iter().map(|(rt, l)| rt.spawn(accept(l))).collect())
    }
}

impl Drop for IntakeThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
