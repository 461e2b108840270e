//! Tests of the `gatehouse` binary itself: command line, `check` on the shipped examples and on broken
//! configs, the per-connection JSON log line, and the SIGTERM drain.
//!
//! Every child process is owned by a [`Proc`] guard that kills it on drop, and every wait is bounded.

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use std::thread;
use std::time::{Duration, Instant};

mod support;
use support::backends::echo_backend_thread;
use support::clients::http_blocking;
use support::gateway::journaled_ban;
use support::net::{free_port, refused_from};
use support::process::{run_json_command, wait_accepting, Proc, BIN};
use support::tls::localhost_cert;
const CONF_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/// 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in config:\n{text}"))
        + 1
}

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs the binary to completion with a bounded wait; `args` must make it exit by itself.
fn run_to_end(args: &[&str], limit: Duration) -> Outcome {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gatehouse");
    let mut p = Proc::new(child);
    let out = p.child.stdout.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(out).read_to_string(&mut s);
        s
    });
    let status = p
        .wait_exit(limit)
        .unwrap_or_else(|| panic!("gatehouse {args:?} still running after {limit:?}"));
    let stdout = out_reader.join().unwrap();
    let stderr = p.stderr_until_eof(Duration::from_secs(5)).join("\n");
    Outcome { status, stdout, stderr }
}

/// Writes `toml` as `dir/gatehouse.toml` and runs `gatehouse check -c` on it.
fn check_text(dir: &Path, toml: &str) -> (PathBuf, Outcome) {
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, toml).unwrap();
    let out = run_to_end(&["check", "-c", path.to_str().unwrap()], Duration::from_secs(20));
    (path, out)
}

/// Asserts that `check` refused `toml` with `FILE:LINE: KEY: …reason…` on stderr.
fn assert_check_error(toml: &str, key: &str, line: usize, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (path, out) = check_text(dir.path(), toml);
    assert_eq!(
        out.code(),
        Some(1),
        "check should fail for {key}\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let prefix = format!("{}:{line}: {key}: ", path.display());
    assert!(
        out.stderr.contains(&prefix),
        "stderr lacks `{prefix}` (file, line, key)\nstderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(reason),
        "stderr lacks `{reason}`\nstderr: {}",
        out.stderr
    );
    assert!(
        out.stdout.trim().is_empty(),
        "nothing on stdout on error: {}",
        out.stdout
    );
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to gateway");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `msg` and expects exactly it back within the read timeout.
fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).is_ok() && back == msg
}

/// True once the peer has closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    let start = Instant::now();
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

/// A config with one plain TCP peer front on `listen` in front of `upstream`.
fn tcp_config(listen: SocketAddr, upstream: SocketAddr, extra_top: &str) -> String {
    format!(
        "{extra_top}\n[[front]]\nname = \"relay\"\nkind = \"peer\"\nlisten = [\"{listen}\"]\ntransport = \"tcp\"\nupstreams = [\"{upstream}\"]\n"
    )
}

/// The valid base used by the error tests: one TLS front with certs from `dir`, admission lists and timeouts.
fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        r#"[runtime]
drain_deadline = "5s"

[[front]]
name = "wallets"
kind = "electrum"
listen = ["127.0.0.1:50002",
          "[::1]:50002"]
transport = "tls"
upstreams = ["127.0.0.1:50001"]

[front.tls]
cert = "{cert}"
key = "{key}"

[front.admission]
deny = ["203.0.113.0/24",
        "198.51.100.0/24"]

[front.timeouts]
handshake = "10s"
idle = "10m"

[[front]]
name = "p2p"
kind = "peer"
listen = ["127.0.0.1:9338"]
transport = "tcp"
upstreams = ["127.0.0.1:19338"]
"#,
        cert = cert.display(),
        key = key.display()
    )
}

// ---------------------------------------------------------------------------------------------------------------
// Command line

#[test]
fn version_prints_the_crate_version() {
    let out = run_to_end(&["--version"], Duration::from_secs(20));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout.trim(), format!("gatehouse {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_a_valid_config_and_summarises_fronts() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    // Loopback fronts with private clients grouped: nothing to warn about either.
    let text = format!(
        "[cost]
group_private = true

{}",
        tls_config(&cert, &key)
    );
    let (path, out) = check_text(dir.path(), &text);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stdout.contains(&format!("{}: ok", path.display())),
        "{}",
        out.stdout
    );
    let wallets = out
        .stdout
        .lines()
        .find(|l| l.contains("front wallets"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(wallets.contains("127.0.0.1:50002, [::1]:50002"), "{wallets}");
    assert!(wallets.contains("127.0.0.1:50001"), "{wallets}");
    assert!(out.stdout.contains("front p2p"), "{}", out.stdout);
    assert!(out.stderr.trim().is_empty(), "stderr: {}", out.stderr);
}

// ---------------------------------------------------------------------------------------------------------------
// The shipped examples

/// Replaces every absolute path in quotes with a file in `dir`: `*key*` names become the key and other
/// `.pem`/`.crt` names the certificate of a pair generated per source folder (so cert and key that sit
/// together still match), names without an extension an empty folder, and anything else a CIDR list file;
/// REST path prefixes stay.
fn localise_paths(text: &str, dir: &Path) -> String {
    let mut pairs: HashMap<String, (PathBuf, PathBuf)> = HashMap::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("\"/") {
        let Some(len) = rest[start + 1..].find('"') else { break };
        let orig = &rest[start + 1..start + 1 + len];
        if orig.starts_with("/rest/") {
            // An API front's REST path prefix, not a file.
            out.push_str(&rest[..start + 1 + len]);
            rest = &rest[start + 1 + len..];
            continue;
        }
        let p = Path::new(orig);
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parent = p.parent().map(|d| d.display().to_string()).unwrap_or_default();
        let n = pairs.len();
        let local = if !name.contains('.') {
            // A folder (the ACME state folder): made empty.
            let d = dir.join(format!("dir-{}", out.len()));
            std::fs::create_dir_all(&d).unwrap();
            d
        } else if name.contains("key") || name.ends_with(".pem") || name.ends_with(".crt") {
            let (cert, key) = pairs
                .entry(parent)
                .or_insert_with(|| {
                    let (cert, key, _) = localhost_cert(dir, &format!("pair{n}"));
                    (cert, key)
                })
                .clone();
            if name.contains("key") {
                key
            } else {
                cert
            }
        } else {
            let f = dir.join(format!("list-{}-{name}", out.len()));
            std::fs::write(
                &f,
                "# generated by tests/cli.rs\n192.0.2.1\n2001:db8:1::/48  # a comment\n\n",
            )
            .unwrap();
            f
        };
        out.push_str(&rest[..start + 1]);
        out.push_str(&local.display().to_string());
        rest = &rest[start + 1 + len..];
    }
    out.push_str(rest);
    out
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(CONF_DIR)
        .expect("conf/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn shipped_examples_pass_check() {
    let files = example_files();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["gatehouse.toml", "kevacoin-electrumx.toml", "validator-peer.toml"] {
        assert!(names.iter().any(|n| n == want), "conf/{want} missing (have {names:?})");
    }
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let local = localise_paths(&text, dir.path());
        assert!(
            !local.contains("\"/etc/"),
            "a path was left unrewritten in {}",
            file.display()
        );
        let (_, out) = check_text(dir.path(), &local);
        assert_eq!(
            out.code(),
            Some(0),
            "{} fails check:\n{}\n{}",
            file.display(),
            out.stderr,
            out.stdout
        );
        // Every front of the example appears in the summary.
        let fronts = text.lines().filter(|l| l.trim() == "[[front]]").count();
        assert!(fronts > 0, "{} has no front", file.display());
        assert_eq!(
            out.stdout
                .lines()
                .filter(|l| l.trim_start().starts_with("front "))
                .count(),
            fronts,
            "{}:\n{}",
            file.display(),
            out.stdout
        );
    }
}

/// The field names `check` lists in "unknown field `x`, expected one of `a`, `b`" for one table.
fn schema_fields(probe: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = check_text(dir.path(), probe);
    assert_eq!(out.code(), Some(1), "probe accepted:\n{probe}");
    let expected = out
        .stderr
        .split_once("expected")
        .unwrap_or_else(|| panic!("no field list in: {}", out.stderr))
        .1;
    let fields: Vec<String> = expected.split('`').skip(1).step_by(2).map(str::to_string).collect();
    assert!(!fields.is_empty(), "no field list in: {}", out.stderr);
    fields
}

#[test]
fn reference_config_sets_every_option() {
    let text = std::fs::read_to_string(Path::new(CONF_DIR).join("gatehouse.toml")).unwrap();
    let active: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let has = |field: &str| {
        active.iter().any(|l| {
            l.split('=').next().is_some_and(|k| k.trim() == field)
                || (l.starts_with('[') && l.trim_matches(|c| c == '[' || c == ']').rsplit('.').next() == Some(field))
        })
    };
    // One probe per table of the schema: an unknown key there makes `check` list the table's fields.
    let probes = [
        "zzz_probe = 1\n",
        "[runtime]\nzzz_probe = 1\n",
        "[log]\nzzz_probe = 1\n",
        "[admission]\nzzz_probe = 1\n",
        "[bans]\nzzz_probe = 1\n",
        "[admin]\nzzz_probe = 1\n",
        "[limits]\nzzz_probe = 1\n",
        "[cluster]\nzzz_probe = 1\n",
        "[cluster]\n[[cluster.peers]]\nzzz_probe = 1\n",
        "[[feeds]]\nzzz_probe = 1\n",
        "[crowdsec]\nzzz_probe = 1\n",
        "[[front]]\nzzz_probe = 1\n",
        "[[front]]\n[front.tls]\nzzz_probe = 1\n",
        "[[front]]\n[front.tls]\n[[front.tls.sni]]\nzzz_probe = 1\n",
        "[[front]]\n[front.admission]\nzzz_probe = 1\n",
        "[[front]]\n[front.proxy_protocol]\nzzz_probe = 1\n",
        "[[front]]\n[front.upstream]\nzzz_probe = 1\n",
        "[[front]]\n[front.timeouts]\nzzz_probe = 1\n",
        "[[front]]\n[front.api]\nzzz_probe = 1\n",
        "[[front]]\n[front.peer]\nzzz_probe = 1\n",
        "[[front]]\n[front.api]\n[[front.api.users]]\nzzz_probe = 1\n",
        "[[front]]\n[front.api]\n[front.api.fees]\nzzz_probe = 1\n",
        "[[front]]\n[front.api]\n[[front.api.tokens]]\nzzz_probe = 1\n",
        "[acme]\nzzz_probe = 1\n",
        "[acme]\n[[acme.certificate]]\nzzz_probe = 1\n",
        "[[tier]]\nzzz_probe = 1\n",
    ];
    let mut missing = Vec::new();
    for probe in probes {
        for field in schema_fields(probe) {
            if !has(&field) {
                missing.push(format!("{field} (table of probe {probe:?})"));
            }
        }
    }
    assert!(missing.is_empty(), "conf/gatehouse.toml does not set: {missing:#?}");
    // Both admission levels are shown.
    assert!(active.contains(&"[admission]") && active.contains(&"[front.admission]"));
}

// ---------------------------------------------------------------------------------------------------------------
// `check` errors: exit 1, `FILE:LINE: KEY: reason`

/// A tcp front of `kind` on `listen` in front of 127.0.0.1:9, then its `[front.upstream]` body (lines 1–7 are
/// the front's own, the body starts on line 8).
fn budget_front(name: &str, kind: &str, listen: &str, upstream: &str) -> String {
    format!(
        "[[front]]\nname = \"{name}\"\nkind = \"{kind}\"\nlisten = [\"{listen}\"]\ntransport = \"tcp\"\n\
         upstreams = [\"127.0.0.1:9\"]\n[front.upstream]\n{upstream}\n"
    )
}

#[test]
fn check_rejects_bad_in_flight_budgets() {
    let one = |kind, upstream| budget_front("f", kind, "127.0.0.1:0", upstream);
    assert_check_error(
        &one("peer", "max_in_flight = 8"),
        "front[0].upstream.max_in_flight",
        8,
        "only Electrum fronts (kind = \"electrum\") have an in-flight budget",
    );
    assert_check_error(
        &one("peer", "connect_timeout = \"1s\"\nmax_queued = 10"),
        "front[0].upstream.max_queued",
        9,
        "only Electrum fronts",
    );
    assert_check_error(
        &one("electrum", "max_in_flight = 0"),
        "front[0].upstream.max_in_flight",
        8,
        "0 would never let a request through: at least 1",
    );
    assert_check_error(
        &one("electrum", "heavy_in_flight = 0"),
        "front[0].upstream.heavy_in_flight",
        8,
        "at least 1",
    );
    assert_check_error(
        &one("electrum", "max_in_flight = 4\nheavy_in_flight = 5"),
        "front[0].upstream.heavy_in_flight",
        9,
        "5 exceeds max_in_flight = 4",
    );
    assert_check_error(
        &one("electrum", "max_in_flight = \"fast\""),
        "front[0].upstream.max_in_flight",
        8,
        "expected \"auto\", \"off\" or a number of requests",
    );
    assert_check_error(
        &one("electrum", "max_in_flight = \"off\"\nheavy_in_flight = 2"),
        "front[0].upstream.heavy_in_flight",
        9,
        "needs a budget: max_in_flight is \"off\"",
    );
    assert_check_error(
        &one("electrum", "throttled_heavy_in_flight = 0"),
        "front[0].upstream.throttled_heavy_in_flight",
        8,
        "at least 1",
    );
    assert_check_error(
        &one("electrum", "throttled_heavy_in_flight = \"auto\""),
        "front[0].upstream.throttled_heavy_in_flight",
        8,
        "expected \"off\" or a number of requests",
    );
    assert_check_error(
        &one("electrum", "max_in_flight = \"off\"\nthrottled_heavy_in_flight = 1"),
        "front[0].upstream.throttled_heavy_in_flight",
        9,
        "needs a budget: max_in_flight is \"off\"",
    );
    assert_check_error(
        &one("electrum", "throttled_heavy_share = \"12.55%\""),
        "front[0].upstream.throttled_heavy_share",
        8,
        "expected \"off\" or a percentage from \"0.1%\" to \"100%\", not \"12.55%\"",
    );
    assert_check_error(
        &one(
            "electrum",
            "throttled_heavy_in_flight = \"off\"\nthrottled_heavy_share = \"5%\"",
        ),
        "front[0].upstream.throttled_heavy_share",
        9,
        "needs a throttled budget: throttled_heavy_in_flight is \"off\"",
    );
    assert_check_error(
        &one("peer", "throttled_heavy_share = \"5%\""),
        "front[0].upstream.throttled_heavy_share",
        8,
        "only Electrum fronts",
    );
    // Two fronts naming one backend share its budget: they must agree on it.
    let a = budget_front("a", "electrum", "127.0.0.1:0", "max_in_flight = 8");
    let b = budget_front("b", "electrum", "127.0.0.2:0", "max_in_flight = 16");
    assert_check_error(
        &format!("{a}{b}"),
        "front[1].upstreams[0]",
        14,
        "127.0.0.1:9 is also an upstream of front `a`, with other in-flight settings",
    );
    // Agreeing fronts, a peer front on the same backend, and the words pass.
    let b = budget_front("b", "electrum", "127.0.0.2:0", "max_in_flight = 8");
    let p = budget_front("p", "peer", "127.0.0.3:0", "");
    let c = budget_front(
        "c",
        "electrum",
        "127.0.0.4:0",
        "max_in_flight = \"auto\"\nheavy_in_flight = \"auto\"\nthrottled_heavy_in_flight = \"off\"\nthrottled_heavy_share = \"off\"",
    )
    .replace("127.0.0.1:9", "127.0.0.1:10");
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = check_text(dir.path(), &format!("{a}{b}{p}{c}"));
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

#[test]
fn check_rejects_an_unknown_front_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let text = tls_config(&cert, &key).replace("transport = \"tls\"", "transport = \"tls\"\nlistn = [\"127.0.0.1:1\"]");
    assert_check_error(
        &text,
        "front[0].listn",
        line_of(&text, "listn"),
        "unknown field `listn`",
    );
}

#[test]
fn check_rejects_a_top_level_typo() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let text = format!("{}\n[admision]\nmax_connections = 10\n", tls_config(&cert, &key));
    assert_check_error(
        &text,
        "admision",
        line_of(&text, "[admision]"),
        "unknown field `admision`",
    );
}

#[test]
fn check_rejects_a_bad_cidr() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let text = tls_config(&cert, &key).replace("\"198.51.100.0/24\"", "\"198.51.100.0/33\"");
    assert_check_error(
        &text,
        "front[0].admission.deny[1]",
        line_of(&text, "198.51.100.0/33"),
        "prefix length `33` in `198.51.100.0/33` is too long for IPv4",
    );
}

