//! The real binary as a child process: its stderr read line by line, waiting for it to listen, signals.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// `gatehouse run -c CONFIG --log-format json` as the arguments of `cmd`: the binary itself, or a shell
/// given `-c SCRIPT BIN` that ends in `exec "$0" "$@"`. None of the variables that change how the gateway
/// starts or logs is inherited from the test's environment (the caller may set them again); stdin and
/// stdout are closed and stderr is piped, for [`Proc::new`].
pub fn run_json_command(mut cmd: Command, config: &Path) -> Command {
    cmd.args(["run", "-c", config.to_str().unwrap(), "--log-format", "json"])
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A running `gatehouse` child. Its stderr is read line by line on a thread; the child is killed on drop.
pub struct Proc {
    pub child: Child,
    lines: Option<mpsc::Receiver<String>>,
    /// Every stderr line received so far.
    seen: Vec<String>,
}

impl Proc {
    /// Starts `gatehouse run -c FILE --log-format json`.
    pub fn run_json(config: &Path) -> Proc {
        let child = run_json_command(Command::new(BIN), config)
            .spawn()
            .expect("spawn gatehouse run");
        Proc::new(child)
    }

    /// Wraps a child whose stderr is piped.
    pub fn new(mut child: Child) -> Proc {
        let err = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines: Some(rx),
            seen: Vec::new(),
        }
    }

    /// Every stderr line received so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Waits (bounded) for the next stderr line satisfying `pred`; returns it, or None at the limit or EOF.
    pub fn wait_line(&mut self, limit: Duration, mut pred: impl FnMut(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        let rx = self.lines.as_ref()?;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits (bounded) for a JSON log line whose object satisfies `pred`.
    pub fn wait_json(
        &mut self,
        limit: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let line = self.wait_line(limit, |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| pred(&v))
        })?;
        serde_json::from_str(&line).ok()
    }

    /// Collects the lines already received without waiting, so `log()` shows them.
    pub fn drain_lines(&mut self) {
        if let Some(rx) = &self.lines {
            while let Ok(line) = rx.try_recv() {
                self.seen.push(line);
            }
        }
    }

    /// Collects the remaining stderr lines until the pipe closes (bounded).
    pub fn stderr_until_eof(&mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        if let Some(rx) = self.lines.take() {
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(line) => self.seen.push(line),
                    Err(_) => break,
                }
            }
        }
        self.seen.clone()
    }

    /// Polls for the child's exit for at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the pid of a child we own and have not reaped (it cannot have been reused).
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}) failed: {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    /// The last lines of the log, for failure messages.
    pub fn log(&mut self) -> String {
        self.drain_lines();
        let from = self.seen.len().saturating_sub(60);
        self.seen[from..].join("\n")
    }

    /// Sends SIGHUP and waits for the reload to be logged as applied (panics if it is rejected).
    pub fn sighup_and_wait_reloaded(&mut self) {
        self.signal(libc::SIGHUP);
        let outcome = self.wait_json(Duration::from_secs(10), |v| {
            v["message"] == "configuration reloaded"
                || v["message"] == "reload rejected; keeping the running configuration"
                || v["message"] == "reload failed"
        });
        if outcome.is_none_or(|v| v["message"] != "configuration reloaded") {
            panic!("SIGHUP reload not applied:\n{}", self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls until `addr` accepts a TCP connection (bounded number of tries); panics with the log otherwise.
pub fn wait_accepting(p: &mut Proc, addr: SocketAddr) {
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            drop(s);
            return;
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            let log = p.stderr_until_eof(Duration::from_secs(2)).join("\n");
            panic!("gatehouse exited early with {status}:\n{log}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("{addr} never accepted a connection:\n{}", p.log());
}
