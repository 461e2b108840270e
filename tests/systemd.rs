//! systemd integration of the `gatehouse` binary: socket activation (listening sockets inherited by the
//! sd_listen_fds protocol, as `gatehouse.socket` hands them over), readiness and watchdog notifications, a
//! binary upgrade that refuses no connection, and `systemd-analyze` on the shipped units.
//!
//! Every child process is owned by a [`Gateway`] guard that kills it on drop, and every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::backends::echo_backend_thread;
use support::gateway::RELAXED_KEYS;
use support::process::{run_json_command, Proc, BIN};

const SYSTEMD_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/// A config with one plain TCP front listening on `listen`, relaying to `upstream`; admission loose
/// enough for a client that connects in a tight loop.
fn write_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> PathBuf {
    let toml = format!(
        "[runtime]\ndrain_deadline = \"3s\"\n\n\
         [admission]\n{RELAXED_KEYS}\n\
         [[front]]\nname = \"p2p\"\nkind = \"peer\"\nlisten = [\"{listen}\"]\ntransport = \"tcp\"\n\
         upstreams = [\"{upstream}\"]\n"
    );
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A `gatehouse run` child started the way systemd starts a socket-activated service: the listening
/// sockets `fds` are descriptors 3, 4, … of the new process, and `LISTEN_PID` / `LISTEN_FDS` name it.
/// It reports to its own `NOTIFY_SOCKET`. Killed on drop.
struct Gateway {
    proc: Proc,
    /// Notifications received on the gateway's NOTIFY_SOCKET with the sender's pid (as systemd reads it,
    /// from SCM_CREDENTIALS), read by a thread so that the gateway never finds the socket's queue full.
    notify: mpsc::Receiver<(i32, String)>,
    _dir: tempfile::TempDir,
}

/// Turns on SO_PASSCRED, so each datagram arrives with its sender's credentials, as on systemd's socket.
fn pass_credentials(sock: &UnixDatagram) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `one`, which lives across the call, on a
    // descriptor `sock` owns.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_PASSCRED: {}", std::io::Error::last_os_error());
}

/// One datagram and the pid that sent it (-1 if no credentials came with it).
fn recv_with_pid(sock: &UnixDatagram, buf: &mut [u8]) -> std::io::Result<(i32, usize)> {
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is a valid empty one; we point it at `iov` (over `buf`) and `control`, both
    // alive and exclusively borrowed for the call, and recvmsg writes within their stated lengths. The
    // control messages are then walked with the CMSG macros within msg_controllen, and the ucred read
    // unaligned from a SCM_CREDENTIALS message, which the kernel sizes for one.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut pid = -1;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                pid = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>()).pid;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((pid, n as usize))
    }
}