#[test]
fn check_rejects_a_missing_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key, _) = localhost_cert(dir.path(), "server");
    let missing = dir.path().join("missing.crt");
    let text = tls_config(&missing, &key);
    assert_check_error(
        &text,
        "front[0].tls.cert",
        line_of(&text, "cert = "),
        &format!("cannot read certificate file {}", missing.display()),
    );
}

/// A TLS front `main` routing `btc.example.org` to `route`, and an Electrum front `btc` with `btc_listen`
/// and `btc_extra` keys.
fn routed_config(cert: &Path, key: &Path, route: &str, btc_listen: &str, btc_extra: &str) -> String {
    format!(
        "[[front]]\nname = \"main\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tls\"\n\
         upstreams = [\"127.0.0.1:50001\"]\n[front.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[front.tls.sni]]\nname = \"btc.example.org\"\nroute = \"{route}\"\n\n\
         [[front]]\nname = \"btc\"\nkind = \"electrum\"\nlisten = [{btc_listen}]\ntransport = \"tcp\"\n\
         upstreams = [\"127.0.0.1:50011\"]\n{btc_extra}\n",
        cert.display(),
        key.display()
    )
}

#[test]
fn check_validates_sni_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let ok = routed_config(&cert, &key, "btc", "", "");
    let (_, out) = check_text(dir.path(), &ok);
    assert_eq!(
        out.code(),
        Some(0),
        "a routed front without listen addresses is valid: {}",
        out.stderr
    );
    let text = routed_config(&cert, &key, "ltc", "", "");
    assert_check_error(
        &text,
        "front[0].tls.sni[0].route",
        line_of(&text, "route = "),
        "no front is named `ltc`",
    );
    let text = routed_config(&cert, &key, "main", "\"127.0.0.2:0\"", "");
    assert_check_error(
        &text,
        "front[0].tls.sni[0].route",
        line_of(&text, "route = "),
        "a front cannot route to itself",
    );
    // A target that routes again would take a second handshake (and could loop back).
    let (cert2, key2, _) = localhost_cert(dir.path(), "other");
    let chained = format!(
        "{}[[front]]\nname = \"third\"\nkind = \"electrum\"\nlisten = [\"127.0.0.3:0\"]\ntransport = \"tls\"\n\
         upstreams = [\"127.0.0.1:50021\"]\n[front.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[front.tls.sni]]\nname = \"x.example.org\"\nroute = \"main\"\n",
        routed_config(&cert, &key, "btc", "", ""),
        cert2.display(),
        key2.display()
    );
    assert_check_error(
        &chained,
        "front[2].tls.sni[0].route",
        line_of(&chained, "route = \"main\""),
        "`main` routes by SNI itself",
    );
    let peer_tls = routed_config(&cert, &key, "btc", "", "")
        .replace("name = \"btc\"\nkind = \"electrum\"", "name = \"btc\"\nkind = \"peer\"")
        + "[front.peer]\nprotocol = \"tls\"\n";
    assert_check_error(
        &peer_tls,
        "front[0].tls.sni[0].route",
        line_of(&peer_tls, "route = "),
        "routed connections arrive decrypted",
    );
    // One name, two tables: which one would win?
    let twice = routed_config(&cert, &key, "btc", "", "").replace(
        "route = \"btc\"\n",
        "route = \"btc\"\n[[front.tls.sni]]\nname = \"BTC.example.org\"\nroute = \"main\"\n",
    );
    assert_check_error(
        &twice,
        "front[0].tls.sni[1].route",
        line_of(&twice, "route = \"main\""),
        "`BTC.example.org` has an earlier [[front.tls.sni]] table on this front",
    );
    // A front without listen addresses that no route names would serve nothing.
    let text = routed_config(&cert, &key, "btc", "", "")
        .replace("[[front.tls.sni]]\nname = \"btc.example.org\"\nroute = \"btc\"\n", "");
    let (_, out) = check_text(dir.path(), &text);
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(": front[1].listen: at least one listen address is required (a front with none must be"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_rejects_a_key_that_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, _, _) = localhost_cert(dir.path(), "a");
    let (_, key_b, _) = localhost_cert(dir.path(), "b");
    let text = tls_config(&cert_a, &key_b);
    assert_check_error(
        &text,
        "front[0].tls.key",
        line_of(&text, "key = "),
        "does not match certificate",
    );
}

#[test]
fn check_rejects_an_unparsable_duration() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let text = tls_config(&cert, &key).replace("idle = \"10m\"", "idle = \"10 parsecs\"");
    assert_check_error(
        &text,
        "front[0].timeouts.idle",
        line_of(&text, "parsecs"),
        "unknown unit `parsecs` in duration `10 parsecs`",
    );
}

#[test]
fn check_rejects_a_bad_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let text = tls_config(&cert, &key).replace("\"[::1]:50002\"", "\"[::1]\"");
    assert_check_error(
        &text,
        "front[0].listen[1]",
        line_of(&text, "\"[::1]\""),
        "`[::1]` is not an address:port",
    );
}

#[test]
fn check_rejects_a_cluster_cost_expiry_shorter_than_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let node_key = dir.path().join("node.key");
    gatehouse::cluster::keys::NodeKey::generate_file(&node_key).unwrap();
    let text = format!(
        "[cluster]\nnode_key = {:?}\nlisten = \"127.0.0.1:0\"\n\n[cluster.cost]\ninterval = \"2s\"\nexpiry = \"1s\"\n\n{}",
        node_key.display().to_string(),
        tls_config(&cert, &key)
    );
    assert_check_error(
        &text,
        "cluster.cost.expiry",
        line_of(&text, "expiry"),
        "must be longer than cluster.cost.interval",
    );
}

