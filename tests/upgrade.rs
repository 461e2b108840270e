//! Live upgrade of the real `gatehouse` binary (`gatehouse upgrade`, SIGUSR2): the running process starts
//! a new one and hands it its listening sockets, the new one accepts at once, the old one drains. A
//! client connecting in a loop never sees a refused or slow connect, a session opened before the upgrade
//! stays on the old process, bans survive, systemd hears the new main PID, and a new process that cannot
//! start leaves the old one serving.
//!
//! Every child process is owned by a guard that kills it on drop, and every wait is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::backends::echo_backend_thread;
use support::gateway::RELAXED_KEYS;
use support::net::{free_addr, refused_from};
use support::process::{run_json_command, wait_accepting, Proc, BIN};

const TOKEN: &str = "upgrade-test-token-0123456789abcdef";

/// A gateway's files: one plain TCP peer front relaying to an echo backend, the admin API, a ban journal.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    front: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
        let s = Setup {
            config: dir.path().join("gatehouse.toml"),
            dir,
            front: free_addr(),
            admin: free_addr(),
            backend: echo_backend_thread(),
        };
        s.write("");
        s
    }

    /// Writes the config, with `extra` (more fronts) at the end.
    fn write(&self, extra: &str) {
        let toml = format!(
            "[runtime]\ndrain_deadline = \"30s\"\nupgrade_timeout = \"3s\"\n\n\
             [admission]\n{RELAXED_KEYS}\n\
             [bans]\njournal = \"bans.journal\"\n\n\
             [admin]\nenabled = true\nlisten = \"{}\"\ntoken_file = \"admin.token\"\n\n\
             [[front]]\nname = \"p2p\"\nkind = \"peer\"\nlisten = [\"{}\"]\ntransport = \"tcp\"\n\
             upstreams = [\"{}\"]\n{extra}",
            self.admin, self.front, self.backend
        );
        std::fs::write(&self.config, toml).unwrap();
    }

    /// Adds an Electrum front on `listen` (same echo backend) whose first protocol violation bans.
    fn write_with_electrum(&self, listen: SocketAddr) {
        self.write(&format!(
            "\n[[front]]\nname = \"el\"\nkind = \"electrum\"\nlisten = [\"{listen}\"]\ntransport = \"tcp\"\n\
             upstreams = [\"{}\"]\n",
            self.backend
        ));
        let toml = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace("[bans]\n", "[bans]\nmax_violations = 0\n");
        std::fs::write(&self.config, toml).unwrap();
    }

    fn journal(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bans.journal")).unwrap_or_default()
    }

    /// `gatehouse ARGS… --admin ADDR --token-file FILE`: the CLI reaches the gateway without reading the
    /// config, which a test may have broken on purpose.
    fn cli(&self, args: &[&str]) -> Output {
        let token = self.dir.path().join("admin.token");
        Command::new(BIN)
            .args(args)
            .args([
                "--admin",
                &self.admin.to_string(),
                "--token-file",
                token.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    }

    /// `gatehouse upgrade`; the new process's pid from its answer, or the CLI's stderr.
    fn upgrade(&self, extra: &[&str]) -> Result<i32, String> {
        let mut args = vec!["upgrade"];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        let pid = stdout
            .split_whitespace()
            .skip_while(|w| *w != "pid")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in the CLI's answer: {stdout}"));
        Ok(pid)
    }
}

/// A process of ours that the test did not spawn (the successor of one it did): killed on drop.
struct Successor(i32);

impl Successor {
    /// Running: its pid exists and is not a zombie waiting for its parent.
    fn alive(&self) -> bool {
        // SAFETY: kill(2) with signal 0 only checks that the pid exists; it sends nothing.
        let exists = unsafe { libc::kill(self.0, 0) == 0 };
        exists && !is_zombie(self.0)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a gateway this test started (through its predecessor).
        unsafe { libc::kill(self.0, sig) };
    }

    /// Waits (bounded) for the process to be gone. It is not our child, so its exit is seen by its pid
    /// disappearing (its parent, or init, reaps it).
    fn gone_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

impl Drop for Successor {
    fn drop(&mut self) {
        if self.alive() {
            self.signal(libc::SIGKILL);
        }
    }
}

/// A notify socket the test owns, standing in for systemd's.
struct Notify {
    path: PathBuf,
    rx: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                    return;
                }
            }
        });
        Notify { path, rx, _dir: dir }
    }

    /// Waits (bounded) for a datagram with the line `state`.
    fn wait(&self, state: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(m) if m.lines().any(|l| l == state) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

fn start(setup: &Setup, notify: Option<&Notify>) -> Proc {
    let mut cmd = run_json_command(Command::new(BIN), &setup.config);
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", &n.path);
    }
    let mut p = Proc::new(cmd.spawn().unwrap());
    wait_accepting(&mut p, setup.front);
    wait_accepting(&mut p, setup.admin);
    // Signal handlers are installed before the listeners; the ready line comes after both.
    assert!(
        p.wait_json(Duration::from_secs(10), |v| v["message"] == "gatehouse ready")
            .is_some(),
        "no ready line:\n{}",
        p.log()
    );
    p
}