impl Gateway {
    fn start(config: &Path, fds: &[RawFd], watchdog_usec: Option<u64>) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&notify_path).unwrap();
        pass_credentials(&sock);
        let (ntx, notify) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((pid, n)) = recv_with_pid(&sock, &mut buf) {
                if ntx
                    .send((pid, String::from_utf8_lossy(&buf[..n]).into_owned()))
                    .is_err()
                {
                    return;
                }
            }
        });
        let fds: Vec<RawFd> = fds.to_vec();
        // LISTEN_PID must be the gateway's pid, which is not known before the fork and cannot be put into
        // the environment from `pre_exec` (setenv is not async-signal-safe). `sh` sets it to its own pid
        // (`$$`) and `exec`s the gateway, which keeps that pid.
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c")
            .arg(format!(
                "export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES=p2p; exec \"$0\" \"$@\"",
                fds.len()
            ))
            .arg(BIN);
        let mut cmd = run_json_command(sh, config);
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .env_remove("WATCHDOG_PID")
            .env_remove("WATCHDOG_USEC");
        if let Some(us) = watchdog_usec {
            cmd.env("WATCHDOG_USEC", us.to_string());
        }
        // Moved out of the way first (to descriptors above the targets), so that placing one socket at its
        // target never overwrites another source still to be placed. Allocated here, before the fork.
        let n = fds.len() as RawFd;
        let mut moved: Vec<RawFd> = vec![-1; fds.len()];
        // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe calls are
        // allowed. It calls nothing but fcntl(2) and dup2(2), both async-signal-safe, takes no lock and
        // allocates nothing: `fds` and `moved` were allocated before the fork and are only read and
        // overwritten in place. The sources are the test's listeners, open for the whole spawn. Their
        // temporary copies are FD_CLOEXEC (gone at exec); the final copies at 3, 4, … are made by dup2, which
        // leaves FD_CLOEXEC clear, so exactly those survive exec. A descriptor already at 3, 4, … (Rust's
        // exec-error pipe, say) is replaced, which only costs the report of a failed exec of /bin/sh.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &src) in fds.iter().enumerate() {
                    moved[i] = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 3 + n);
                    if moved[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, &tmp) in moved.iter().enumerate() {
                    if libc::dup2(tmp, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn gatehouse via sh");
        Gateway {
            proc: Proc::new(child),
            notify,
            _dir: dir,
        }
    }

    /// Waits (bounded) for the notification `state` (e.g. "READY=1"); counts every one received.
    fn wait_notify(&mut self, state: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.notify.recv_timeout(left) {
                Ok((_, msg)) if msg.lines().any(|l| l == state) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    fn wait_ready(&mut self) {
        if !self.wait_notify("READY=1", Duration::from_secs(20)) {
            let _ = self.proc.child.kill();
            let log = self.proc.stderr_until_eof(Duration::from_secs(2));
            panic!("gateway sent no READY=1 within 20 s; stderr:\n{}", log.join("\n"));
        }
    }

    fn terminate(&self) {
        self.proc.signal(libc::SIGTERM);
    }

    /// Waits (bounded) for a stderr line containing `needle`, among those already seen first.
    fn wait_log(&mut self, needle: &str, limit: Duration) -> Option<String> {
        if let Some(l) = self.proc.seen().iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        self.proc.wait_line(limit, |l| l.contains(needle))
    }
}

/// What a client that connects in a loop saw.
#[derive(Default, Debug)]
struct LoopReport {
    /// Connections that completed an echo round trip.
    served: usize,
    refused: usize,
    /// Any other failure: connect error or timeout, reset, wrong or missing echo.
    failed: Vec<String>,
    /// When each served connection was established (connect returned) and when its echo came back.
    timeline: Vec<(Instant, Instant)>,
}

/// Connects, sends a line and reads its echo, again and again, until `stop` is set.
fn client_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<LoopReport> {
    thread::spawn(move || {
        let mut r = LoopReport::default();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    r.refused += 1;
                    continue;
                }
                Err(e) => {
                    r.failed.push(format!("connect #{i}: {e}"));
                    continue;
                }
            };
            let at = Instant::now();
            let msg = format!("ping {i}\n");
            // Long enough for a connection queued in the backlog while no gateway runs.
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut back = vec![0u8; msg.len()];
            match s.write_all(msg.as_bytes()).and_then(|_| s.read_exact(&mut back)) {
                Ok(()) if back == msg.as_bytes() => {
                    r.served += 1;
                    r.timeline.push((at, Instant::now()));
                }
                Ok(()) => r
                    .failed
                    .push(format!("#{i}: wrong echo {:?}", String::from_utf8_lossy(&back))),
                Err(e) => r.failed.push(format!("#{i}: {e}")),
            }
            thread::sleep(Duration::from_millis(3));
        }
        r
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Socket activation

/// The gateway serves on a listening socket it inherits (LISTEN_PID/LISTEN_FDS), says READY=1 and pings the
/// watchdog. Then the upgrade procedures, with a client connecting in a loop throughout:
/// 1. overlap: a second gateway starts on the same socket, the first gets SIGTERM and drains;
/// 2. restart gap (`systemctl restart` with gatehouse.socket): the gateway stops, nothing runs for a
///    while, a third one starts on the same socket.
///
/// No connection is refused: while no process accepts, the kernel queues connections on the socket, which
/// the supervisor (here the test, under systemd the .socket unit) keeps open.
#[test]
fn inherited_socket_upgrade_refuses_nothing() {
    let backend = echo_backend_thread();
    // The supervisor's socket, as systemd binds it for a ListenStream= line.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), addr, backend);
    let fd = listener.as_raw_fd();

    // The listen address is already bound (by us): the gateway can only start if it uses the inherited
    // socket instead of binding its own.
    let mut a = Gateway::start(&config, &[fd], Some(100_000));
    a.wait_ready();
    assert!(
        a.wait_log("inherited listening sockets", Duration::from_secs(5))
            .is_some(),
        "no socket-activation log line: {:?}",
        a.proc.seen()
    );
    // WATCHDOG_USEC = 100 ms: a ping every 50 ms.
    for n in 0..3 {
        assert!(
            a.wait_notify("WATCHDOG=1", Duration::from_secs(2)),
            "watchdog ping {n} missing"
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2).map(|_| client_loop(addr, stop.clone())).collect();
    thread::sleep(Duration::from_millis(300));

    // 1. Overlap: B joins on the same socket, A drains and exits.
    let mut b = Gateway::start(&config, &[fd], None);
    b.wait_ready();
    thread::sleep(Duration::from_millis(300));
    a.terminate();
    let Some(st) = a.proc.wait_exit(Duration::from_secs(15)) else {
        panic!(
            "first gateway still running 15 s after SIGTERM; stderr:\n{}",
            a.proc.stderr_until_eof(Duration::from_secs(1)).join("\n")
        );
    };
    assert!(st.success(), "first gateway exited with {st:?}");
    thread::sleep(Duration::from_millis(300));

    // 2. Restart gap: B stops, nothing accepts for 700 ms, C starts.
    b.terminate();
    let st = b
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("second gateway still running 15 s after SIGTERM");
    assert!(st.success(), "second gateway exited with {st:?}");
    let gap_start = Instant::now();
    thread::sleep(Duration::from_millis(700));
    let mut c = Gateway::start(&config, &[fd], None);
    c.wait_ready();
    let gap_end = Instant::now();
    thread::sleep(Duration::from_millis(300));

    stop.store(true, Ordering::Relaxed);
    let reports: Vec<LoopReport> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    c.terminate();
    let st = c
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("third gateway did not exit");
    assert!(st.success(), "third gateway exited with {st:?}");

    let served: usize = reports.iter().map(|r| r.served).sum();
    let refused: usize = reports.iter().map(|r| r.refused).sum();
    let failed: Vec<&String> = reports.iter().flat_map(|r| &r.failed).collect();
    // Connected before the gap was half over, served after it: they waited in the backlog while no gateway
    // process ran, and the next one accepted them.
    let mid_gap = gap_start + Duration::from_millis(350);
    let across_gap = reports
        .iter()
        .flat_map(|r| &r.timeline)
        .filter(|&&(connected, served)| connected < mid_gap && served > mid_gap)
        .count();
    println!(
        "upgrade: {served} connections served, {refused} refused, {} failed, {across_gap} waited across the gap \
         (no gateway for {:?})",
        failed.len(),
        gap_end - gap_start
    );
    assert_eq!(refused, 0, "connections refused during the upgrade");
    assert!(failed.is_empty(), "connections failed during the upgrade: {failed:?}");
    assert!(served >= 20, "too few connections served: {served}");
    assert!(
        across_gap >= 1,
        "no connection waited across the gap (clients connect throughout, so one should have been queued)"
    );
}

/// A live upgrade (SIGUSR2) of a socket-activated gateway, as systemd with `NotifyAccess=main` sees it: the
/// old main process's last word is `MAINPID=<new pid>`; before it only the old process speaks, after it
/// only the new one (`READY=1`, then its watchdog pings), although the old one still drains a session. The
/// new process serves the supervisor's socket, and the old one exits once its session ends.
#[test]
fn live_upgrade_moves_the_main_pid_and_only_the_main_process_speaks() {
    let backend = echo_backend_thread();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), addr, backend);
    let mut a = Gateway::start(&config, &[listener.as_raw_fd()], Some(100_000));
    a.wait_ready();
    let a_pid = a.proc.pid();
    assert!(a.wait_notify("WATCHDOG=1", Duration::from_secs(2)));
    // READY=1 is sent just before the signal handlers' task starts waiting; give it a moment.
    thread::sleep(Duration::from_millis(200));
    // A session that keeps the old process draining (and silent) while the new one speaks.
    let mut old = TcpStream::connect(addr).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut back = [0u8; 6];
    old.write_all(b"first\n").unwrap();
    old.read_exact(&mut back).unwrap();
    a.proc.signal(libc::SIGUSR2);

    let mut seen: Vec<(i32, String)> = Vec::new();
    let mut moved = None;
    let mut until = Instant::now() + Duration::from_secs(10);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(m) = a.notify.recv_timeout(left) else { break };
        if moved.is_none() && m.1.starts_with("MAINPID=") {
            moved = Some(seen.len());
            // Long enough for READY=1 and several pings (every 50 ms) from the new main process.
            until = Instant::now() + Duration::from_millis(1000);
        }
        seen.push(m);
    }
    let at = moved.unwrap_or_else(|| panic!("no MAINPID= among {seen:?}\n{}", a.proc.log()));
    let b_pid: i32 = seen[at].1.trim_start_matches("MAINPID=").trim().parse().unwrap();
    let _b = Pid(b_pid);
    assert_ne!(b_pid, a_pid);
    assert_eq!(seen[at].0, a_pid, "MAINPID= must come from the main process: {seen:?}");
    for (pid, m) in &seen[..at] {
        assert_eq!(*pid, a_pid, "{m:?} from {pid} before the main PID moved: {seen:?}");
    }
    for (pid, m) in &seen[at + 1..] {
        assert_eq!(
            *pid, b_pid,
            "{m:?} from {pid} after the main PID moved to {b_pid}: {seen:?}"
        );
    }
    let after: Vec<&str> = seen[at + 1..].iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(after.first(), Some(&"READY=1"), "{after:?}");
    assert!(after.iter().filter(|m| **m == "WATCHDOG=1").count() >= 3, "{after:?}");

    assert!(
        a.proc.child.try_wait().unwrap().is_none(),
        "the first process did not wait for its session"
    );
    old.write_all(b"again\n").unwrap();
    old.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"again\n");
    drop(old);
    let st = a.proc.wait_exit(Duration::from_secs(15));
    assert!(
        st.is_some_and(|s| s.success()),
        "first process: {st:?}\n{}",
        a.proc.log()
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"after\n").unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after\n");
}