#[test]
fn check_rejects_a_memory_budget_too_small_for_one_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let text = format!("[limits]\nmemory_budget = \"64KiB\"\n\n{}", tls_config(&cert, &key));
    assert_check_error(
        &text,
        "limits.memory_budget",
        line_of(&text, "memory_budget"),
        "64KiB is too small: at least 1MiB",
    );
}

#[test]
fn check_rejects_a_line_grace_shorter_than_a_second() {
    let backend = echo_backend_thread();
    let text = format!(
        "[[front]]\nname = \"wallets\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
         upstreams = [\"{backend}\"]\n[front.electrum]\nline_grace = \"200ms\"\n"
    );
    assert_check_error(
        &text,
        "front[0].electrum.line_grace",
        line_of(&text, "line_grace"),
        "must be at least 1s",
    );
}

#[test]
fn check_rejects_a_nesting_limit_below_2() {
    let text = "[[front]]\nname = \"el\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
                upstreams = [\"127.0.0.1:50001\"]\n\n[front.electrum]\nmax_nesting = 1\n";
    assert_check_error(
        text,
        "front[0].electrum.max_nesting",
        line_of(text, "max_nesting"),
        "must be at least 2",
    );
}

#[test]
fn check_reports_an_unreadable_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let out = run_to_end(&["check", "-c", path.to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr.contains(&format!("{}: cannot read", path.display())),
        "{}",
        out.stderr
    );
}

/// `tls_config` from a fresh folder with `edit` applied; the folder must outlive the check.
fn edited_tls_config(dir: &Path, edit: impl FnOnce(String) -> String) -> String {
    let (cert, key, _) = localhost_cert(dir, "server");
    edit(tls_config(&cert, &key))
}

#[test]
fn check_rejects_an_address_next_to_the_wildcard_on_its_port() {
    let dir = tempfile::tempdir().unwrap();
    // The wildcard takes port 9338 on every IPv4 address, so binding 127.0.0.1:9338 as well fails at start.
    let text = edited_tls_config(dir.path(), |t| {
        t.replace(
            "listen = [\"127.0.0.1:9338\"]",
            "listen = [\"0.0.0.0:9338\", \"127.0.0.1:9338\"]",
        )
    });
    assert_check_error(
        &text,
        "front[1].listen[1]",
        line_of(&text, "\"0.0.0.0:9338\""),
        "127.0.0.1:9338 cannot be bound next to 0.0.0.0:9338 (front `p2p`)",
    );
}

#[test]
fn check_rejects_the_ipv6_wildcard_next_to_an_address_on_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let text = edited_tls_config(dir.path(), |t| {
        t.replace("listen = [\"127.0.0.1:9338\"]", "listen = [\"[::]:50002\"]")
    });
    assert_check_error(
        &text,
        "front[1].listen[0]",
        line_of(&text, "\"[::]:50002\""),
        "[::]:50002 cannot be bound next to [::1]:50002 (front `wallets`)",
    );
}

#[test]
fn check_rejects_a_front_on_the_admin_address() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let text = edited_tls_config(dir.path(), |t| {
        format!(
            "[admin]\nenabled = true\nlisten = \"127.0.0.1:9338\"\ntoken_file = \"{}\"\n\n{t}",
            token.display()
        )
    });
    assert_check_error(
        &text,
        "front[1].listen[0]",
        line_of(&text, "listen = [\"127.0.0.1:9338\"]"),
        "127.0.0.1:9338 takes the admin API's address (admin.listen = 127.0.0.1:9338)",
    );
}

#[test]
fn check_rejects_a_ban_journal_in_a_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("absent").join("bans.journal");
    let text = edited_tls_config(dir.path(), |t| {
        format!("[bans]\njournal = \"{}\"\n\n{t}", journal.display())
    });
    assert_check_error(
        &text,
        "bans.journal",
        line_of(&text, "journal ="),
        &format!("folder {} does not exist", dir.path().join("absent").display()),
    );
}

#[test]
fn check_rejects_a_ban_journal_in_a_folder_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    // sysfs takes no new files, not even from root (the tests may run as root, which ignores modes).
    let text = edited_tls_config(dir.path(), |t| {
        format!("[bans]\njournal = \"/sys/bans.journal\"\n\n{t}")
    });
    assert_check_error(
        &text,
        "bans.journal",
        line_of(&text, "journal ="),
        "cannot create files in /sys",
    );
}

/// `tls_config` with `setting` in the wallets front's `[front.electrum]`.
fn with_electrum_setting(dir: &Path, setting: &str) -> String {
    edited_tls_config(dir, |t| {
        t.replace(
            "idle = \"10m\"\n",
            &format!("idle = \"10m\"\n\n[front.electrum]\n{setting}\n"),
        )
    })
}

#[test]
fn check_rejects_a_zero_max_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = with_electrum_setting(dir.path(), "max_line = \"0B\"");
    assert_check_error(
        &text,
        "front[0].electrum.max_line",
        line_of(&text, "max_line"),
        "0B is below the smallest useful value, 128B",
    );
}

#[test]
fn check_rejects_a_zero_max_pending_output() {
    let dir = tempfile::tempdir().unwrap();
    let text = with_electrum_setting(dir.path(), "max_pending_output = \"0B\"");
    assert_check_error(
        &text,
        "front[0].electrum.max_pending_output",
        line_of(&text, "max_pending_output"),
        "0B is below the smallest useful value, 64KiB",
    );
}

#[test]
fn check_rejects_max_connections_of_zero() {
    let dir = tempfile::tempdir().unwrap();
    let text = edited_tls_config(dir.path(), |t| format!("[admission]\nmax_connections = 0\n\n{t}"));
    assert_check_error(
        &text,
        "admission.max_connections",
        line_of(&text, "max_connections = 0"),
        "must be at least 1 (0 would refuse every connection)",
    );
}

#[test]
fn check_rejects_an_unbounded_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    let text = edited_tls_config(dir.path(), |t| {
        t.replace(
            "drain_deadline = \"5s\"",
            "drain_deadline = \"5s\"\nworker_threads = 100000",
        )
    });
    assert_check_error(
        &text,
        "runtime.worker_threads",
        line_of(&text, "worker_threads"),
        "100000 is more than 1024 threads (0 = one per core)",
    );
}

#[test]
fn check_rejects_bad_intake_threads_and_nice_values() {
    let dir = tempfile::tempdir().unwrap();
    let with = |key: &str| {
        edited_tls_config(dir.path(), |t| {
            t.replace("drain_deadline = \"5s\"", &format!("drain_deadline = \"5s\"\n{key}"))
        })
    };
    let text = with("intake_threads = 65");
    assert_check_error(
        &text,
        "runtime.intake_threads",
        line_of(&text, "intake_threads"),
        "65 is more than 64 threads (0 = accept and handshake on the workers)",
    );
    for bad in ["20", "-1"] {
        let text = with(&format!("intake_nice = {bad}"));
        assert_check_error(
            &text,
            "runtime.intake_nice",
            line_of(&text, "intake_nice"),
            &format!("{bad} is not a nice value from 0 (the workers' priority) to 19 (the lowest)"),
        );
    }
}

#[test]
fn check_warns_when_every_electrum_client_arrives_from_loopback() {
    let dir = tempfile::tempdir().unwrap();
    // tls_config's only Electrum front listens on 127.0.0.1 and ::1 and takes no PROXY headers.
    let base = edited_tls_config(dir.path(), |t| t);
    let (path, out) = check_text(dir.path(), &base);
    assert_eq!(out.code(), Some(0), "a warning is not an error: {}", out.stderr);
    assert!(out.stdout.contains(": ok"), "{}", out.stdout);
    let warning = format!("warning: {}: cost.group_private: ", path.display());
    assert!(
        out.stderr.contains(&warning),
        "stderr lacks `{warning}`: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("fresh cost budget each time it reconnects"),
        "{}",
        out.stderr
    );
    // What takes the warning away: PROXY intake, grouping private clients, or a listener reachable from
    // outside the host.
    for fix in [
        base.replace(
            "[front.timeouts]\nhandshake",
            "[front.proxy_protocol]\naccept_from = [\"127.0.0.9\"]\n\n[front.timeouts]\nhandshake",
        ),
        format!("[cost]\ngroup_private = true\n\n{base}"),
        base.replace("\"127.0.0.1:50002\"", "\"0.0.0.0:50002\""),
    ] {
        let (_, out) = check_text(dir.path(), &fix);
        assert_eq!(out.code(), Some(0), "{}", out.stderr);
        assert!(!out.stderr.contains("warning"), "{fix}\nwarned: {}", out.stderr);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// `run`

#[test]
fn run_with_a_bad_config_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let text = tcp_config("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), "")
        .replace("transport = \"tcp\"", "transport = \"udp\"");
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, &text).unwrap();
    let out = run_to_end(&["run", "-c", path.to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    let prefix = format!("{}:{}: front[0].transport: ", path.display(), line_of(&text, "udp"));
    assert!(out.stderr.contains(&prefix), "stderr lacks `{prefix}`: {}", out.stderr);
    assert!(out.stderr.contains("unknown variant `udp`"), "{}", out.stderr);
}

#[test]
fn run_logs_sessions_as_json_and_drains_on_sigterm() {
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(
        &path,
        tcp_config(listen, backend, "[runtime]\ndrain_deadline = \"2s\"\n"),
    )
    .unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);

    // One session: echo through the relay, close from the client side, find its log line.
    let mut s = connect(listen);
    let local = s.local_addr().unwrap().to_string();
    let msg = b"blockchain.headers.subscribe\n";
    assert!(echoes(&mut s, msg), "no echo through the gateway:\n{}", gw.log());
    s.shutdown(Shutdown::Write).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "session not closed after client EOF"
    );
    drop(s);
    let line = gw
        .wait_json(Duration::from_secs(10), |v| v["client"] == local.as_str())
        .unwrap_or_else(|| panic!("no JSON close line for {local}:\n{}", gw.log()));
    assert_eq!(line["front"], "relay", "{line}");
    assert_eq!(line["bytes_in"], msg.len() as u64, "{line}");
    assert_eq!(line["bytes_out"], msg.len() as u64, "{line}");
    assert!(line["duration_ms"].is_u64(), "{line}");
    assert_eq!(line["reason"], "client closed", "{line}");

    // A session that is still open when SIGTERM arrives.
    let mut open = connect(listen);
    let open_local = open.local_addr().unwrap().to_string();
    assert!(echoes(&mut open, b"before\n"));
    let signalled = Instant::now();
    gw.signal(libc::SIGTERM);
    gw.wait_line(Duration::from_secs(5), |l| l.contains("draining"))
        .unwrap_or_else(|| panic!("no drain started:\n{}", gw.log()));
    assert!(
        TcpStream::connect_timeout(&listen, Duration::from_secs(1)).is_err(),
        "a new connection was accepted while draining"
    );
    assert!(
        echoes(&mut open, b"during drain\n"),
        "the open session stopped relaying during the drain"
    );

    let status = gw
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("gatehouse did not exit after SIGTERM:\n{}", gw.log()));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{}", gw.log());
    assert!(
        took >= Duration::from_millis(1500) && took <= Duration::from_secs(6),
        "exited {took:?} after SIGTERM with a 2s drain deadline"
    );
    assert!(
        closed_within(&mut open, Duration::from_secs(1)),
        "the open session outlived the gateway"
    );
    let log = gw.stderr_until_eof(Duration::from_secs(5)).join("\n");
    let forced = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["client"] == open_local.as_str())
        .unwrap_or_else(|| panic!("no close line for the drained session:\n{log}"));
    assert_eq!(forced["reason"], "shutdown", "{forced}");
}