/// A connection to the front with one echoed line, checked.
fn session(front: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&front, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(echo(&mut s, b"hello\n"), "no echo through the front");
    s
}

fn echo(s: &mut TcpStream, line: &[u8]) -> bool {
    let mut back = vec![0u8; line.len()];
    s.write_all(line).is_ok() && s.read_exact(&mut back).is_ok() && back == line
}

/// What a client connecting in a loop saw.
#[derive(Default, Debug)]
struct LoopReport {
    served: usize,
    refused: usize,
    /// Connects slower than 100 ms, with their duration.
    slow: Vec<Duration>,
    slowest: Duration,
    failed: Vec<String>,
}

/// Connects, sends a line and reads its echo, again and again, until `stop` is set; times each connect.
fn client_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> thread::JoinHandle<LoopReport> {
    thread::spawn(move || {
        let mut r = LoopReport::default();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let t = Instant::now();
            let connected = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
            let took = t.elapsed();
            r.slowest = r.slowest.max(took);
            let mut s = match connected {
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
            if took > Duration::from_millis(100) {
                r.slow.push(took);
            }
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let msg = format!("ping {i}\n");
            if echo(&mut s, msg.as_bytes()) {
                r.served += 1;
            } else {
                r.failed.push(format!("#{i}: no echo"));
            }
            thread::sleep(Duration::from_millis(2));
        }
        r
    })
}

