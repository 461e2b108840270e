//! `GET /metrics` through the real gateway: the exposition parses with a strict Prometheus text-format
//! (0.0.4) parser, needs the bearer token unless `metrics_public = true`, carries no client (or backend)
//! address as a label, and its counters move as traffic is driven: a denied connection, a TLS handshake,
//! Electrum requests, a cost hard-limit disconnect and the ban it raises.
//!
//! The data-path counters are process-wide and other tests run concurrently in this binary, so the
//! assertions compare this test's own fronts (unique names) or use "increased by at least".

use crate::support::backends::{self, echo_backend};
use crate::support::gateway::RELAXED;
use crate::support::{clients, gateway, net, tls};
use gatehouse::admin::AdminListen;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const TOKEN: &str = "metrics-token-0123456789abcdef";

// ---- a strict text-format parser ----------------------------------------------------------------

type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type, as declared by `# TYPE`.
    types: HashMap<String, String>,
    /// (sample name, labels) → value.
    samples: HashMap<(String, Labels), f64>,
}

impl Exposition {
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let l: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.get(&(name.to_string(), l)).copied()
    }

    /// 0 when the series is absent (a label set not created yet).
    fn val(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        rest = &rest[end + 1..];
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or }".into());
        }
    }
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return Some(base);
            }
        }
    }
    None
}

/// Strict: only HELP/TYPE comments, TYPE before samples and at most once, valid names and escapes,
/// no duplicate series, consistent histograms, counters named `_total`.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut helped = std::collections::HashSet::new();
    let mut seen_samples_of = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let ctx = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut parts = c.trim_start().splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            let name = parts.next().ok_or_else(|| ctx("comment without a name".into()))?;
            let arg = parts.next().unwrap_or("");
            if !valid_metric_name(name) {
                return Err(ctx(format!("bad metric name {name:?}")));
            }
            match kw {
                "HELP" => {
                    if !helped.insert(name.to_string()) {
                        return Err(ctx("HELP repeated".into()));
                    }
                }
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                        return Err(ctx(format!("unknown type {arg:?}")));
                    }
                    if seen_samples_of.contains(name) {
                        return Err(ctx("TYPE after samples".into()));
                    }
                    if e.types.insert(name.to_string(), arg.to_string()).is_some() {
                        return Err(ctx("TYPE repeated".into()));
                    }
                }
                _ => return Err(ctx("unexpected comment".into())),
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| ctx("no value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(ctx(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(ctx)?
        } else {
            (Labels::new(), &line[name_end..])
        };
        let mut fields = rest
            .strip_prefix(' ')
            .ok_or_else(|| ctx("no space before value".into()))?
            .split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(ctx)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|e| ctx(format!("bad timestamp: {e}")))?;
        }
        if fields.next().is_some() {
            return Err(ctx("trailing fields".into()));
        }
        let family = family_of(name, &e.types).ok_or_else(|| ctx("sample without a TYPE".into()))?;
        seen_samples_of.insert(family.to_string());
        if e.types[family] == "counter" && !name.ends_with("_total") {
            return Err(ctx("counter not named _total".into()));
        }
        if e.samples.insert((name.to_string(), labels), value).is_some() {
            return Err(ctx("duplicate series".into()));
        }
    }
    // Histograms: cumulative buckets ending in +Inf = _count.
    for (family, _) in e.types.iter().filter(|(_, t)| *t == "histogram") {
        let bucket = format!("{family}_bucket");
        let mut series: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
        for ((name, labels), v) in &e.samples {
            if *name == bucket {
                let mut l = labels.clone();
                let le = l.remove("le").ok_or(format!("{bucket} without le"))?;
                series.entry(l).or_default().push((parse_value(&le)?, *v));
            }
        }
        for (l, mut b) in series {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            if !b.windows(2).all(|w| w[0].1 <= w[1].1) {
                return Err(format!("{family}{l:?}: buckets not cumulative"));
            }
            let last = b.last().ok_or("no buckets")?;
            let count = e.samples.get(&(format!("{family}_count"), l.clone()));
            if last.0 != f64::INFINITY || Some(&last.1) != count {
                return Err(format!("{family}{l:?}: +Inf bucket does not match _count"));
            }
        }
    }
    Ok(e)
}