#[test]
fn run_exits_1_when_a_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, tcp_config(addr, "127.0.0.1:9".parse().unwrap(), "")).unwrap();
    let out = run_to_end(
        &["run", "-c", path.to_str().unwrap(), "--log-format", "json"],
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains(&format!("cannot listen on {addr}")),
        "{}",
        out.stderr
    );
    drop(taken);
}

// ---------------------------------------------------------------------------------------------------------------
// Durable bans and the admin API, through the real binary

const ADMIN_TOKEN: &str = "cli-test-token-0123456789abcdef";

/// A relay config with a ban journal and the admin API on `admin`; writes the token file. `admission` goes
/// into the global [admission] table.
fn admin_config(dir: &Path, listen: SocketAddr, admin: SocketAddr, backend: SocketAddr, admission: &str) -> PathBuf {
    std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let path = dir.join("gatehouse.toml");
    let top = format!(
        "[runtime]\ndrain_deadline = \"1s\"\n\n[admission]\n{admission}\n\n[bans]\njournal = \"bans.journal\"\n\n\
         [admin]\nenabled = true\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n"
    );
    std::fs::write(&path, tcp_config(listen, backend, &top)).unwrap();
    path
}

/// One exchange with the admin API as the operator: (status, JSON body).
fn http(admin: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_blocking(admin, method, path, Some(ADMIN_TOKEN), body);
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

#[test]
fn a_ban_acknowledged_before_kill_9_is_there_after_restart() {
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = admin_config(dir.path(), listen, admin, backend, "");

    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    assert!(
        !refused_from("127.0.0.2", listen),
        "refused before any ban:\n{}",
        gw.log()
    );
    let (status, rec) = http(
        admin,
        "POST",
        "/v1/bans",
        r#"{"prefix": "127.0.0.2", "duration": "1h", "reason": "kill -9 test"}"#,
    );
    assert_eq!(status, 201, "{rec}");
    // No grace period: the process dies the moment the 201 is read.
    gw.signal(libc::SIGKILL);
    gw.wait_exit(Duration::from_secs(10))
        .expect("gatehouse survived SIGKILL");
    drop(gw);

    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    let (status, list) = http(admin, "GET", "/v1/bans", "");
    assert_eq!(status, 200, "{list}");
    let bans = list["bans"].as_array().unwrap();
    assert_eq!(bans.len(), 1, "{list}");
    assert_eq!(bans[0]["prefix"], "127.0.0.2/32");
    assert_eq!(bans[0]["reason"], "kill -9 test");
    assert!(
        refused_from("127.0.0.2", listen),
        "the ban did not survive kill -9:\n{}",
        gw.log()
    );
    assert!(!refused_from("127.0.0.3", listen));
    gw.wait_json(Duration::from_secs(5), |v| {
        v["message"] == "ban journal replayed" && v["live"] == 1
    })
    .unwrap_or_else(|| panic!("no replay line:\n{}", gw.log()));
}

#[test]
fn bans_commands_talk_to_the_running_gateway() {
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = admin_config(dir.path(), listen, admin, backend, "allow = [\"127.0.0.9\"]");
    let conf = path.to_str().unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    let t = Duration::from_secs(20);

    let out = run_to_end(&["bans", "list", "-c", conf], t);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("no bans"), "{}", out.stdout);

    let out = run_to_end(
        &[
            "bans",
            "add",
            "127.0.0.2",
            "--duration",
            "1h",
            "--reason",
            "cli says so",
            "-c",
            conf,
        ],
        t,
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("banned 127.0.0.2/32 until "), "{}", out.stdout);
    assert!(refused_from("127.0.0.2", listen));
    let out = run_to_end(&["bans", "add", "198.51.100.0/24", "--duration", "30m", "-c", conf], t);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);

    let out = run_to_end(&["bans", "list", "-c", conf], t);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(
        lines[0].starts_with("127.0.0.2/32") && lines[0].contains("cli says so"),
        "{}",
        out.stdout
    );
    assert!(lines[1].starts_with("198.51.100.0/24"), "{}", out.stdout);

    let out = run_to_end(&["bans", "list", "--prefix", "127.0.0.0/8", "--json", "-c", conf], t);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["bans"].as_array().unwrap().len(), 1, "{v}");

    // Explicit address and token file instead of the config.
    let url = format!("http://{admin}");
    let token = dir.path().join("admin.token");
    let out = run_to_end(
        &[
            "bans",
            "remove",
            "127.0.0.2",
            "--admin",
            &url,
            "--token-file",
            token.to_str().unwrap(),
        ],
        t,
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("lifted the ban on 127.0.0.2/32"), "{}", out.stdout);
    assert!(!refused_from("127.0.0.2", listen));

    // Errors: the server's message and exit 1.
    for (args, needle) in [
        (vec!["bans", "remove", "127.0.0.2", "-c", conf], "HTTP 404"),
        (
            vec!["bans", "add", "127.0.0.300", "--duration", "1h", "-c", conf],
            "HTTP 400",
        ),
        (
            vec!["bans", "add", "127.0.0.2", "--duration", "soon", "-c", conf],
            "duration",
        ),
        (
            vec!["bans", "add", "127.0.0.0/24", "--duration", "1h", "-c", conf],
            "allowlisted",
        ),
        // Nobody bans everyone, nor the IPv4-mapped spelling of everyone.
        (
            vec!["bans", "add", "0.0.0.0/0", "--duration", "1h", "-c", conf],
            "wider than /8",
        ),
        (
            vec!["bans", "add", "::ffff:0.0.0.0/96", "--duration", "1h", "-c", conf],
            "wider than /8",
        ),
        (
            vec!["bans", "add", "::/0", "--duration", "1h", "-c", conf],
            "wider than /19",
        ),
    ] {
        let out = run_to_end(&args, t);
        assert_eq!(out.code(), Some(1), "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains(needle),
            "{args:?}: stderr lacks {needle}: {}",
            out.stderr
        );
    }
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "wrong-token-0123456789abcdef").unwrap();
    let out = run_to_end(
        &["bans", "list", "-c", conf, "--token-file", wrong.to_str().unwrap()],
        t,
    );
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains("HTTP 401"), "{}", out.stderr);
    assert!(
        !out.stderr.contains(ADMIN_TOKEN) && !out.stderr.contains("wrong-token"),
        "{}",
        out.stderr
    );

    // Every change left an audit line without the token.
    gw.wait_json(Duration::from_secs(5), |v| {
        v["action"] == "unban" && v["result"] == "lifted"
    })
    .unwrap_or_else(|| panic!("no audit line for the unban:\n{}", gw.log()));
    assert!(!gw.log().contains(ADMIN_TOKEN), "the token leaked into the log");
    drop(gw);

    // Nothing listening: exit 1 with the address.
    let out = run_to_end(&["bans", "list", "-c", conf], t);
    assert_eq!(out.code(), Some(1));
    assert!(out.stderr.contains(&admin.to_string()), "{}", out.stderr);
}

/// SIGHUP with a broken file keeps the running configuration; SIGHUP with a good one applies it.
#[test]
fn sighup_rejects_a_bad_config_and_applies_a_good_one() {
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, tcp_config(listen, backend, "")).unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    let mut open = connect(listen);
    assert!(echoes(&mut open, b"before\n"));

    std::fs::write(&path, "this is = not [valid toml\n").unwrap();
    // SAFETY: kill() only sends a signal to our own child process.
    unsafe { libc::kill(gw.pid(), libc::SIGHUP) };
    let rejected = gw.wait_json(Duration::from_secs(10), |v| {
        v["message"] == "reload rejected; keeping the running configuration"
    });
    assert!(rejected.is_some(), "no rejection logged:\n{}", gw.log());
    assert!(
        echoes(&mut open, b"still\n"),
        "open session lost after a rejected reload"
    );
    let mut fresh = connect(listen);
    assert!(
        echoes(&mut fresh, b"new\n"),
        "old configuration not in force after a rejected reload"
    );

    // A good file that denies 127.0.0.1 (the test's address): new connections are refused at once.
    std::fs::write(
        &path,
        tcp_config(listen, backend, "").replace("[[front]]", "[admission]\ndeny = [\"127.0.0.1/32\"]\n\n[[front]]"),
    )
    .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(gw.pid(), libc::SIGHUP) };
    assert!(
        gw.wait_json(Duration::from_secs(10), |v| v["message"] == "configuration reloaded")
            .is_some(),
        "reload not logged:\n{}",
        gw.log()
    );
    let mut denied = connect(listen);
    assert!(
        closed_within(&mut denied, Duration::from_secs(5)),
        "new rule not applied after reload"
    );
    assert!(echoes(&mut open, b"after\n"), "open session lost after a reload");
}

// ---------------------------------------------------------------------------------------------------------------
// `[log] file` and SIGUSR1 (logrotate)

/// Polls `file` (bounded) until one of its lines is a JSON object satisfying `pred`; returns that object.
fn wait_file_json(
    file: &Path,
    limit: Duration,
    mut pred: impl FnMut(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let hit = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| pred(v));
        if hit.is_some() {
            return hit;
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One echoed session closed by the client; returns its client address as the close line shows it.
fn one_session(listen: SocketAddr, what: &str) -> String {
    let mut s = connect(listen);
    let local = s.local_addr().unwrap().to_string();
    assert!(echoes(&mut s, b"ping\n"), "{what}: no echo through the gateway");
    s.shutdown(Shutdown::Write).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)), "{what}: not closed");
    local
}

fn is_close_of(v: &serde_json::Value, client: &str) -> bool {
    v["client"] == client && v["reason"] == "client closed"
}