/// Two upgrades in a row under a client connecting in a loop: nothing refused, no connect over 100 ms; a
/// session opened before the first upgrade stays with the first process, which exits once it ends; the
/// second process, with nothing open, finishes its drain at once; a ban made before the upgrades is
/// enforced after them, and the last process journals new bans; systemd is told each new main PID.
#[test]
fn two_upgrades_refuse_nothing_and_the_old_process_keeps_its_session() {
    let setup = Setup::new();
    let notify = Notify::new();
    let mut a = start(&setup, Some(&notify));
    assert!(notify.wait("READY=1", Duration::from_secs(5)));
    let banned = setup.cli(&["bans", "add", "127.0.0.9/32", "--duration", "1h"]);
    assert!(banned.status.success(), "{banned:?}");
    assert!(refused_from("127.0.0.9", setup.front));

    let mut old_session = session(setup.front);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2).map(|_| client_loop(setup.front, stop.clone())).collect();
    thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    let b = Successor(
        setup
            .upgrade(&[])
            .unwrap_or_else(|e| panic!("first upgrade failed: {e}\n{}", a.log())),
    );
    let first_took = t.elapsed();
    assert_ne!(b.0, a.pid());
    assert!(
        notify.wait(&format!("MAINPID={}", b.0), Duration::from_secs(5)),
        "systemd was not told the new main PID {}",
        b.0
    );
    // The new process says READY=1 once it is the main process.
    assert!(notify.wait("READY=1", Duration::from_secs(5)));
    thread::sleep(Duration::from_millis(300));
    // Still served by the first process, which has stopped accepting.
    assert!(
        echo(&mut old_session, b"still here\n"),
        "the old session broke:\n{}",
        a.log()
    );
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "the first process left its session"
    );

    let t = Instant::now();
    let c = Successor(
        setup
            .upgrade(&[])
            .unwrap_or_else(|e| panic!("second upgrade failed: {e}\n{}", a.log())),
    );
    let second_took = t.elapsed();
    assert!(
        notify.wait(&format!("MAINPID={}", c.0), Duration::from_secs(5)),
        "MAINPID={} missing",
        c.0
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<LoopReport> = clients.into_iter().map(|h| h.join().unwrap()).collect();

    // The second process had no session of its own: its drain ends at once.
    assert!(
        b.gone_within(Duration::from_secs(10)),
        "the second process did not exit:\n{}",
        a.log()
    );
    assert!(
        echo(&mut old_session, b"and still\n"),
        "the old session broke:\n{}",
        a.log()
    );
    drop(old_session);
    let st = a.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "the first process did not exit cleanly once its session ended: {st:?}\n{}",
        a.log()
    );

    let served: usize = reports.iter().map(|r| r.served).sum();
    let refused: usize = reports.iter().map(|r| r.refused).sum();
    let slowest = reports.iter().map(|r| r.slowest).max().unwrap();
    let slow: Vec<&Duration> = reports.iter().flat_map(|r| &r.slow).collect();
    let failed: Vec<&String> = reports.iter().flat_map(|r| &r.failed).collect();
    println!(
        "two upgrades ({first_took:?} and {second_took:?} from the CLI's start to its answer): {served} connections \
         served, {refused} refused, slowest connect {slowest:?}, {} failed",
        failed.len()
    );
    assert_eq!(refused, 0, "connections refused during the upgrades");
    assert!(slow.is_empty(), "connects slower than 100 ms: {slow:?}");
    assert!(failed.is_empty(), "connections failed: {failed:?}");
    assert!(served >= 20, "too few connections served: {served}");

    // The ban made before the upgrades holds on the third process; the third one journals new bans.
    assert!(
        refused_from("127.0.0.9", setup.front),
        "the ban did not survive the upgrades"
    );
    assert!(!refused_from("127.0.0.2", setup.front));
    let later = setup.cli(&["bans", "add", "127.0.0.10/32", "--duration", "1h"]);
    assert!(later.status.success(), "{later:?}");
    assert!(refused_from("127.0.0.10", setup.front));
    assert!(setup.journal().contains("127.0.0.10"), "journal: {}", setup.journal());
    assert!(c.alive());
}

/// The new process's config rules: a front it adds is bound by it, one it drops is closed (the old process
/// stopped accepting on it, and the new one closes the socket it was handed), and one it keeps is never bound
/// again.
#[test]
fn fronts_added_or_dropped_by_the_new_config_are_bound_or_closed() {
    let setup = Setup::new();
    let dropped = free_addr();
    let front = |name: &str, addr: SocketAddr| {
        format!(
            "\n[[front]]\nname = \"{name}\"\nkind = \"peer\"\nlisten = [\"{addr}\"]\ntransport = \"tcp\"\nupstreams = [\"{}\"]\n",
            setup.backend
        )
    };
    setup.write(&front("dropped", dropped));
    let mut a = start(&setup, None);
    wait_accepting(&mut a, dropped);

    let added = free_addr();
    setup.write(&front("added", added));
    let b = Successor(
        setup
            .upgrade(&[])
            .unwrap_or_else(|e| panic!("upgrade failed: {e}\n{}", a.log())),
    );
    assert!(
        a.wait_exit(Duration::from_secs(10)).is_some_and(|s| s.success()),
        "{}",
        a.log()
    );
    drop(session(setup.front));
    drop(session(added));
    let refused = TcpStream::connect_timeout(&dropped, Duration::from_secs(2));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused),
        "the dropped front's port is still open: {refused:?}"
    );
    assert!(
        a.wait_line(Duration::from_secs(5), |l| l
            .contains("no front listens on this inherited socket")
            && l.contains(&dropped.to_string()))
            .is_some(),
        "no warning about the dropped front's socket:\n{}",
        a.log()
    );
    assert!(b.alive());
}

