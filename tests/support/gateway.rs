//! The gateway in-process: started on the test's runtime from a TOML snippet, the config snippets tests
//! assemble it from, its refusal counters, and ban-journal lines planted before it starts.

use gatehouse::config::Config;
use gatehouse::guard::Refusal;
use gatehouse::{Gatehouse, Running};
use std::net::SocketAddr;
use std::path::Path;

/// Parses `toml` (relative paths resolve against `dir`) and starts a gateway on the test's runtime,
/// intake included: many tests pause tokio's clock, which only holds within one runtime (an intake
/// thread's handshake would look, to the paused clock, like a runtime with nothing to do, and time would
/// jump past every deadline). The intake threads are tested through the binary.
pub async fn start_in(dir: &Path, toml: &str) -> Running {
    let mut cfg = Config::parse(toml, &dir.join("gatehouse.toml")).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
    cfg.runtime.intake.threads = 0;
    Gatehouse::start(cfg).await.expect("start")
}

pub async fn start(toml: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    start_in(dir.path(), toml).await
}

// The keys of a global [admission] table loose enough that only what a test configures can refuse.
macro_rules! relaxed_keys {
    () => {
        "max_connections_per_ip = 100000\nmax_connections_per_group = 100000\n\
         connect_rate_per_ip = \"100000/s\"\nconnect_burst_per_ip = 100000\n"
    };
}

/// The keys alone, for a test that adds its own to the same [admission] table.
pub const RELAXED_KEYS: &str = relaxed_keys!();

/// Global admission loose enough that only what a test configures on its front can refuse.
pub const RELAXED: &str = concat!("[admission]\n", relaxed_keys!(), "\n");

/// A `[[front]]` table of `kind` on one `listen` address, with `transport` and `upstreams` (in order),
/// then `extra`: more keys of the front, then its sub-tables.
pub fn front(kind: &str, name: &str, listen: &str, transport: &str, upstreams: &[SocketAddr], extra: &str) -> String {
    let ups = upstreams
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[front]]\nname = \"{name}\"\nkind = \"{kind}\"\nlisten = [\"{listen}\"]\ntransport = \"{transport}\"\n\
         upstreams = [{ups}]\n{extra}\n"
    )
}

/// A front's `[front.tls]` table.
pub fn tls_table(cert: &Path, key: &Path) -> String {
    format!(
        "[front.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// A plain TCP front on 127.0.0.1:0 in front of `upstream`, with extra front keys appended.
pub fn tcp_front(name: &str, upstream: SocketAddr, extra: &str) -> String {
    tcp_front_at(name, "127.0.0.1:0", upstream, extra)
}

/// A plain TCP front on `listen` (another loopback address, for a second front: the config refuses two
/// fronts that list the same address, `127.0.0.1:0` included).
pub fn tcp_front_at(name: &str, listen: &str, upstream: SocketAddr, extra: &str) -> String {
    front("peer", name, listen, "tcp", &[upstream], extra)
}

/// A `kind = "peer"` TLS front on 127.0.0.1:0 with the given certificate, upstreams and extra front keys
/// (e.g. `[front.timeouts]` tables, which must come last).
pub fn tls_front(name: &str, cert: &Path, key: &Path, upstreams: &[SocketAddr], extra: &str) -> String {
    let extra = format!("{}{extra}", tls_table(cert, key));
    front("peer", name, "127.0.0.1:0", "tls", upstreams, &extra)
}

/// Cluster node keys `node{i}.key` in `dir`; returns their public keys.
pub fn node_keys(dir: &Path, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            gatehouse::cluster::keys::NodeKey::generate_file(&dir.join(format!("node{i}.key")))
                .unwrap()
                .public()
                .to_string()
        })
        .collect()
}

/// The `[[cluster.peers]]` tables of gateway `me` of a full mesh: every other node's link address and
/// key (`links` empty: keys only, as under the Redis backend).
pub fn cluster_peers(me: usize, links: &[SocketAddr], keys: &[String]) -> String {
    (0..keys.len())
        .filter(|&j| j != me)
        .map(|j| match links.get(j) {
            Some(addr) => format!("[[cluster.peers]]\naddr = \"{addr}\"\nkey = \"{}\"\n", keys[j]),
            None => format!("[[cluster.peers]]\nkey = \"{}\"\n", keys[j]),
        })
        .collect()
}

/// Every refusal counter, in [`Refusal::ALL`] order.
pub fn counters(running: &Running) -> Vec<u64> {
    Refusal::ALL.iter().map(|&r| running.guard().refused(r)).collect()
}

/// `before` with `reason` increased by `n`: what the counters must read after `n` refusals for `reason`
/// and nothing else.
pub fn plus(before: &[u64], reason: Refusal, n: u64) -> Vec<u64> {
    let mut v = before.to_vec();
    v[Refusal::ALL.iter().position(|&r| r == reason).unwrap()] += n;
    v
}

/// Milliseconds since the Unix epoch: the clock of ban records.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One line of the ban journal as the gateway writes it: the record's CRC-32, then the record.
pub fn journal_line(json: &str) -> String {
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
}

/// A journal line that bans `prefix` for an hour from now, as an operator's ban made on this node.
pub fn journaled_ban(prefix: &str) -> String {
    let now = now_ms();
    journal_line(&format!(
        r#"{{"op":"ban","prefix":"{prefix}","until_ms":{},"reason":"planted","origin":"local","created_ms":{now},"version":{}}}"#,
        now + 3_600_000,
        now * 1000
    ))
}