#[test]
fn log_file_follows_logrotate_on_sigusr1() {
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let path = dir.path().join("gatehouse.toml");
    // Relative: resolved against the config's folder.
    let top = "[runtime]\ndrain_deadline = \"1s\"\n\n[log]\nfile = \"logs/gatehouse.log\"\n";
    std::fs::write(&path, tcp_config(listen, backend, top)).unwrap();
    let current = logs.join("gatehouse.log");
    let rotated = logs.join("gatehouse.log.1");
    let show = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| format!("({}: {e})", p.display()));

    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&current).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "log file mode {mode:o} is wider than 0640");

    let first = one_session(listen, "first");
    wait_file_json(&current, Duration::from_secs(10), |v| is_close_of(v, &first))
        .unwrap_or_else(|| panic!("no close line for {first} in the log file:\n{}", show(&current)));

    // logrotate: rename, then SIGUSR1. The gateway writes "log file reopened" into the fresh file.
    std::fs::rename(&current, &rotated).unwrap();
    gw.signal(libc::SIGUSR1);
    wait_file_json(&current, Duration::from_secs(10), |v| {
        v["message"] == "log file reopened"
    })
    .unwrap_or_else(|| {
        panic!(
            "no fresh log file after SIGUSR1:\n{}\nstderr:\n{}",
            show(&current),
            gw.log()
        )
    });
    let second = one_session(listen, "second");
    wait_file_json(&current, Duration::from_secs(10), |v| is_close_of(v, &second))
        .unwrap_or_else(|| panic!("no close line for {second} in the new file:\n{}", show(&current)));
    let old = show(&rotated);
    assert!(
        old.contains(&format!("\"{first}\"")),
        "the rotated file lost its lines:\n{old}"
    );
    assert!(
        !old.contains(&format!("\"{second}\"")),
        "a line after SIGUSR1 went to the rotated file:\n{old}"
    );
    assert!(
        !show(&current).contains(&format!("\"{first}\"")),
        "a line from before the rotation is in the new file"
    );

    // A reopen that fails (the folder is gone) is reported on stderr; lines keep going to the open file.
    let gone = dir.path().join("logs.gone");
    std::fs::rename(&logs, &gone).unwrap();
    gw.signal(libc::SIGUSR1);
    gw.wait_line(Duration::from_secs(10), |l| {
        l.contains("SIGUSR1") && l.contains("cannot open log file") && l.contains("gatehouse.log")
    })
    .unwrap_or_else(|| panic!("a failed reopen was not reported on stderr:\n{}", gw.log()));
    let third = one_session(listen, "third");
    let kept = gone.join("gatehouse.log");
    wait_file_json(&kept, Duration::from_secs(10), |v| is_close_of(v, &third))
        .unwrap_or_else(|| panic!("after a failed reopen, no close line in the old file:\n{}", show(&kept)));

    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("gatehouse did not exit after SIGTERM:\n{}", show(&kept)));
    assert_eq!(status.code(), Some(0), "exit status {status}:\n{}", show(&kept));
    // With a log file, event lines do not also go to stderr.
    let stderr = gw.stderr_until_eof(Duration::from_secs(5)).join("\n");
    assert!(
        !stderr.contains(&format!("\"{first}\"")) && !stderr.contains("gatehouse ready"),
        "log lines went to stderr:\n{stderr}"
    );
}

#[test]
fn run_exits_1_when_the_log_file_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let top = "[log]\nfile = \"no-such-folder/gatehouse.log\"\n";
    std::fs::write(&path, tcp_config(listen, "127.0.0.1:9".parse().unwrap(), top)).unwrap();
    let out = run_to_end(
        &["run", "-c", path.to_str().unwrap(), "--log-format", "json"],
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    let want = dir.path().join("no-such-folder/gatehouse.log");
    assert!(
        out.stderr.contains(&format!("cannot open log file {}", want.display())),
        "stderr lacks the path: {}",
        out.stderr
    );
    assert!(
        TcpStream::connect_timeout(&listen, Duration::from_millis(300)).is_err(),
        "it listened anyway"
    );
}

/// The cluster listener refuses whoever does not complete the handshake as a listed node; a flood of such
/// connections leaves one log line per address and reason per `log.refusal_interval`, like the fronts'
/// refusals, and every refusal is still counted.
#[test]
fn refused_cluster_links_do_not_flood_the_log() {
    use gatehouse::cluster::keys::NodeKey;
    use socket2::{Domain, Socket, Type};
    const SOURCES: [&str; 5] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"];
    const CONNECTIONS: usize = 500;
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let link: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    NodeKey::generate_file(&dir.path().join("node.key")).unwrap();
    let peer = NodeKey::generate().public();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let top = format!(
        "[runtime]\ndrain_deadline = \"1s\"\n\n\
         [admin]\nenabled = true\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n\n\
         [cluster]\nnode_key = \"node.key\"\nlisten = \"{link}\"\n\n\
         [[cluster.peers]]\naddr = \"{nowhere}\"\nkey = \"{peer}\"\n"
    );
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, tcp_config(listen, backend, &top)).unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    wait_accepting(&mut gw, link);
    for i in 0..CONNECTIONS {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let from: SocketAddr = format!("{}:0", SOURCES[i % SOURCES.len()]).parse().unwrap();
        sock.bind(&from.into()).unwrap();
        sock.connect_timeout(&link.into(), Duration::from_secs(2)).unwrap();
        let mut s: TcpStream = sock.into();
        // As long as a cluster hello, but not one: refused as soon as it is read.
        s.write_all(&[b'x'; 72]).unwrap();
    }
    let refused = || http(admin, "GET", "/v1/cluster", "").1["stats"]["refused_links"].as_u64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused() < Some(CONNECTIONS as u64) {
        assert!(
            Instant::now() < deadline,
            "refusals not counted: {:?}\n{}",
            refused(),
            gw.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Stopping the gateway flushes its log: every line it wrote is read before counting.
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(20)).is_some(), "gateway did not exit");
    let lines = gw.stderr_until_eof(Duration::from_secs(5));
    let refusals: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "cluster: link refused")
        .collect();
    for from in SOURCES {
        let n = refusals
            .iter()
            .filter(|v| v["addr"].as_str().is_some_and(|a| a.starts_with(&format!("{from}:"))))
            .count();
        assert_eq!(
            n,
            1,
            "{from}: {n} log lines for {} refusals",
            CONNECTIONS / SOURCES.len()
        );
    }
    // Plus at most the line for wait_accepting's probe from 127.0.0.1 (it closes without a hello).
    assert!(refusals.len() <= SOURCES.len() + 1, "{refusals:#?}");
}

#[test]
fn cluster_status_command_reports_the_node_its_peers_and_cost_sharing() {
    use gatehouse::cluster::keys::NodeKey;
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let link: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let me = NodeKey::generate_file(&dir.path().join("node.key")).unwrap().public();
    let peer = NodeKey::generate().public();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let top = format!(
        "[admin]\nenabled = true\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n\n\
         [cluster]\nnode_key = \"node.key\"\nlisten = \"{link}\"\n\n\
         [[cluster.peers]]\naddr = \"{nowhere}\"\nkey = \"{peer}\"\n"
    );
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, tcp_config(listen, backend, &top)).unwrap();
    let conf = path.to_str().unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    let t = Duration::from_secs(20);

    let out = run_to_end(&["cluster", "status", "-c", conf], t);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("node {me}  listening on {link}  records 0").as_str()),
        "{}",
        out.stdout
    );
    assert!(
        lines.iter().any(|l| l.starts_with("cost sharing on: ")),
        "{}",
        out.stdout
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&nowhere.to_string()) && l.contains("down") && l.contains(&peer.to_string())),
        "{}",
        out.stdout
    );
    let out = run_to_end(&["cluster", "status", "--json", "-c", conf], t);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["backend"], "embedded", "{v}");
    assert_eq!(v["cost_sharing"], true, "{v}");
    assert_eq!(v["peers"][0]["up"], false, "{v}");
}

#[test]
fn a_second_gateway_on_the_same_journal_waits_for_the_first_to_exit() {
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = admin_config(dir.path(), listen, admin, backend, "");
    let mut first = Proc::run_json(&path);
    wait_accepting(&mut first, listen);
    let (status, rec) = http(
        admin,
        "POST",
        "/v1/bans",
        r#"{"prefix": "127.0.0.2", "duration": "1h", "reason": "first"}"#,
    );
    assert_eq!(status, 201, "{rec}");

    // The same journal, other ports.
    let listen2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&listen.to_string(), &listen2.to_string())
        .replace(&admin.to_string(), &admin2.to_string());
    let path2 = dir.path().join("second.toml");
    std::fs::write(&path2, text).unwrap();
    let mut second = Proc::run_json(&path2);
    let waiting = second
        .wait_json(Duration::from_secs(10), |v| v["holder_pid"].is_number())
        .unwrap_or_else(|| panic!("the second gateway did not wait:\n{}", second.log()));
    assert_eq!(waiting["holder_pid"], first.pid(), "{waiting}");
    assert!(
        TcpStream::connect_timeout(&listen2, Duration::from_millis(300)).is_err(),
        "the second gateway serves while the first holds the journal"
    );

    // Once the first is gone, the second takes over the journal and its bans.
    first.signal(libc::SIGKILL);
    first
        .wait_exit(Duration::from_secs(10))
        .expect("first gateway survived SIGKILL");
    wait_accepting(&mut second, listen2);
    second
        .wait_json(Duration::from_secs(5), |v| {
            v["message"] == "ban journal replayed" && v["live"] == 1
        })
        .unwrap_or_else(|| panic!("no replay line:\n{}", second.log()));
    assert!(refused_from("127.0.0.2", listen2), "{}", second.log());
}