#[test]
fn parser_is_strict() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\\n\"} 3\n";
    assert_eq!(parse(good).unwrap().get("a_total", &[("k", "v\"\n")]), Some(3.0));
    for bad in [
        "a_total 1\n",                                              // no TYPE
        "# TYPE a counter\na 1\n",                                  // counter without _total
        "# TYPE a_total counter\na_total{k=\"v} 1\n",               // unterminated
        "# TYPE a_total counter\na_total 1\na_total 2\n",           // duplicate
        "# TYPE g gauge\ng{1k=\"v\"} 1\n",                          // bad label name
        "# TYPE g gauge\ng one\n",                                  // bad value
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n", // inconsistent
        "# random comment\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}

// ---- harness ------------------------------------------------------------------------------------

struct Gw {
    running: gatehouse::Running,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    _certs: tls::Certs,
    backends: Vec<SocketAddr>,
}

/// A gateway with a TLS peer front, an Electrum front with a tiny cost budget, a denied address
/// (127.0.0.9) and the admin API.
async fn start(tag: &str, admin_extra: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::certs();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let echo = echo_backend().await;
    let electrum = backends::stub_backend(&[]).await;
    let toml = format!(
        "{RELAXED}deny = [\"127.0.0.9/32\"]\n\n\
         [cost]\nsoft_limit = 1000\nhard_limit = 10000\nmax_sleep = \"50ms\"\ngroup_private = true\n\n\
         [cost.methods]\n\"blockchain.estimatefee\" = 10000\n\n\
         [admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n{admin_extra}\n\n\
         [[front]]\nname = \"{tag}_tls\"\nkind = \"peer\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tls\"\n\
         upstreams = [\"{echo}\"]\n[front.tls]\ncert = \"{}\"\nkey = \"{}\"\n\n\
         [[front]]\nname = \"{tag}_electrum\"\nkind = \"electrum\"\nlisten = [\"127.0.0.1:0\"]\ntransport = \"tcp\"\n\
         upstreams = [\"{electrum}\"]\n",
        certs.cert.display(),
        certs.key.display()
    );
    let running = gateway::start_in(dir.path(), &toml).await;
    let admin = match running.admin_addr() {
        Some(AdminListen::Tcp(a)) => *a,
        other => panic!("admin API not on TCP: {other:?}"),
    };
    Gw {
        running,
        admin,
        _dir: dir,
        _certs: certs,
        backends: vec![echo, electrum],
    }
}

/// `GET path` on the admin API, with the token or without: (status, content type, body).
async fn get(admin: SocketAddr, path: &str, auth: bool) -> (u16, String, String) {
    let auth = auth.then(|| format!("Bearer {TOKEN}"));
    let (status, head, body) = clients::http_exchange(admin, "GET", path, auth.as_deref(), None).await;
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body)
}

async fn scrape(gw: &Gw) -> Exposition {
    let (status, ctype, body) = get(gw.admin, "/metrics", true).await;
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "content type {ctype}");
    if std::env::var_os("SHOW_METRICS").is_some() {
        eprintln!("{body}");
    }
    let e = parse(&body).unwrap_or_else(|err| panic!("{err}\n{body}"));
    // Every name carries the prefix; no label value is an address (client or backend).
    for (name, labels) in e.samples.keys() {
        assert!(name.starts_with("gatehouse_"), "{name}");
        for (k, v) in labels {
            let host = v.rsplit_once(':').map_or(v.as_str(), |(h, _)| h);
            assert!(
                v.parse::<IpAddr>().is_err() && host.trim_matches(['[', ']']).parse::<IpAddr>().is_err(),
                "{name}: label {k}={v:?} is an address"
            );
            assert!(
                !gw.backends.iter().any(|b| v.contains(&b.to_string())),
                "{name}: {k}={v:?}"
            );
        }
    }
    e
}