/// A gateway this test did not spawn itself (the successor of one it did): killed on drop.
struct Pid(i32);

impl Drop for Pid {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid a gateway of this test reported as its successor.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// An inherited socket that no front listens on is closed with a warning; the others are used.
#[test]
fn unused_inherited_socket_is_closed_with_a_warning() {
    let backend = echo_backend_thread();
    let used = TcpListener::bind("127.0.0.1:0").unwrap();
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), used.local_addr().unwrap(), backend);
    let mut g = Gateway::start(&config, &[used.as_raw_fd(), unused.as_raw_fd()], None);
    g.wait_ready();
    // `gatehouse run` installs its SIGTERM handler just after READY=1; give it a moment before the
    // SIGTERM below (a SIGTERM in between would kill it instead of draining).
    thread::sleep(Duration::from_millis(200));
    let line = g
        .wait_log("no front listens on this inherited socket", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no warning about the unused socket: {:?}", g.proc.seen()));
    assert!(
        line.contains(&unused.local_addr().unwrap().to_string()),
        "warning does not name the unused socket's address: {line}"
    );
    let mut s = TcpStream::connect(used.local_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello\n");
    g.terminate();
    let st = g.proc.wait_exit(Duration::from_secs(15));
    assert!(
        st.is_some_and(|s| s.success()),
        "exit {st:?}; stderr:\n{}",
        g.proc.stderr_until_eof(Duration::from_secs(1)).join("\n")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// systemd-analyze

/// Copies the shipped units to a temporary directory with ExecStart pointing at the built binary
/// (`verify` checks that the executable exists).
fn units_for_analysis() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for unit in ["gatehouse.service", "gatehouse.socket"] {
        let text = std::fs::read_to_string(Path::new(SYSTEMD_DIR).join(unit)).unwrap();
        std::fs::write(dir.path().join(unit), text.replace("/usr/local/bin/gatehouse", BIN)).unwrap();
    }
    dir
}

fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        println!("SKIPPED: systemd-analyze is not installed; the units were not verified");
    }
    found.then_some("systemd-analyze")
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let Some(tool) = systemd_analyze() else { return };
    let dir = units_for_analysis();
    let out = Command::new(tool)
        .current_dir(dir.path())
        .args(["verify", "./gatehouse.socket", "./gatehouse.service"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify failed:\n{text}");
    // Complaints about our units name them; anything else comes from the host's own units.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("gatehouse.s")).collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complains:\n{}",
        ours.join("\n")
    );
}

#[test]
fn systemd_analyze_security_exposure_is_at_most_2() {
    let Some(tool) = systemd_analyze() else { return };
    let dir = units_for_analysis();
    let out = Command::new(tool)
        .current_dir(dir.path())
        .args(["security", "--offline=yes", "./gatehouse.service"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let Some(line) = text.lines().find(|l| l.contains("Overall exposure level")) else {
        println!("SKIPPED: this systemd-analyze has no offline security analysis:\n{text}");
        return;
    };
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    println!("{}", line.trim());
    assert!(score <= 2.0, "exposure {score} above 2.0:\n{text}");
}