#[test]
fn journal_recovery_keeps_the_damaged_original_and_names_the_dropped_lines() {
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = admin_config(dir.path(), listen, admin, backend, "");
    // Four acknowledged bans; then line 2 is damaged on disk (one bit) and line 4's checksum too.
    let mut lines: Vec<String> = (2..=5).map(|i| journaled_ban(&format!("127.0.0.{i}/32"))).collect();
    lines[1] = lines[1].replacen("planted", "plantec", 1);
    lines[3] = format!("00000000{}", &lines[3][8..]);
    let original = lines.concat();
    let journal = dir.path().join("bans.journal");
    std::fs::write(&journal, &original).unwrap();

    let mut gw = Proc::run_json(&path);
    let skipped = gw
        .wait_json(Duration::from_secs(10), |v| {
            v["message"] == "ban journal: line dropped" && v["line"] == 2
        })
        .unwrap_or_else(|| panic!("line 2 not named:\n{}", gw.log()));
    assert_eq!(skipped["why"], "checksum mismatch", "{skipped}");
    let cut = gw
        .wait_json(Duration::from_secs(10), |v| {
            v["message"] == "ban journal: line dropped" && v["line"] == 4
        })
        .unwrap_or_else(|| panic!("line 4 not named:\n{}", gw.log()));
    assert_eq!(cut["why"], "checksum mismatch", "{cut}");
    assert!(cut["action"].as_str().unwrap().starts_with("cut"), "{cut}");
    let summary = gw
        .wait_json(Duration::from_secs(10), |v| v["copy"].is_string())
        .unwrap_or_else(|| panic!("no line naming the copy:\n{}", gw.log()));
    wait_accepting(&mut gw, listen);

    // The original, byte for byte, beside the journal under the name the log gives.
    let copies: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("bans.journal.damaged-"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(summary["copy"], copies[0].to_str().unwrap());
    assert_eq!(std::fs::read_to_string(&copies[0]).unwrap(), original);
    // The journal itself was rewritten to the intact lines, and they are in force.
    let rewritten = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(rewritten.lines().count(), 2, "{rewritten}");
    assert!(refused_from("127.0.0.2", listen) && refused_from("127.0.0.4", listen));
    assert!(!refused_from("127.0.0.3", listen) && !refused_from("127.0.0.5", listen));
}

/// A blocking wait (bounded) for `pred`, polled every 50 ms.
fn poll_until(limit: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if pred() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    pred()
}

/// The metrics text of the admin API at `admin`.
fn metrics_text(admin: SocketAddr) -> String {
    http_blocking(admin, "GET", "/metrics", Some(ADMIN_TOKEN), "").1
}

#[test]
fn a_peers_ban_the_journal_cannot_take_is_retried_until_it_is_and_readyz_says_degraded_meanwhile() {
    use gatehouse::cluster::keys::NodeKey;
    let backend = echo_backend_thread();
    let port = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
    let (links, fronts, admins) = ([port(), port()], [port(), port()], [port(), port()]);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let keys: Vec<String> = dirs
        .iter()
        .map(|d| {
            NodeKey::generate_file(&d.path().join("node.key"))
                .unwrap()
                .public()
                .to_string()
        })
        .collect();
    let paths: Vec<PathBuf> = (0..2)
        .map(|i| {
            let dir = dirs[i].path();
            std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
            let top = format!(
                "[bans]\njournal = \"bans.journal\"\n\n\
                 [admin]\nenabled = true\nlisten = \"{}\"\ntoken_file = \"admin.token\"\n\n\
                 [cluster]\nnode_key = \"node.key\"\nlisten = \"{}\"\nanti_entropy = \"1s\"\n\n\
                 [[cluster.peers]]\naddr = \"{}\"\nkey = \"{}\"\n",
                admins[i],
                links[i],
                links[1 - i],
                keys[1 - i]
            );
            let path = dir.join("gatehouse.toml");
            std::fs::write(&path, tcp_config(fronts[i], backend, &top)).unwrap();
            path
        })
        .collect();
    let mut a = Proc::run_json(&paths[0]);
    // B ignores SIGXFSZ (as an inherited disposition), so a file-size limit makes its journal writes
    // fail with EFBIG, as a full disk would, instead of killing it.
    let mut sh = Command::new("sh");
    sh.args(["-c", "trap '' XFSZ; exec \"$0\" \"$@\""]).arg(BIN);
    let child = run_json_command(sh, &paths[1]).spawn().unwrap();
    let mut b = Proc::new(child);
    wait_accepting(&mut a, fronts[0]);
    wait_accepting(&mut b, fronts[1]);
    let linked = || metrics_text(admins[1]).contains("gatehouse_cluster_links_up 1");
    assert!(poll_until(Duration::from_secs(10), linked), "no link:\n{}", b.log());
    let prlimit = |value: &str| {
        let st = Command::new("prlimit")
            .args(["--pid", &b.pid().to_string(), &format!("--fsize={value}")])
            .status()
            .expect("prlimit (util-linux) is needed");
        assert!(st.success(), "prlimit {value}");
    };
    let journal = dirs[1].path().join("bans.journal");
    let size = std::fs::metadata(&journal).unwrap().len();
    // The soft limit only: raising a hard limit again would need CAP_SYS_RESOURCE.
    prlimit(&format!("{size}:unlimited"));

    let (status, rec) = http(
        admins[0],
        "POST",
        "/v1/bans",
        r#"{"prefix": "127.0.0.2", "duration": "1h", "reason": "disk full on B"}"#,
    );
    assert_eq!(status, 201, "{rec}");
    let not_journaled = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("gatehouse_cluster_records_received_total{reason=\"not_journaled\"}") && !l.ends_with(" 0")
        })
    };
    assert!(
        poll_until(Duration::from_secs(10), || not_journaled(&metrics_text(admins[1]))),
        "{}",
        metrics_text(admins[1])
    );
    let (status, ready) = http(admins[1], "GET", "/readyz", "");
    assert_eq!((status, ready["status"].as_str()), (503, Some("degraded")), "{ready}");
    let m = metrics_text(admins[1]);
    assert!(m.contains("gatehouse_bans_journal_failing 1"), "{m}");
    assert!(
        m.contains("gatehouse_cluster_records_received_total{reason=\"applied\"} 0"),
        "counted applied though not held:\n{m}"
    );
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), size);

    // The disk works again: the next anti-entropy round brings the statement, journaled this time.
    prlimit("unlimited:unlimited");
    let held = || {
        http(admins[1], "GET", "/v1/bans", "").1["bans"]
            .to_string()
            .contains("127.0.0.2/32")
    };
    assert!(
        poll_until(Duration::from_secs(10), held),
        "B never took the ban:\n{}",
        b.log()
    );
    assert!(refused_from("127.0.0.2", fronts[1]), "B does not enforce the ban");
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.contains("127.0.0.2/32"), "{text}");
    assert!(poll_until(Duration::from_secs(5), || http(
        admins[1], "GET", "/readyz", ""
    )
    .0 == 200));
    let m = metrics_text(admins[1]);
    assert!(m.contains("gatehouse_bans_journal_failing 0"), "{m}");
    assert!(
        m.contains("gatehouse_cluster_records_received_total{reason=\"applied\"} 1"),
        "{m}"
    );
}

#[test]
fn check_rejects_ban_limits_that_would_ban_everyone_or_a_group_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    for (setting, key_name, reason) in [
        ("min_prefix_v4 = 0", "bans.min_prefix_v4", "must be 1..=32"),
        ("min_prefix_v6 = 0", "bans.min_prefix_v6", "must be 1..=128"),
        (
            "ipv6_prefix = 16",
            "bans.ipv6_prefix",
            "between bans.min_prefix_v6 (19) and 128",
        ),
        (
            "escalate_after = 1",
            "bans.escalate_after",
            "must be 0 (never) or at least 2",
        ),
        ("max_entries = 0", "bans.max_entries", "must be at least 1"),
    ] {
        let text = format!("[bans]\n{setting}\n\n{}", tls_config(&cert, &key));
        assert_check_error(&text, key_name, line_of(&text, setting), reason);
    }
}

/// `kind = "api"` options: each mistake is reported at its own line and key.
#[test]
fn check_rejects_api_front_mistakes() {
    let base = |api: &str| {
        format!(
            "[[front]]\nname = \"rpc\"\nkind = \"api\"\nlisten = [\"127.0.0.1:18443\"]\ntransport = \"tcp\"\n\
             upstreams = [\"127.0.0.1:18332\"]\n\n[front.api]\nprofile = \"bitcoind\"\n{api}"
        )
    };
    let users = "[[front.api.users]]\nname = \"alice\"\nrpcauth = \"RPCAUTH\"\nmethods = [\"getblockcount\"]\n";
    let good_auth = "f00d$a9f3bf0bc92f82bedd4ece5ea48898c48216629383a097fa1c913ea8b26af042";

    let text = base(&format!(
        "backend_cookie_file = \"/var/lib/bitcoind/.cookie\"\n{}",
        users.replace("RPCAUTH", "f00d$nothex")
    ));
    assert_check_error(
        &text,
        "front[0].api.users[0].rpcauth",
        line_of(&text, "rpcauth ="),
        "salt$hash",
    );

    let text = base(&format!(
        "backend_user = \"node\"\nbackend_password_file = \"missing.password\"\n{}",
        users.replace("RPCAUTH", good_auth)
    ));
    assert_check_error(
        &text,
        "front[0].api.backend_password_file",
        line_of(&text, "backend_password_file"),
        "cannot read",
    );

    let text = base(&format!(
        "backend_user = \"node\"\nbackend_cookie_file = \"/var/lib/bitcoind/.cookie\"\n{}",
        users.replace("RPCAUTH", good_auth)
    ));
    assert_check_error(
        &text,
        "front[0].api.backend_cookie_file",
        line_of(&text, "backend_cookie_file"),
        "not both",
    );

    let text = base("backend_cookie_file = \"/var/lib/bitcoind/.cookie\"\n");
    assert_check_error(
        &text,
        "front[0].api.users",
        line_of(&text, "profile"),
        "every request would be refused",
    );

    let text = base(&format!(
        "backend_cookie_file = \"/c\"\nkeepalive_timeout = \"0s\"\n{}",
        users.replace("RPCAUTH", good_auth)
    ));
    assert_check_error(
        &text,
        "front[0].api.keepalive_timeout",
        line_of(&text, "keepalive_timeout"),
        "greater than 0s",
    );
}