/// Electrum over plain TCP, one line per request.
struct Electrum {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
}

impl Electrum {
    async fn open(from: &str, to: SocketAddr) -> Electrum {
        let (r, w) = net::connect_from(from, to).await.unwrap().into_split();
        Electrum {
            r: BufReader::new(r),
            w,
            id: 0,
        }
    }

    async fn call(&mut self, method: &str, params: &str) -> Option<serde_json::Value> {
        self.id += 1;
        let line = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"{method}\",\"params\":{params}}}\n",
            self.id
        );
        self.w.write_all(line.as_bytes()).await.ok()?;
        let mut reply = String::new();
        match tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut reply)).await {
            Ok(Ok(n)) if n > 0 => Some(serde_json::from_str(&reply).unwrap()),
            Ok(_) => None,
            Err(_) => panic!("no reply to {method} within 10s"),
        }
    }
}

// ---- tests --------------------------------------------------------------------------------------

#[tokio::test]
async fn counters_move_with_traffic() {
    let gw = start("mx", "").await;
    let tls_front = gw.running.addr("mx_tls");
    let el_front = gw.running.addr("mx_electrum");
    let before = scrape(&gw).await;
    assert_eq!(
        before.get("gatehouse_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    for (name, ty) in [
        ("gatehouse_connections_open", "gauge"),
        ("gatehouse_connections_accepted_total", "counter"),
        ("gatehouse_connections_refused_total", "counter"),
        ("gatehouse_tls_handshakes_total", "counter"),
        ("gatehouse_tls_handshake_duration_seconds", "histogram"),
        ("gatehouse_electrum_requests_total", "counter"),
        ("gatehouse_api_requests_total", "counter"),
        ("gatehouse_electrum_cost_units_total", "counter"),
        ("gatehouse_electrum_throttled_requests_total", "counter"),
        ("gatehouse_electrum_hard_limit_disconnects_total", "counter"),
        ("gatehouse_bans_active", "gauge"),
        ("gatehouse_bans_added_total", "counter"),
        ("gatehouse_bans_lifted_total", "counter"),
        ("gatehouse_bans_expired_total", "counter"),
        ("gatehouse_bans_rejected_total", "counter"),
        ("gatehouse_upstream_up", "gauge"),
        ("gatehouse_upstream_connect_duration_seconds", "histogram"),
        ("gatehouse_reloads_total", "counter"),
        ("gatehouse_electrum_slow_line_disconnects_total", "counter"),
        ("gatehouse_memory_budget_bytes", "gauge"),
        ("gatehouse_memory_buffered_bytes", "gauge"),
        ("gatehouse_memory_budget_cuts_total", "counter"),
    ] {
        assert_eq!(before.types.get(name).map(String::as_str), Some(ty), "{name}");
    }
    // Every refusal reason is present from the start, so rate() works from the first scrape.
    assert_eq!(
        before.get("gatehouse_connections_refused_total", &[("reason", "denied")]),
        Some(0.0)
    );
    assert_eq!(
        before.get("gatehouse_upstream_up", &[("front", "mx_electrum"), ("upstream", "0")]),
        Some(1.0)
    );
    // Handshake series exist for TLS fronts only.
    assert!(before
        .get(
            "gatehouse_tls_handshakes_total",
            &[("front", "mx_electrum"), ("result", "ok")]
        )
        .is_none());

    // A denied address is refused.
    assert!(net::is_refused("127.0.0.9", el_front).await);

    // A completed TLS handshake, relayed to the echo backend.
    let tcp = net::connect_from("127.0.0.1", tls_front).await.unwrap();
    let mut tls = tls::tls_connector([&gw._certs.der], &[&rustls::version::TLS13])
        .connect(tls::server_name(), tcp)
        .await
        .unwrap();
    tls.write_all(b"ping\n").await.unwrap();
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).await.unwrap();
    let open_now = scrape(&gw).await;
    assert!(open_now.val("gatehouse_connections_open", &[("front", "mx_tls")]) >= 1.0);
    drop(tls);

    // Electrum: version and ping are served; an unknown method is refused; then a request that costs the
    // whole budget, and the next one hits the hard limit: -101, close, ban.
    let mut c = Electrum::open("127.0.0.3", el_front).await;
    assert!(c
        .call("server.version", "[\"t\", \"1.4\"]")
        .await
        .unwrap()
        .get("result")
        .is_some());
    assert!(c.call("server.ping", "[]").await.unwrap().get("result").is_some());
    assert!(c.call("no.such.method", "[]").await.unwrap().get("error").is_some());
    assert!(c
        .call("blockchain.estimatefee", "[6]")
        .await
        .unwrap()
        .get("result")
        .is_some());
    let r = c.call("server.ping", "[]").await.unwrap();
    assert_eq!(r["error"]["code"], -101, "{r}");
    assert!(
        c.call("server.ping", "[]").await.is_none(),
        "session not closed after -101"
    );

    let after = scrape(&gw).await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.val(name, labels) - before.val(name, labels);
    assert_eq!(
        delta("gatehouse_connections_refused_total", &[("reason", "denied")]),
        1.0
    );
    assert_eq!(
        delta("gatehouse_connections_accepted_total", &[("front", "mx_tls")]),
        1.0
    );
    assert_eq!(
        delta("gatehouse_connections_accepted_total", &[("front", "mx_electrum")]),
        1.0
    );
    assert_eq!(
        delta(
            "gatehouse_tls_handshakes_total",
            &[("front", "mx_tls"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        delta("gatehouse_tls_handshake_duration_seconds_count", &[("front", "mx_tls")]),
        1.0
    );
    let req = |class: &str, result: &str| {
        delta(
            "gatehouse_electrum_requests_total",
            &[("method_class", class), ("result", result)],
        )
    };
    assert!(req("server", "ok") >= 2.0, "server ok +{}", req("server", "ok"));
    assert!(req("other", "refused") >= 1.0, "unknown method not counted as refused");
    assert!(req("other", "ok") >= 1.0, "estimatefee not counted");
    assert!(
        req("server", "refused") >= 1.0,
        "hard-limited ping not counted as refused"
    );
    assert!(delta("gatehouse_electrum_cost_units_total", &[]) >= 10_000.0);
    assert!(delta("gatehouse_electrum_hard_limit_disconnects_total", &[]) >= 1.0);
    // The expensive request slept in its slot (its cost put the session past the soft limit).
    assert!(delta("gatehouse_electrum_throttled_requests_total", &[]) >= 1.0);
    assert_eq!(delta("gatehouse_bans_added_total", &[("source", "session")]), 1.0);
    assert_eq!(after.val("gatehouse_bans_active", &[]), 1.0);
    assert!(
        delta(
            "gatehouse_upstream_connect_duration_seconds_count",
            &[("front", "mx_electrum"), ("upstream", "0")]
        ) >= 1.0
    );
    // The banned address is now refused as banned.
    assert!(net::is_refused("127.0.0.3", el_front).await);
    let last = scrape(&gw).await;
    assert_eq!(
        last.val("gatehouse_connections_refused_total", &[("reason", "banned")])
            - before.val("gatehouse_connections_refused_total", &[("reason", "banned")]),
        1.0
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn failed_handshake_is_counted() {
    let gw = start("mf", "").await;
    let before = scrape(&gw).await;
    // Not TLS at all: the handshake fails.
    let mut s = net::connect_from("127.0.0.1", gw.running.addr("mf_tls")).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    net::closed_within(&mut s, Duration::from_secs(5)).await;
    let after = scrape(&gw).await;
    let labels = [("front", "mf_tls"), ("result", "error")];
    assert_eq!(
        after.val("gatehouse_tls_handshakes_total", &labels) - before.val("gatehouse_tls_handshakes_total", &labels),
        1.0
    );
    gw.running.shutdown().await;
}

#[tokio::test]
async fn token_required_unless_public() {
    let gw = start("mt", "").await;
    let (status, _, _) = get(gw.admin, "/metrics", false).await;
    assert_eq!(status, 401);
    let (status, _, _) = get(gw.admin, "/metrics", true).await;
    assert_eq!(status, 200);
    gw.running.shutdown().await;

    let gw = start("mp", "metrics_public = true").await;
    let (status, _, body) = get(gw.admin, "/metrics", false).await;
    assert_eq!(status, 200);
    parse(&body).unwrap();
    // Only the metrics are public.
    let (status, _, _) = get(gw.admin, "/v1/bans", false).await;
    assert_eq!(status, 401);
    gw.running.shutdown().await;
}

#[tokio::test]
async fn dead_upstream_is_reported_down() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let refusing = net::refusing_addr();
    let dead = refusing.addr;
    let toml = format!(
        "{RELAXED}[admin]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n\n{}",
        gateway::tcp_front("md_relay", dead, "[front.upstream]\nretry_backoff = \"1h\"")
    );
    let running = gateway::start_in(dir.path(), &toml).await;
    let Some(AdminListen::Tcp(admin)) = running.admin_addr().cloned() else {
        panic!("no admin API")
    };
    let gw = Gw {
        running,
        admin,
        _dir: dir,
        _certs: tls::certs(),
        backends: vec![dead],
    };
    let up = [("front", "md_relay"), ("upstream", "0")];
    assert_eq!(scrape(&gw).await.get("gatehouse_upstream_up", &up), Some(1.0));
    let mut s = net::connect_from("127.0.0.1", gw.running.addr("md_relay"))
        .await
        .unwrap();
    let _ = s.write_all(b"hello\n").await;
    net::closed_within(&mut s, Duration::from_secs(5)).await;
    assert_eq!(scrape(&gw).await.get("gatehouse_upstream_up", &up), Some(0.0));
    gw.running.shutdown().await;
}

// ---- the dashboard and alert rules shipped in conf/ -----------------------------------------------

/// Every `gatehouse_…` metric name a shipped file mentions.
fn metric_names_in(path: &str) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("gatehouse_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// A gateway that exports every family, the cluster's included.
async fn start_clustered() -> (Gw, tempfile::TempDir) {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = gateway::node_keys(keys_dir.path(), 2);
    let cluster = format!(
        "\n[cluster]\nnode_key = \"{}\"\nlisten = \"{}\"\n{}",
        keys_dir.path().join("node0.key").display(),
        net::free_addr(),
        gateway::cluster_peers(0, &[net::free_addr(), net::free_addr()], &keys)
    );
    (start("dash", &cluster).await, keys_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_dashboard_and_alerts_query_only_exported_metrics() {
    let (gw, _keys) = start_clustered().await;
    let e = scrape(&gw).await;
    for file in [
        "conf/grafana/gatehouse-dashboard.json",
        "conf/prometheus/gatehouse-alerts.yml",
    ] {
        let names = metric_names_in(file);
        assert!(names.len() >= 10, "{file} names only {names:?}");
        let unknown: Vec<&String> = names.iter().filter(|n| family_of(n, &e.types).is_none()).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics the binary does not export: {unknown:?}"
        );
    }
    // The dashboard is valid JSON whose panels each query something.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/grafana/gatehouse-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    let graphs: Vec<&serde_json::Value> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(graphs.len() >= 20);
    for p in graphs {
        let targets = p["targets"].as_array().unwrap();
        assert!(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|x| x.contains("gatehouse_"))),
            "panel {} queries nothing of ours",
            p["title"]
        );
    }
}

#[test]
fn shipped_alert_rules_pass_promtool() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prometheus/gatehouse-alerts.yml");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool is missing: run tests/run (the README's test command), which installs it, or apt-get install prometheus");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool rejects the rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}