/// The old process still bans while it drains (its sessions go on), after it handed the journal over:
/// each such ban reaches the new process, which journals it and refuses the address.
#[test]
fn a_ban_made_by_the_draining_process_reaches_the_new_one() {
    let setup = Setup::new();
    let el = free_addr();
    setup.write_with_electrum(el);
    let mut a = start(&setup, None);
    wait_accepting(&mut a, el);
    // A wallet's session on the old process, from its own address.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 12], 0)).into()).unwrap();
    sock.connect_timeout(&el.into(), Duration::from_secs(2)).unwrap();
    let mut wallet: TcpStream = sock.into();
    wallet.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    let b = Successor(
        setup
            .upgrade(&[])
            .unwrap_or_else(|e| panic!("upgrade failed: {e}\n{}", a.log())),
    );
    assert!(!setup.journal().contains("127.0.0.12"));
    // A line that is not JSON: a violation, and with max_violations = 0 a ban, made by the old process.
    wallet.write_all(b"this is not json\n").unwrap();
    let mut answer = String::new();
    let _ = wallet.read_to_string(&mut answer);
    assert!(
        answer.contains("-32700"),
        "no parse error from the old process: {answer:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !setup.journal().contains("127.0.0.12") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        setup.journal().contains("127.0.0.12"),
        "the new process did not journal the old one's ban: {}\n{}",
        setup.journal(),
        a.log()
    );
    // Journaled first, then in force: wait until the new process lists it, then knock.
    let deadline = Instant::now() + Duration::from_secs(5);
    let listed = || String::from_utf8_lossy(&setup.cli(&["bans", "list", "--json"]).stdout).contains("127.0.0.12");
    while !listed() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        refused_from("127.0.0.12", el),
        "the new process does not enforce the old one's ban"
    );
    assert!(!refused_from("127.0.0.13", el));
    assert!(b.alive());
}