/// A ledger-profile api front with `api` lines in its [front.api].
fn ledger_config(dir: &Path, api: &str) -> String {
    edited_tls_config(dir, |t| {
        format!(
            "{t}\n[[front]]\nname = \"ledger\"\nkind = \"api\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
             upstreams = [\"127.0.0.1:51233\"]\n\n[front.api]\nprofile = \"ledger\"\n{api}\n"
        )
    })
}

#[test]
fn check_validates_the_ledger_profile_options() {
    let dir = tempfile::tempdir().unwrap();
    let ledger_front = |t: &str| t.split("[[front]]").count() - 2;
    let cases = [
        (
            "extra_commands = [\"stop\"]",
            "api.extra_commands[0]",
            "extra_commands",
            "admin command of the node",
        ),
        (
            "extra_commands = [\"Bad-Name\"]",
            "api.extra_commands[0]",
            "extra_commands",
            "lowercase letters",
        ),
        (
            "extra_commands = [\"ping\"]",
            "api.extra_commands[0]",
            "extra_commands",
            "already a public command",
        ),
        (
            "max_subscriptions = 0",
            "api.max_subscriptions",
            "max_subscriptions",
            "must be at least 1",
        ),
        (
            "max_message = \"0B\"",
            "api.max_message",
            "max_message",
            "must be greater than 0",
        ),
        (
            "slow_reader_timeout = \"0s\"",
            "api.slow_reader_timeout",
            "slow_reader_timeout",
            "greater than 0s",
        ),
        (
            "backend_user = \"u\"",
            "api.backend_user",
            "backend_user",
            "only for profile = \"bitcoind\"",
        ),
        (
            "max_body = \"1MiB\"",
            "api.max_body",
            "max_body",
            "caps requests with max_message",
        ),
        (
            "[front.api.rest]\n\"/rest/chaininfo.json\" = \"cheap\"",
            "api.rest",
            "/rest/chaininfo.json",
            "only for profile = \"bitcoind\"",
        ),
        (
            "[front.api.fees]\nhigh = -1",
            "api.fees.high",
            "high = -1",
            "finite number, 0 or more",
        ),
        (
            "[front.api.fees.commands]\nsign = -5",
            "api.fees.commands.sign",
            "sign = -5",
            "finite number",
        ),
    ];
    for (api, key, needle, reason) in cases {
        let text = ledger_config(dir.path(), api);
        let key = format!("front[{}].{key}", ledger_front(&text));
        assert_check_error(&text, &key, line_of(&text, needle), reason);
    }
    // And the ledger profile's keys on a bitcoind front.
    let text = edited_tls_config(dir.path(), |t| {
        format!(
            "{t}\n[[front]]\nname = \"rpc\"\nkind = \"api\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
             upstreams = [\"127.0.0.1:8332\"]\n\n[front.api]\nprofile = \"bitcoind\"\nbackend_cookie_file = \"c\"\n\
             public_methods = [\"getblockcount\"]\nmax_subscriptions = 5\n"
        )
    });
    let key = format!("front[{}].api.max_subscriptions", ledger_front(&text));
    assert_check_error(
        &text,
        &key,
        line_of(&text, "max_subscriptions"),
        "only for profile = \"ledger\"",
    );
    // A valid ledger front passes.
    let (_, out) = check_text(
        dir.path(),
        &ledger_config(dir.path(), "forwarded = true\nmax_subscriptions = 5"),
    );
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
}

#[test]
fn check_rejects_tier_mistakes() {
    let api = "[[front]]\nname = \"rpc\"\nkind = \"api\"\nlisten = [\"127.0.0.1:18443\"]\ntransport = \"tcp\"\n\
               upstreams = [\"127.0.0.1:18332\"]\n\n[front.api]\nprofile = \"bitcoind\"\n\
               backend_cookie_file = \"/var/lib/bitcoind/.cookie\"\n\
               [[front.api.users]]\nname = \"alice\"\n\
               rpcauth = \"f00d$a9f3bf0bc92f82bedd4ece5ea48898c48216629383a097fa1c913ea8b26af042\"\n\
               methods = [\"getblockcount\"]\n";
    let with = |tiers: &str| format!("{api}\n{tiers}");

    let text = with("[[tier]]\nname = \"partner\"\ncredentials = [\"alice\", \"mallory\"]\n");
    assert_check_error(
        &text,
        "tier[0].credentials[1]",
        line_of(&text, "credentials ="),
        "`mallory` is no user or token name of any [front.api]",
    );

    let text = with(
        "[[tier]]\nname = \"tor\"\nnetworks = [\"192.0.2.7/32\"]\n\n\
         [[tier]]\nname = \"lan\"\nnetworks = [\"198.51.100.0/24\", \"192.0.2.0/24\"]\n",
    );
    assert_check_error(
        &text,
        "tier[1].networks[1]",
        line_of(&text, "192.0.2.0/24"),
        "192.0.2.0/24 overlaps 192.0.2.7/32 (tier `tor`)",
    );

    for bad in ["0", "-2", "1e9", "\"lots\""] {
        let text = with(&format!(
            "[[tier]]\nname = \"tor\"\nnetworks = [\"192.0.2.7/32\"]\ncost = {bad}\n"
        ));
        let reason = if bad.starts_with('"') {
            "neither a multiplier nor \"exempt\""
        } else {
            "must be a number greater than 0"
        };
        assert_check_error(&text, "tier[0].cost", line_of(&text, "cost ="), reason);
    }

    let text = with("[[tier]]\nname = \"tor\"\nnetworks = [\"192.0.2.7/32\"]\nbans = \"sometimes\"\n");
    assert_check_error(
        &text,
        "tier[0].bans",
        line_of(&text, "bans ="),
        "neither \"auto\" nor \"never\"",
    );

    let text = with("[[tier]]\nname = \"tor gateway\"\nnetworks = [\"192.0.2.7/32\"]\n");
    assert_check_error(&text, "tier[0].name", line_of(&text, "tor gateway"), "metric label");
}

/// A std connection from source address `from` (127.0.0.2 …), for clients the gateway tells apart.
fn connect_from_std(from: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from.parse().unwrap(), 0).into()).unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn the_close_line_names_the_tier_never_its_address() {
    let backend = support::backends::version_backend_thread("ElectrumX 1.16.0");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(
        &path,
        format!(
            "[[front]]\nname = \"electrum\"\nkind = \"electrum\"\nlisten = [\"{listen}\"]\ntransport = \"tcp\"\n\
             upstreams = [\"{backend}\"]\n\n[[tier]]\nname = \"onion\"\nnetworks = [\"127.0.0.2/32\"]\ncost = 20\n"
        ),
    )
    .unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    for (from, tier) in [("127.0.0.2", Some("onion")), ("127.0.0.3", None)] {
        let mut s = connect_from_std(from, listen);
        s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"server.version\",\"params\":[\"t\",\"1.4\"]}\n")
            .unwrap();
        let mut reply = [0u8; 256];
        let n = s.read(&mut reply).unwrap();
        assert!(
            String::from_utf8_lossy(&reply[..n]).contains("\"result\""),
            "{}",
            gw.log()
        );
        let local = s.local_addr().unwrap().to_string();
        drop(s);
        let line = gw
            .wait_json(Duration::from_secs(10), |v| {
                v["message"] == "connection closed" && v["client"] == local.as_str()
            })
            .unwrap_or_else(|| panic!("no close line for {local}:\n{}", gw.log()));
        assert_eq!(line.get("tier").and_then(|t| t.as_str()), tier, "{line}");
    }
}

#[test]
fn check_rejects_a_fee_drop_threshold_below_the_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let text = format!(
        "{}\n[cost.ledger]\nwarning = 5000\ndrop = 4000\n",
        tls_config(&cert, &key)
    );
    assert_check_error(
        &text,
        "cost.ledger.drop",
        line_of(&text, "drop = 4000"),
        "drop must be greater than warning (4000 vs 5000)",
    );
    let text = format!("{}\n[cost.ledger]\nwindow = \"0s\"\n", tls_config(&cert, &key));
    assert_check_error(
        &text,
        "cost.ledger.window",
        line_of(&text, "window = \"0s\""),
        "must be greater than 0s",
    );
}

fn electrum_config(listen: &str, upstreams: &[SocketAddr]) -> String {
    let ups: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[front]]\nname = \"wallets\"\nkind = \"electrum\"\nlisten = [\"{listen}\"]\ntransport = \"tcp\"\nupstreams = [{}]\n",
        ups.join(", ")
    )
}

#[test]
fn check_probe_names_each_backend_and_what_to_change_on_it() {
    let old = support::backends::version_backend_thread("ElectrumX 1.15.0");
    let fulcrum = support::backends::version_backend_thread("Fulcrum 1.9.8");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, electrum_config("127.0.0.1:0", &[old, fulcrum])).unwrap();
    let out = run_to_end(
        &["check", "--probe", "-c", path.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(0), "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let x = at(&format!(
        "backend wallets {old}: ElectrumX 1.15.0 (protocol 1.4), sees this gateway as 127.0.0.1"
    ))
    .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        lines[x + 1].contains("advice: this ElectrumX (before 1.16) puts every wallet"),
        "{}",
        out.stdout
    );
    assert!(lines[x + 2].contains("advice: ElectrumX's MAX_SESSIONS (default 1000) counts every wallet of this gateway, which admits up to 20000"), "{}", out.stdout);
    // Fulcrum excludes 127.0.0.1 from its per-address limits by default: nothing to change.
    let f = at(&format!("backend wallets {fulcrum}: Fulcrum 1.9.8")).unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(lines.get(f + 1).is_none_or(|l| !l.contains("advice")), "{}", out.stdout);
    // Without --probe nothing is asked.
    let plain = run_to_end(&["check", "-c", path.to_str().unwrap()], Duration::from_secs(20));
    assert!(!plain.stdout.contains("backend wallets"), "{}", plain.stdout);
}

#[test]
fn check_probe_fails_on_a_backend_that_does_not_answer() {
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        electrum_config("127.0.0.1:0", &[dead]),
    )
    .unwrap();
    let path = dir.path().join("gatehouse.toml");
    let out = run_to_end(
        &["check", "--probe", "-c", path.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(out.code(), Some(1), "stdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("error: backend wallets {dead}: connect:")),
        "{}",
        out.stderr
    );
}

#[test]
fn run_logs_advice_for_its_backends_at_start() {
    let old = support::backends::version_backend_thread("ElectrumX 1.15.0");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, electrum_config(&listen.to_string(), &[old])).unwrap();
    let mut gw = Proc::run_json(&path);
    let line = gw
        .wait_json(Duration::from_secs(10), |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("backend advice: this ElectrumX (before 1.16)"))
        })
        .unwrap_or_else(|| panic!("no advice logged:\n{}", gw.log()));
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["software"], "ElectrumX 1.15.0", "{line}");
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(10));
}

/// REST prefixes and bearer tokens of a `kind = "api"` front: each mistake at its own line and key.
#[test]
fn check_rejects_api_rest_and_token_mistakes() {
    let base = |api: &str| {
        format!(
            "[[front]]\nname = \"rpc\"\nkind = \"api\"\nlisten = [\"127.0.0.1:18443\"]\ntransport = \"tcp\"\n\
             upstreams = [\"127.0.0.1:18332\"]\n\n[front.api]\nprofile = \"bitcoind\"\n\
             backend_cookie_file = \"/var/lib/bitcoind/.cookie\"\n{api}"
        )
    };
    let good = "f00d$a9f3bf0bc92f82bedd4ece5ea48898c48216629383a097fa1c913ea8b26af042";
    let token = |name: &str, hash: &str, methods: &str| {
        format!("[[front.api.tokens]]\nname = \"{name}\"\ntoken_hash = \"{hash}\"\nmethods = [{methods}]\n")
    };
    let m = "\"getblockcount\"";

    let text = base(&token("svc", "f00d$abc", m));
    assert_check_error(
        &text,
        "front[0].api.tokens[0].token_hash",
        line_of(&text, "token_hash"),
        "salt$hash",
    );
    let text = base(&format!("{}{}", token("svc", good, m), token("svc", good, m)));
    let second = text
        .rfind("name = \"svc\"")
        .map(|at| text[..at].lines().count() + 1)
        .unwrap();
    assert_check_error(&text, "front[0].api.tokens[1].name", second, "duplicate token");
    let text = base(&token("svc", good, ""));
    assert_check_error(
        &text,
        "front[0].api.tokens[0].methods",
        line_of(&text, "name = \"svc\""),
        "no methods",
    );

    // A front with only a token (or only REST) is complete.
    let dir = tempfile::tempdir().unwrap();
    for api in [
        token("svc", good, m),
        "[front.api.rest]\n\"/rest/tx/\" = \"medium\"\n".to_string(),
    ] {
        let (_, out) = check_text(dir.path(), &base(&api));
        assert_eq!(out.code(), Some(0), "{api}\n{}", out.stderr);
    }

    for (line, key, reason) in [
        (
            "\"/api/tx/\" = \"cheap\"",
            "front[0].api.rest.\"/api/tx/\"",
            "starts with `/rest/`",
        ),
        (
            "\"/rest/\" = \"cheap\"",
            "front[0].api.rest.\"/rest/\"",
            "starts with `/rest/`",
        ),
        (
            "\"/rest/../x\" = \"cheap\"",
            "front[0].api.rest.\"/rest/../x\"",
            "without `..`",
        ),
        (
            "\"/rest/tx/\" = \"pricey\"",
            "front[0].api.rest.\"/rest/tx/\"",
            "unknown cost class `pricey`",
        ),
    ] {
        let text = base(&format!(
            "[front.api.rest]\n\"/rest/chaininfo.json\" = \"cheap\"\n{line}\n"
        ));
        assert_check_error(&text, key, line_of(&text, line), reason);
    }
}

/// `gatehouse token` prints a fresh token and an entry that a front accepts: different every run, and the
/// entry is not the token.
#[test]
fn token_prints_a_new_token_and_its_entry() {
    let first = run_to_end(&["token"], Duration::from_secs(10));
    let second = run_to_end(&["token"], Duration::from_secs(10));
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    let parse = |o: &Outcome| {
        let token = o
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("token: "))
            .unwrap()
            .to_string();
        let entry = o
            .stdout
            .lines()
            .find(|l| l.starts_with("token_hash = "))
            .unwrap()
            .to_string();
        (token, entry)
    };
    let ((t1, e1), (t2, _)) = (parse(&first), parse(&second));
    assert_ne!(t1, t2);
    assert_eq!(t1.len(), 64);
    assert!(!e1.contains(&t1), "{e1}");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[front]]\nname = \"rpc\"\nkind = \"api\"\nlisten = [\"127.0.0.1:18443\"]\ntransport = \"tcp\"\n\
         upstreams = [\"127.0.0.1:18332\"]\n\n[front.api]\nprofile = \"bitcoind\"\n\
         backend_cookie_file = \"/c\"\n[[front.api.tokens]]\nname = \"t\"\n{e1}\nmethods = [\"getblockcount\"]\n"
    );
    let (_, out) = check_text(dir.path(), &text);
    assert_eq!(out.code(), Some(0), "{text}\n{}", out.stderr);
}

#[test]
fn check_rejects_peer_front_mistakes() {
    let base = |kind: &str, transport: &str, peer: &str| {
        format!(
            "[[front]]\nname = \"p2p\"\nkind = \"{kind}\"\nlisten = [\"127.0.0.1:18444\"]\ntransport = \"{transport}\"\n\
             upstreams = [\"127.0.0.1:18445\"]\n\n[front.peer]\n{peer}"
        )
    };
    let text = base("peer", "tcp", "protocol = \"bitcoin\"\n");
    assert_check_error(
        &text,
        "front[0].peer.magic",
        line_of(&text, "protocol ="),
        "needs the chain's magic",
    );
    let text = base("peer", "tcp", "protocol = \"bitcoin\"\nmagic = \"f9beb4\"\n");
    assert_check_error(
        &text,
        "front[0].peer.magic",
        line_of(&text, "magic ="),
        "not 4 bytes in hex",
    );
    let text = base("peer", "tcp", "protocol = \"bitcoin\"\nmagic = \"f9beb4zz\"\n");
    assert_check_error(
        &text,
        "front[0].peer.magic",
        line_of(&text, "magic ="),
        "not 4 bytes in hex",
    );
    let text = base("peer", "tcp", "magic = \"f9beb4d9\"\n");
    assert_check_error(
        &text,
        "front[0].peer.magic",
        line_of(&text, "magic ="),
        "needs protocol = \"bitcoin\"",
    );
    let text = base(
        "peer",
        "tcp",
        "protocol = \"bitcoin\"\nmagic = \"f9beb4d9\"\nfirst_commands = [\"version\", \"much-too-long-command\"]\n",
    );
    assert_check_error(
        &text,
        "front[0].peer.first_commands",
        line_of(&text, "first_commands"),
        "is not a command",
    );
    let text = base(
        "peer",
        "tcp",
        "protocol = \"bitcoin\"\nmagic = \"f9beb4d9\"\nmax_payload = \"0B\"\n",
    );
    assert_check_error(
        &text,
        "front[0].peer.max_payload",
        line_of(&text, "max_payload"),
        "between 1 byte",
    );
    let text = base(
        "peer",
        "tcp",
        "protocol = \"bitcoin\"\nmagic = \"f9beb4d9\"\nv2 = \"maybe\"\n",
    );
    assert_check_error(&text, "front[0].peer.v2", line_of(&text, "v2 ="), "unknown variant");
    let text = base("peer", "tcp", "burst_in = \"1MiB\"\n");
    assert_check_error(
        &text,
        "front[0].peer.burst_in",
        line_of(&text, "burst_in"),
        "needs bytes_per_second_in",
    );
    let text = base("peer", "tcp", "bytes_per_second_out = \"1MiB\"\nburst_out = \"1KiB\"\n");
    assert_check_error(
        &text,
        "front[0].peer.burst_out",
        line_of(&text, "burst_out"),
        "at least 16KiB",
    );
    let text = base("peer", "tcp", "max_buffered = \"1KiB\"\n");
    assert_check_error(
        &text,
        "front[0].peer.max_buffered",
        line_of(&text, "max_buffered"),
        "at least 64KiB",
    );
    let text = base("peer", "tcp", "slow_peer_timeout = \"0s\"\n");
    assert_check_error(
        &text,
        "front[0].peer.slow_peer_timeout",
        line_of(&text, "slow_peer_timeout"),
        "greater than 0s",
    );
    let text = base("electrum", "tcp", "protocol = \"any\"\n");
    assert_check_error(
        &text,
        "front[0].peer",
        line_of(&text, "protocol ="),
        "needs kind = \"peer\"",
    );
}

#[test]
fn certs_command_lists_file_and_acme_certificates_with_issuer_expiry_and_source() {
    // The operator's old self-signed certificate stays the default (wallets that send no SNI and pinned
    // it), while the public name gets the ACME certificate (a placeholder here: the CA is unreachable).
    let backend = echo_backend_thread();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let nowhere = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = localhost_cert(dir.path(), "old-identity");
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    let text = format!(
        "[admin]\nenabled = true\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n\n\
         [acme]\ndirectory = \"https://127.0.0.1:{nowhere}/dir\"\nca_root = \"{}\"\nstate_dir = \"{}\"\n\
         [[acme.certificate]]\nname = \"public\"\ndomains = [\"electrum.example.com\"]\n\n\
         [[front]]\nname = \"wallets\"\nkind = \"peer\"\nlisten = [\"{listen}\"]\ntransport = \"tls\"\n\
         upstreams = [\"{backend}\"]\n[front.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[front.tls.sni]]\nname = \"electrum.example.com\"\nacme = \"public\"\n",
        cert.display(),
        dir.path().display(),
        cert.display(),
        key.display()
    );
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, text).unwrap();
    let conf = path.to_str().unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    let t = Duration::from_secs(20);
    let out = run_to_end(&["certs", "-c", conf], t);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let (_, leaf) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let expires = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + Duration::from_secs(leaf.validity().not_after.timestamp() as u64),
    );
    assert!(
        out.stdout.contains("wallets default (file): localhost"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("issuer:  CN=old-identity"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("expires: {expires}")), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("wallets public (placeholder): electrum.example.com"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("renewal: "), "{}", out.stdout);
    let out = run_to_end(&["certs", "--json", "-c", conf], t);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["certificates"][0]["sni"], serde_json::Value::Null, "{v}");
    assert_eq!(v["certificates"][1]["sni"], "electrum.example.com", "{v}");
}

#[test]
fn check_names_the_feed_or_crowdsec_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let base = tls_config(&cert, &key);
    let cases = [
        (
            "[[feeds]]\nname = \"drop\"\nurl = \"http://127.0.0.1:1/drop.txt\"\nsha256 = \"abc\"\n",
            "feeds[0].sha256",
            "sha256 = ",
            "expected 64 hexadecimal digits",
        ),
        (
            "[[feeds]]\nname = \"drop\"\nurl = \"ftp://127.0.0.1/drop.txt\"\n",
            "feeds[0].url",
            "url = ",
            "is not an http:// or https:// URL",
        ),
        (
            "[[feeds]]\nname = \"drop\"\nfile = \"drop.txt\"\nformat = \"csv\"\n",
            "feeds[0].format",
            "format = ",
            "unknown format `csv` (expected `plain`, `spamhaus` or `spamhaus-json`)",
        ),
        (
            "[[feeds]]\nname = \"crowdsec\"\nfile = \"drop.txt\"\n",
            "feeds[0].name",
            "name = \"crowdsec\"",
            "`crowdsec` is taken",
        ),
        (
            "[[feeds]]\nname = \"signed\"\nfile = \"drop.txt\"\nminisign_key = \"AAAA\"\n",
            "feeds[0].minisign_key",
            "minisign_key = ",
            "a minisign public key is 42 bytes",
        ),
        (
            "[crowdsec]\nurl = \"http://127.0.0.1:8080/\"\napi_key_file = \"missing.key\"\n",
            "crowdsec.api_key_file",
            "api_key_file = ",
            "cannot read",
        ),
        (
            "[crowdsec]\nurl = \"http://127.0.0.1:8080/\"\nmachine_id = \"edge\"\n",
            "crowdsec.password_file",
            "machine_id = ",
            "required with `machine_id`",
        ),
    ];
    for (extra, key, at, reason) in cases {
        // Before the first [[front]], so the tables are top-level ones.
        let text = format!("{extra}\n{base}");
        assert_check_error(&text, key, line_of(&text, at), reason);
    }
}

#[test]
fn check_warns_when_feeds_have_no_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = localhost_cert(dir.path(), "server");
    let feed = "[[feeds]]\nname = \"drop\"\nurl = \"http://127.0.0.1:1/drop.txt\"\n";
    let text = format!("{feed}\n[cost]\ngroup_private = true\n\n{}", tls_config(&cert, &key));
    let (path, out) = check_text(dir.path(), &text);
    assert_eq!(out.code(), Some(0), "a warning is not an error: {}", out.stderr);
    let warning = format!("warning: {}: feeds: no [bans] journal", path.display());
    assert!(
        out.stderr.contains(&warning),
        "stderr lacks `{warning}`: {}",
        out.stderr
    );
    let kept = format!(
        "{feed}\n[cost]\ngroup_private = true\n\n[bans]\njournal = \"bans.journal\"\n\n{}",
        tls_config(&cert, &key)
    );
    let (_, out) = check_text(dir.path(), &kept);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("warning"), "warned: {}", out.stderr);
}

#[test]
fn a_routed_connection_closes_under_the_target_fronts_name() {
    let backend = support::backends::version_backend_thread("btc-backend");
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = support::tls::write_cert_names(
        dir.path(),
        "server",
        &["localhost", "btc.example.org"],
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(
        &path,
        format!(
            "[[front]]\nname = \"main\"\nkind = \"electrum\"\nlisten = [\"{listen}\"]\ntransport = \"tls\"\n\
             upstreams = [\"127.0.0.1:1\"]\n[front.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [[front.tls.sni]]\nname = \"btc.example.org\"\nroute = \"btc\"\n\n\
             [[front]]\nname = \"btc\"\nkind = \"electrum\"\nlisten = []\ntransport = \"tcp\"\n\
             upstreams = [\"{backend}\"]\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut gw = Proc::run_json(&path);
    wait_accepting(&mut gw, listen);
    let tcp = connect_from_std("127.0.0.2", listen);
    let local = tcp.local_addr().unwrap().to_string();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), "btc.example.org".try_into().unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"server.version\",\"params\":[\"t\",\"1.4\"]}\n")
        .unwrap();
    let mut reply = [0u8; 256];
    let n = s.read(&mut reply).unwrap();
    assert!(
        String::from_utf8_lossy(&reply[..n]).contains("btc-backend"),
        "{}",
        gw.log()
    );
    s.conn.send_close_notify();
    let _ = s.flush();
    drop(s);
    let line = gw
        .wait_json(Duration::from_secs(10), |v| {
            v["message"] == "connection closed" && v["client"] == local.as_str()
        })
        .unwrap_or_else(|| panic!("no close line for {local}:\n{}", gw.log()));
    assert_eq!(line["front"], "btc", "{line}");
    assert!(line["tls"].as_str().is_some_and(|t| t.starts_with("TLS")), "{line}");
}