/// A new process that cannot take over leaves the old one serving, and the CLI says why and fails: an
/// invalid config, a binary that does not exist, one that never reports ready, and a config whose new
/// front cannot bind (found only after the journal was handed over: the old process takes it back).
#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let setup = Setup::new();
    let mut a = start(&setup, None);
    let mut s = session(setup.front);

    // 1. Invalid config: the new process refuses it; its reason reaches the CLI.
    let good = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, good.replace("[bans]", "[bans]\nbogus_key = 1")).unwrap();
    let err = setup
        .upgrade(&[])
        .expect_err("an upgrade with an invalid config succeeded");
    assert!(err.contains("bogus_key"), "the CLI does not say why: {err}");
    assert!(err.contains("serves on"), "{err}");
    std::fs::write(&setup.config, &good).unwrap();

    // 2. No such binary.
    let err = setup
        .upgrade(&["--binary", "/nonexistent/gatehouse"])
        .expect_err("an upgrade to a missing binary succeeded");
    assert!(err.contains("cannot start /nonexistent/gatehouse"), "{err}");

    // 3. A binary that never says ready is stopped at runtime.upgrade_timeout (3 s here).
    let hang = setup.dir.path().join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&hang, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let t = Instant::now();
    let err = setup
        .upgrade(&["--binary", hang.to_str().unwrap()])
        .expect_err("an upgrade to a silent binary succeeded");
    assert!(err.contains("did not report ready within 3s"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(15));

    // 4. Valid config, but a new front's port is taken: the new process fails after the journal was
    // handed over, and the old one takes it back.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    setup.write(&format!(
        "\n[[front]]\nname = \"extra\"\nkind = \"peer\"\nlisten = [\"{}\"]\ntransport = \"tcp\"\nupstreams = [\"{}\"]\n",
        taken.local_addr().unwrap(),
        setup.backend
    ));
    let err = setup.upgrade(&[]).expect_err("an upgrade that cannot bind succeeded");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(
        a.wait_json(Duration::from_secs(5), |v| v["message"] == "ban journal taken back")
            .is_some(),
        "{}",
        a.log()
    );

    // Through all of it the old process served: its session, new connections, and its journal.
    assert!(echo(&mut s, b"still\n"), "{}", a.log());
    drop(session(setup.front));
    let banned = setup.cli(&["bans", "add", "127.0.0.11/32", "--duration", "1h"]);
    assert!(banned.status.success(), "{banned:?}");
    assert!(setup.journal().contains("127.0.0.11"), "journal: {}", setup.journal());
    assert!(a.child.try_wait().unwrap().is_none());
    assert!(
        a.seen()
            .iter()
            .any(|l| l.contains("upgrade failed; this process serves on")),
        "no log line for the failure:\n{}",
        a.log()
    );
}

/// SIGUSR2 upgrades to the binary on disk, like `gatehouse upgrade` without arguments. The admin API on a
/// unix socket and the cluster's link listener move to the new process too: the old one leaves the
/// socket's path in place, and the new one binds neither address again.
#[test]
fn sigusr2_hands_over_fronts_a_unix_admin_socket_and_the_cluster_listener() {
    let setup = Setup::new();
    let dir = setup.dir.path();
    let sock = dir.join("admin.sock");
    let link = free_addr();
    let keys: Vec<String> = (0..2)
        .map(|i| {
            gatehouse::cluster::keys::NodeKey::generate_file(&dir.join(format!("node{i}.key")))
                .unwrap()
                .public()
                .to_string()
        })
        .collect();
    let toml = std::fs::read_to_string(&setup.config).unwrap().replace(
        &format!("listen = \"{}\"", setup.admin),
        &format!("listen = \"unix:{}\"", sock.display()),
    ) + &format!(
        "\n[cluster]\nnode_key = \"node0.key\"\nlisten = \"{link}\"\n\
             [[cluster.peers]]\naddr = \"{}\"\nkey = \"{}\"\n",
        free_addr(),
        keys[1]
    );
    std::fs::write(&setup.config, toml).unwrap();
    let mut a = Proc::new(run_json_command(Command::new(BIN), &setup.config).spawn().unwrap());
    wait_accepting(&mut a, setup.front);
    wait_accepting(&mut a, link);
    assert!(a
        .wait_json(Duration::from_secs(10), |v| v["message"] == "gatehouse ready")
        .is_some());

    a.signal(libc::SIGUSR2);
    let line = a
        .wait_json(Duration::from_secs(10), |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("upgrade: the new process accepts"))
        })
        .unwrap_or_else(|| panic!("no hand-over:\n{}", a.log()));
    let b = Successor(line["pid"].as_i64().unwrap() as i32);
    let st = a.wait_exit(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", a.log());

    // Only the new process is left, and it serves every listener.
    drop(session(setup.front));
    TcpStream::connect_timeout(&link, Duration::from_secs(2)).expect("the cluster listener is gone");
    let listed = Command::new(BIN)
        .args([
            "bans",
            "list",
            "--admin",
            &format!("unix:{}", sock.display()),
            "--token-file",
        ])
        .arg(dir.join("admin.token"))
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "admin API over the unix socket after the upgrade: {listed:?}"
    );
    assert!(b.alive());
}
